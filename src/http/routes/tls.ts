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
import type { FastifyPluginAsync } from 'fastify';
import { Type } from 'typebox';
import type { AcmeAccountService } from '../../domain/acme-account-service.js';
import type { CertificateService } from '../../domain/certificate-service.js';
import { errorResponses, IdParams, NoContent } from '../schemas/common.js';
import {
  AccountInput,
  AccountPatch,
  AccountSchema,
  CertificateInput,
  CertificateSchema,
  ProviderInput,
  ProviderPatch,
  ProviderSchema,
} from '../schemas/tls.js';

const One = Type.Object({ certificate: CertificateSchema });

export function createTlsPlugin(deps: {
  certificates: CertificateService;
  accounts: AcmeAccountService;
}): FastifyPluginAsync {
  const { certificates, accounts } = deps;
  return async (app) => {
    app.get(
      '/api/v1/tls/certificates',
      {
        schema: {
          response: { 200: Type.Object({ certificates: Type.Array(CertificateSchema) }), ...errorResponses },
        },
      },
      async () => ({ certificates: certificates.list() }),
    );
    app.post(
      '/api/v1/tls/certificates',
      { schema: { body: CertificateInput, response: { 201: One, ...errorResponses } } },
      async (request, reply) =>
        reply.code(201).send({ certificate: await certificates.create(request.body) }),
    );
    app.get<{ Params: { id: string } }>(
      '/api/v1/tls/certificates/:id',
      { schema: { params: IdParams, response: { 200: One, ...errorResponses } } },
      async (request) => ({ certificate: certificates.get(request.params.id) }),
    );
    app.patch<{ Params: { id: string } }>(
      '/api/v1/tls/certificates/:id',
      { schema: { params: IdParams, body: CertificateInput, response: { 200: One, ...errorResponses } } },
      async (request) => ({ certificate: await certificates.update(request.params.id, request.body) }),
    );
    app.delete<{ Params: { id: string } }>(
      '/api/v1/tls/certificates/:id',
      { schema: { params: IdParams, response: { 204: NoContent, ...errorResponses } } },
      async (request, reply) => {
        await certificates.remove(request.params.id);
        return reply.code(204).send();
      },
    );
    app.post<{ Params: { id: string } }>(
      '/api/v1/tls/certificates/:id/renew',
      { schema: { params: IdParams, response: { 200: One, ...errorResponses } } },
      async (request) => ({ certificate: await certificates.renew(request.params.id) }),
    );

    app.get(
      '/api/v1/tls/acme/accounts',
      {
        schema: {
          response: { 200: Type.Object({ accounts: Type.Array(AccountSchema) }), ...errorResponses },
        },
      },
      async () => ({ accounts: accounts.listAccounts() }),
    );
    app.post(
      '/api/v1/tls/acme/accounts',
      {
        schema: {
          body: AccountInput,
          response: { 201: Type.Object({ account: AccountSchema }), ...errorResponses },
        },
      },
      async (request, reply) => reply.code(201).send({ account: await accounts.createAccount(request.body) }),
    );
    app.patch<{ Params: { id: string } }>(
      '/api/v1/tls/acme/accounts/:id',
      {
        schema: {
          params: IdParams,
          body: AccountPatch,
          response: { 200: Type.Object({ account: AccountSchema }), ...errorResponses },
        },
      },
      async (request) => ({ account: await accounts.updateAccount(request.params.id, request.body) }),
    );
    app.delete<{ Params: { id: string } }>(
      '/api/v1/tls/acme/accounts/:id',
      { schema: { params: IdParams, response: { 204: NoContent, ...errorResponses } } },
      async (request, reply) => {
        await accounts.removeAccount(request.params.id);
        return reply.code(204).send();
      },
    );

    app.get(
      '/api/v1/tls/dns-providers',
      {
        schema: {
          response: { 200: Type.Object({ providers: Type.Array(ProviderSchema) }), ...errorResponses },
        },
      },
      async () => ({ providers: accounts.listProviders() }),
    );
    app.post(
      '/api/v1/tls/dns-providers',
      {
        schema: {
          body: ProviderInput,
          response: { 201: Type.Object({ provider: ProviderSchema }), ...errorResponses },
        },
      },
      async (request, reply) =>
        reply.code(201).send({ provider: await accounts.createProvider(request.body) }),
    );
    app.patch<{ Params: { id: string } }>(
      '/api/v1/tls/dns-providers/:id',
      {
        schema: {
          params: IdParams,
          body: ProviderPatch,
          response: { 200: Type.Object({ provider: ProviderSchema }), ...errorResponses },
        },
      },
      async (request) => ({ provider: await accounts.updateProvider(request.params.id, request.body) }),
    );
    app.delete<{ Params: { id: string } }>(
      '/api/v1/tls/dns-providers/:id',
      { schema: { params: IdParams, response: { 204: NoContent, ...errorResponses } } },
      async (request, reply) => {
        await accounts.removeProvider(request.params.id);
        return reply.code(204).send();
      },
    );
  };
}
