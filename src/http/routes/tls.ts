/**
 * Public TLS routes (operational, docs/tls.md):
 *
 * - `GET/POST /api/v1/tls/certificates` → `{certificates}` / 201 `{certificate}`;
 * - `GET/PATCH/DELETE /api/v1/tls/certificates/:id` → `{certificate}` / 204;
 * - `POST /api/v1/tls/certificates/:id/renew` → `{certificate}`;
 * - `GET/POST /api/v1/tls/acme/accounts`, `PATCH/DELETE /api/v1/tls/acme/accounts/:id`;
 * - `GET/POST /api/v1/tls/dns-providers`, `PATCH/DELETE /api/v1/tls/dns-providers/:id`.
 *
 * Private keys, EAB keys and provider tokens are accepted, never returned.
 * Errors come from CertificateService and AcmeAccountService.
 */
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { AcmeAccountService } from '../../domain/acme-account-service.js';
import type { CertificateService } from '../../domain/certificate-service.js';
import {
  createAccountSchema,
  createCertificateSchema,
  createProviderSchema,
  deleteAccountSchema,
  deleteCertificateSchema,
  deleteProviderSchema,
  getCertificateSchema,
  listAccountsSchema,
  listCertificatesSchema,
  listProvidersSchema,
  renewCertificateSchema,
  updateAccountSchema,
  updateCertificateSchema,
  updateProviderSchema,
} from '../schemas/tls.js';

export function createTlsPlugin(deps: {
  certificates: CertificateService;
  accounts: AcmeAccountService;
}): FastifyPluginAsyncTypebox {
  const { certificates, accounts } = deps;
  return async (app) => {
    app.get('/api/v1/tls/certificates', { schema: listCertificatesSchema }, async () => ({
      certificates: certificates.list(),
    }));
    app.post('/api/v1/tls/certificates', { schema: createCertificateSchema }, async (request, reply) =>
      reply.code(201).send({ certificate: await certificates.create(request.body) }),
    );
    app.get('/api/v1/tls/certificates/:id', { schema: getCertificateSchema }, async (request) => ({
      certificate: certificates.get(request.params.id),
    }));
    app.patch('/api/v1/tls/certificates/:id', { schema: updateCertificateSchema }, async (request) => ({
      certificate: await certificates.update(request.params.id, request.body),
    }));
    app.delete(
      '/api/v1/tls/certificates/:id',
      { schema: deleteCertificateSchema },
      async (request, reply) => {
        await certificates.remove(request.params.id);
        return reply.code(204).send(null);
      },
    );
    app.post('/api/v1/tls/certificates/:id/renew', { schema: renewCertificateSchema }, async (request) => ({
      certificate: await certificates.renew(request.params.id),
    }));

    app.get('/api/v1/tls/acme/accounts', { schema: listAccountsSchema }, async () => ({
      accounts: accounts.listAccounts(),
    }));
    app.post('/api/v1/tls/acme/accounts', { schema: createAccountSchema }, async (request, reply) =>
      reply.code(201).send({ account: await accounts.createAccount(request.body) }),
    );
    app.patch('/api/v1/tls/acme/accounts/:id', { schema: updateAccountSchema }, async (request) => ({
      account: await accounts.updateAccount(request.params.id, request.body),
    }));
    app.delete('/api/v1/tls/acme/accounts/:id', { schema: deleteAccountSchema }, async (request, reply) => {
      await accounts.removeAccount(request.params.id);
      return reply.code(204).send(null);
    });

    app.get('/api/v1/tls/dns-providers', { schema: listProvidersSchema }, async () => ({
      providers: accounts.listProviders(),
    }));
    app.post('/api/v1/tls/dns-providers', { schema: createProviderSchema }, async (request, reply) =>
      reply.code(201).send({ provider: await accounts.createProvider(request.body) }),
    );
    app.patch('/api/v1/tls/dns-providers/:id', { schema: updateProviderSchema }, async (request) => ({
      provider: await accounts.updateProvider(request.params.id, request.body),
    }));
    app.delete('/api/v1/tls/dns-providers/:id', { schema: deleteProviderSchema }, async (request, reply) => {
      await accounts.removeProvider(request.params.id);
      return reply.code(204).send(null);
    });
  };
}
