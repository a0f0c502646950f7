/** Runs a real nats-server for a test (see scripts/local-services.ts). */
export { natsServerBinary, startNats, type TestNats } from '../../scripts/local-services.js';
