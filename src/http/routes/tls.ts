/**
 * Public TLS routes (operational, DESIGN.md §8):
 *
 * - `GET/POST /api/v1/tls/certificates` → `{certificates}` / 201 `{certificate}`;
 * - `GET/PATCH/DELETE /api/v1/tls/certificates/:id` → `{certificate}` / 204;
 * - `POST /api/v1/tls/certificates/:id/renew` → `{certificate}`;
 * - `GET/POST /api/v1/tls/acme/accounts`, `DELETE /api/v1/tls/acme/accounts/:id`;
 * - `GET/POST /api/v1/tls/dns-providers`, `DELETE /api/v1/tls/dns-providers/:id`.
 *
 * Private keys, EAB keys and provider tokens are accepted, never returned.
 * Errors come from CertificateService and AcmeAccountService.
 */
import type { FastifyPluginAsync } from 'fastify';
import { Type } from 'typebox';
import type { AcmeAccountService } from '../../domain/acme-account-service.js';
import type { CertificateService } from '../../domain/certificate-service.js';
import { errorResponses, IdParams, NoContent, Nullable } from '../schemas/common.js';

const Status = Type.Union(['pending', 'issuing', 'ready', 'renewing', 'error'].map((s) => Type.Literal(s)));
const Source = Type.Union(['upload', 'file', 'self-signed', 'acme'].map((s) => Type.Literal(s)));
const Challenge = Type.Union(['http-01', 'tls-alpn-01', 'dns-01'].map((s) => Type.Literal(s)));

const CertificateSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  hosts: Type.Array(Type.String()),
  source: Source,
  status: Status,
  fingerprintSha256: Nullable(Type.String()),
  subject: Nullable(Type.String()),
  issuer: Nullable(Type.String()),
  notBefore: Nullable(Type.String()),
  notAfter: Nullable(Type.String()),
  lastError: Nullable(Type.String()),
  nextRenewalAt: Nullable(Type.String({ description: 'next renewal, or the next attempt after an error' })),
  certificateFile: Nullable(Type.String()),
  privateKeyFile: Nullable(Type.String()),
  validDays: Nullable(Type.Integer()),
  acmeAccountId: Nullable(Type.String()),
  challenge: Nullable(Challenge),
  dnsProviderId: Nullable(Type.String()),
  usedBy: Type.Array(Type.Object({ type: Type.Literal('listener'), id: Type.String(), name: Type.String() })),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

/** What a client sends; the service checks each field against the source (unknown fields refused). */
const CertificateInput = Type.Object({
  name: Type.Optional(Type.String({ maxLength: 128 })),
  hosts: Type.Optional(Type.Array(Type.Unknown(), { maxItems: 1000 })),
  source: Type.Optional(Source),
  certificatePem: Type.Optional(Type.String({ maxLength: 256 * 1024 })),
  privateKeyPem: Type.Optional(Type.String({ maxLength: 64 * 1024 })),
  certificateFile: Type.Optional(Type.String({ maxLength: 4096 })),
  privateKeyFile: Type.Optional(Type.String({ maxLength: 4096 })),
  validDays: Type.Optional(Nullable(Type.Integer())),
  acmeAccountId: Type.Optional(Type.String()),
  challenge: Type.Optional(Challenge),
  dnsProviderId: Type.Optional(Nullable(Type.String())),
});

const AccountSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  directoryUrl: Type.String(),
  email: Nullable(Type.String()),
  hasDirectoryCa: Type.Boolean(),
  eabKid: Nullable(Type.String()),
  accountUrl: Nullable(Type.String()),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const AccountInput = Type.Object({
  name: Type.String({ maxLength: 128 }),
  directoryUrl: Type.String({
    maxLength: 2048,
    description: 'an https:// ACME directory URL, or `letsencrypt` / `letsencrypt-staging`',
  }),
  email: Type.Optional(Nullable(Type.String({ maxLength: 254 }))),
  directoryCaPem: Type.Optional(Nullable(Type.String({ maxLength: 64 * 1024 }))),
  eab: Type.Optional(
    Nullable(Type.Object({ kid: Type.String({ maxLength: 512 }), hmacKey: Type.String({ maxLength: 512 }) })),
  ),
});

const ProviderSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  type: Type.Literal('cloudflare'),
  apiBaseUrl: Nullable(Type.String()),
  hasApiToken: Type.Boolean(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

const ProviderInput = Type.Object({
  name: Type.String({ maxLength: 128 }),
  type: Type.Literal('cloudflare'),
  apiToken: Type.String({ maxLength: 1024 }),
  apiBaseUrl: Type.Optional(Nullable(Type.String({ maxLength: 2048 }))),
});

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
