/** Schemas of the environment registry routes (README "Environments"). */
import { Type } from 'typebox';
import { errorResponses, IdParams, NoContent, Nullable, Patch, Timestamp } from './common.js';

/** The id of the virtual environment that stands for the instance answering (`local`). */
export const LocalEnvironmentId = Type.Literal('local');

export const TrustState = Type.Enum(['UNTRUSTED', 'TRUSTED', 'CHANGED', 'EXPIRED']);

/** A certificate as the API describes it; the fingerprint is `AB:CD:…` (SHA-256 of the DER leaf). */
export const Certificate = Type.Object({
  fingerprintSha256: Type.String(),
  subject: Type.String(),
  issuer: Type.String(),
  subjectAltNames: Type.Array(Type.String()),
  validFrom: Type.String(),
  validTo: Type.String(),
  serialNumber: Type.String(),
});

const ErrorSummary = Type.Object({ code: Type.String(), message: Type.String() });

export const LastTest = Type.Object({
  ok: Type.Boolean(),
  at: Timestamp,
  latencyMs: Nullable(Type.Number()),
  error: Nullable(ErrorSummary),
});

const registered = {
  url: Type.String(),
  transport: Type.Enum(['direct', 'agent']),
  agentId: Nullable(Type.String()),
  enabled: Type.Boolean(),
  timeoutMs: Type.Integer(),
  trustState: TrustState,
  certificate: Nullable(Certificate),
  discoveredCertificate: Nullable(Certificate),
  hasAccessToken: Type.Boolean(),
  lastTest: Nullable(LastTest),
  lastError: Nullable(Type.Object({ code: Type.String(), message: Type.String(), at: Timestamp })),
  createdAt: Timestamp,
  updatedAt: Timestamp,
};

/** A registered environment: never its access token. */
export const Environment = Type.Object({ id: Type.String(), name: Type.String(), ...registered });

/** An entry of the environment list: a registered environment, or the virtual Local one (`virtual: true`). */
export const EnvironmentEntry = Type.Object({
  id: Type.String(),
  name: Type.String(),
  virtual: Type.Optional(Type.Boolean()),
  ...Type.Partial(Type.Object(registered)).properties,
});

/** Create and update bodies; the service checks each field (the rules in README "Environments"). */
const EnvironmentInput = {
  name: Type.String({ description: '1–128 characters, unique.' }),
  url: Type.String({ description: 'Absolute https:// URL, no query, fragment or userinfo.' }),
  transport: Type.Enum(['direct', 'agent']),
  agentId: Type.Optional(Nullable(Type.String({ description: 'Required for transport agent.' }))),
  accessToken: Type.String({ description: 'An API token of the target; never returned.' }),
  enabled: Type.Optional(Type.Boolean()),
  timeoutMs: Type.Optional(Type.Integer({ description: '1000–300000, default 10000.' })),
};

export const CreateEnvironmentBody = Type.Object(EnvironmentInput, { additionalProperties: false });
export const UpdateEnvironmentBody = Patch(EnvironmentInput);

const EnvironmentReply = Type.Object({ environment: Environment });

export const DiscoverReply = Type.Object({
  certificate: Certificate,
  trustState: TrustState,
  expired: Type.Boolean({ description: 'Outside its validity period now (trust would refuse it).' }),
  hostnameMatches: Type.Boolean({
    description: "Valid for the URL's hostname (trust refuses it otherwise).",
  }),
});

export const TestReply = Type.Object({
  ok: Type.Boolean(),
  latencyMs: Type.Number(),
  remote: Type.Object({ version: Type.String(), instanceId: Type.String() }),
  replicaId: Type.Optional(
    Type.Union([Type.String(), Type.Null()], {
      description: 'Agent transport with several control-plane replicas: the replica that held the agent.',
    }),
  ),
  timing: Type.Object(
    {
      cp: Type.Number({ description: 'In the control plane itself.' }),
      hub: Nullable(Type.Number({ description: 'On the agent link; null for the direct transport.' })),
      dns: Nullable(
        Type.Number({
          description: 'Name resolution of the target (0 when a pooled connection was reused).',
        }),
      ),
      connect: Nullable(Type.Number({ description: 'TCP connect to the target (0 when reused).' })),
      tls: Nullable(Type.Number({ description: 'TLS handshake with the target (0 when reused).' })),
      ttfb: Nullable(Type.Number({ description: 'Request written to the target → its response head.' })),
      total: Type.Number({ description: 'Up to the response head.' }),
    },
    {
      description:
        'Milliseconds per phase, as in relayed responses’ Server-Timing (docs/protocol.md, Timing); null for a step an older agent did not report.',
    },
  ),
});

export const listEnvironmentsSchema = {
  summary: 'List environments, the virtual Local one first',
  response: { 200: Type.Object({ environments: Type.Array(EnvironmentEntry) }), ...errorResponses },
};
export const createEnvironmentSchema = {
  summary: 'Register an environment',
  body: CreateEnvironmentBody,
  response: { 201: EnvironmentReply, ...errorResponses },
};
export const getEnvironmentSchema = {
  summary: 'One environment (`local`: the virtual one)',
  params: IdParams,
  response: { 200: Type.Object({ environment: EnvironmentEntry }), ...errorResponses },
};
export const updateEnvironmentSchema = {
  summary: 'Change an environment (an omitted accessToken keeps the stored one)',
  params: IdParams,
  body: UpdateEnvironmentBody,
  response: { 200: EnvironmentReply, ...errorResponses },
};
export const deleteEnvironmentSchema = {
  summary: 'Delete an environment',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
export const discoverEnvironmentSchema = {
  summary: "Fetch the target's certificate (TLS handshake only, no request sent)",
  params: IdParams,
  response: { 200: DiscoverReply, ...errorResponses },
};
export const trustEnvironmentSchema = {
  summary: 'Trust the last discovered certificate',
  params: IdParams,
  body: Type.Object(
    {
      fingerprintSha256: Type.String({
        description: 'Must equal the last discovered one (any case, colons optional).',
      }),
    },
    { additionalProperties: false },
  ),
  response: { 200: EnvironmentReply, ...errorResponses },
};
export const testEnvironmentSchema = {
  summary: "Call the target's system info through the pinned transport",
  params: IdParams,
  response: { 200: TestReply, ...errorResponses },
};
