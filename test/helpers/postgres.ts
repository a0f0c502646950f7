/** Runs Debian's real PostgreSQL for a test (see scripts/local-services.ts). */
export {
  LOCAL_PG_PASSWORD as TEST_PG_PASSWORD,
  LOCAL_PG_USER as TEST_PG_USER,
  postgresBinDir,
  startPostgres,
  type TestPostgres,
} from '../../scripts/local-services.js';
