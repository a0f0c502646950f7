/**
 * Schemas of the public TLS routes (docs/tls.md): certificates, ACME
 * accounts and DNS providers, as the API answers them and as clients send
 * them (the services check the inputs in detail).
 */
import { Type } from 'typebox';
import { errorResponses, IdParams, NoContent, Nullable } from './common.js';

export const CertificateStatus = Type.Enum(['pending', 'issuing', 'ready', 'renewing', 'error']);
export const CertificateSource = Type.Enum(['upload', 'file', 'self-signed', 'acme']);
export const AcmeChallenge = Type.Enum(['http-01', 'tls-alpn-01', 'dns-01']);

export const CertificateSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  hosts: Type.Array(Type.String()),
  source: CertificateSource,
  status: CertificateStatus,
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
  challenge: Nullable(AcmeChallenge),
  dnsProviderId: Nullable(Type.String()),
  usedBy: Type.Array(Type.Object({ type: Type.Literal('listener'), id: Type.String(), name: Type.String() })),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

/** What a client sends; the service checks each field against the source (unknown fields refused). */
export const CertificateInput = Type.Object({
  name: Type.Optional(Type.String({ maxLength: 128 })),
  hosts: Type.Optional(Type.Array(Type.Unknown(), { maxItems: 1000 })),
  source: Type.Optional(CertificateSource),
  certificatePem: Type.Optional(Type.String({ maxLength: 256 * 1024 })),
  privateKeyPem: Type.Optional(Type.String({ maxLength: 64 * 1024 })),
  certificateFile: Type.Optional(Type.String({ maxLength: 4096 })),
  privateKeyFile: Type.Optional(Type.String({ maxLength: 4096 })),
  validDays: Type.Optional(Nullable(Type.Integer())),
  acmeAccountId: Type.Optional(Type.String()),
  challenge: Type.Optional(AcmeChallenge),
  dnsProviderId: Type.Optional(Nullable(Type.String())),
});

export const AccountSchema = Type.Object({
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

export const AccountInput = Type.Object({
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

/** PATCH: every field optional; `directoryUrl` may only repeat the stored one. */
export const AccountPatch = Type.Object({
  name: Type.Optional(Type.String({ maxLength: 128 })),
  directoryUrl: Type.Optional(Type.String({ maxLength: 2048 })),
  email: Type.Optional(Nullable(Type.String({ maxLength: 254 }))),
  directoryCaPem: Type.Optional(Nullable(Type.String({ maxLength: 64 * 1024 }))),
  eab: Type.Optional(
    Nullable(Type.Object({ kid: Type.String({ maxLength: 512 }), hmacKey: Type.String({ maxLength: 512 }) })),
  ),
});

export const ProviderSchema = Type.Object({
  id: Type.String(),
  name: Type.String(),
  type: Type.Literal('cloudflare'),
  apiBaseUrl: Nullable(Type.String()),
  hasApiToken: Type.Boolean(),
  createdAt: Type.String(),
  updatedAt: Type.String(),
});

export const ProviderInput = Type.Object({
  name: Type.String({ maxLength: 128 }),
  type: Type.Literal('cloudflare'),
  apiToken: Type.String({ maxLength: 1024 }),
  apiBaseUrl: Type.Optional(Nullable(Type.String({ maxLength: 2048 }))),
});

/** PATCH: every field optional; an omitted `apiToken` keeps the stored one (not with a new apiBaseUrl origin). */
export const ProviderPatch = Type.Object({
  name: Type.Optional(Type.String({ maxLength: 128 })),
  type: Type.Optional(Type.Literal('cloudflare')),
  apiToken: Type.Optional(Type.String({ maxLength: 1024 })),
  apiBaseUrl: Type.Optional(Nullable(Type.String({ maxLength: 2048 }))),
});

const CertificateReply = Type.Object({ certificate: CertificateSchema });
const AccountReply = Type.Object({ account: AccountSchema });
const ProviderReply = Type.Object({ provider: ProviderSchema });
const Deleted = { params: IdParams, response: { 204: NoContent, ...errorResponses } };

export const listCertificatesSchema = {
  summary: 'List public TLS certificates',
  response: { 200: Type.Object({ certificates: Type.Array(CertificateSchema) }), ...errorResponses },
};
export const createCertificateSchema = {
  summary: 'Add a certificate (uploaded, from files, self-signed or ACME)',
  body: CertificateInput,
  response: { 201: CertificateReply, ...errorResponses },
};
export const getCertificateSchema = {
  summary: 'One certificate',
  params: IdParams,
  response: { 200: CertificateReply, ...errorResponses },
};
export const updateCertificateSchema = {
  summary: 'Change a certificate',
  params: IdParams,
  body: CertificateInput,
  response: { 200: CertificateReply, ...errorResponses },
};
export const deleteCertificateSchema = { summary: 'Delete a certificate', ...Deleted };
export const renewCertificateSchema = {
  summary: 'Renew a certificate now',
  params: IdParams,
  response: { 200: CertificateReply, ...errorResponses },
};
export const listAccountsSchema = {
  summary: 'List ACME accounts',
  response: { 200: Type.Object({ accounts: Type.Array(AccountSchema) }), ...errorResponses },
};
export const createAccountSchema = {
  summary: 'Add an ACME account',
  body: AccountInput,
  response: { 201: AccountReply, ...errorResponses },
};
export const updateAccountSchema = {
  summary: 'Change an ACME account',
  params: IdParams,
  body: AccountPatch,
  response: { 200: AccountReply, ...errorResponses },
};
export const deleteAccountSchema = { summary: 'Delete an ACME account', ...Deleted };
export const listProvidersSchema = {
  summary: 'List DNS providers (for dns-01)',
  response: { 200: Type.Object({ providers: Type.Array(ProviderSchema) }), ...errorResponses },
};
export const createProviderSchema = {
  summary: 'Add a DNS provider',
  body: ProviderInput,
  response: { 201: ProviderReply, ...errorResponses },
};
export const updateProviderSchema = {
  summary: 'Change a DNS provider',
  params: IdParams,
  body: ProviderPatch,
  response: { 200: ProviderReply, ...errorResponses },
};
export const deleteProviderSchema = { summary: 'Delete a DNS provider', ...Deleted };
