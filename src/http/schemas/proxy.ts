/** Schemas of the public proxy configuration routes (README "Public proxy and live traffic", "Serving a site over HTTPS with ACME"). */
import { Type } from 'typebox';
import { errorResponses, IdParams, NoContent, Nullable, Timestamp } from './common.js';

/** A listener as the API shows it, with whether it is bound right now. */
export const Listener = Type.Object({
  id: Type.String(),
  name: Type.String(),
  bindAddress: Type.String(),
  port: Type.Integer(),
  enabled: Type.Boolean(),
  errorTemplateId: Nullable(Type.String()),
  protocol: Type.Enum(['http', 'https']),
  defaultCertificateId: Nullable(Type.String()),
  redirectHttps: Type.Boolean(),
  hsts: Type.Boolean(),
  trustedProxies: Type.Array(Type.String(), {
    description: 'CIDR ranges of proxies whose Forwarded / X-Forwarded-* / X-Real-IP are kept.',
  }),
  running: Type.Boolean({ description: 'Bound right now.' }),
  error: Nullable(Type.String({ description: 'Why an enabled listener is not running (port in use…).' })),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});

export const RouteTarget = Type.Union([
  Type.Object({
    type: Type.Literal('upstream'),
    url: Type.String(),
    timeoutMs: Type.Optional(Type.Integer()),
  }),
  Type.Object({ type: Type.Literal('redirect'), location: Type.String(), status: Type.Integer() }),
  Type.Object({
    type: Type.Literal('static'),
    status: Type.Integer(),
    contentType: Type.String(),
    body: Type.String(),
    templateId: Type.Optional(Nullable(Type.String())),
  }),
  Type.Object({ type: Type.Literal('backend'), backendId: Type.String() }),
]);

/** A route as the API shows it. */
export const ProxyRoute = Type.Object({
  id: Type.String(),
  listenerId: Type.String(),
  host: Nullable(Type.String()),
  pathPrefix: Type.String(),
  priority: Type.Integer(),
  target: RouteTarget,
  errorTemplateId: Nullable(Type.String()),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});

// A client may send back what a GET answered: these are ignored.
const readOnly = {
  id: Type.Optional(Type.Unknown()),
  running: Type.Optional(Type.Unknown()),
  error: Type.Optional(Type.Unknown()),
  createdAt: Type.Optional(Type.Unknown()),
  updatedAt: Type.Optional(Type.Unknown()),
};

const listenerFields = {
  name: Type.Optional(Type.String({ description: '1–128 characters, unique. Required on create.' })),
  bindAddress: Type.Optional(Type.String({ description: 'An IP address of this host; default 0.0.0.0.' })),
  port: Type.Optional(Type.Integer({ description: '1–65535. Required on create.' })),
  enabled: Type.Optional(Type.Boolean()),
  errorTemplateId: Type.Optional(Nullable(Type.String())),
  protocol: Type.Optional(Type.Enum(['http', 'https'])),
  defaultCertificateId: Type.Optional(Nullable(Type.String())),
  redirectHttps: Type.Optional(Type.Boolean()),
  hsts: Type.Optional(Type.Boolean()),
  trustedProxies: Type.Optional(
    Type.Array(Type.String(), {
      maxItems: 64,
      description:
        'Addresses or CIDR ranges (`10.0.0.0/8`, `fd00::/8`) of proxies in front of this listener; ' +
        'their Forwarded, X-Forwarded-* and X-Real-IP are kept, anyone else’s dropped. Default none.',
    }),
  ),
  ...readOnly,
};

const targetInput = Type.Object(
  { type: Type.String({ description: '`upstream`, `redirect` or `static`' }) },
  {
    description:
      '`{type: "upstream", url, timeoutMs?}`, `{type: "redirect", location, status?}` or ' +
      '`{type: "static", status?, contentType?, body?, templateId?}`; replaced as a whole.',
  },
);

const routeFields = {
  listenerId: Type.Optional(Type.String({ description: 'Required on create.' })),
  host: Type.Optional(Nullable(Type.String({ description: 'Exact host or `*.suffix`; null = any.' }))),
  pathPrefix: Type.Optional(Type.String({ description: 'Default `/`.' })),
  priority: Type.Optional(Type.Integer()),
  target: Type.Optional(targetInput),
  errorTemplateId: Type.Optional(Nullable(Type.String())),
  ...readOnly,
};

const ListenerBody = Type.Object(listenerFields, { additionalProperties: false });
const RouteBody = Type.Object(routeFields, { additionalProperties: false });
const ListenerReply = Type.Object({ listener: Listener });
const RouteReply = Type.Object({ route: ProxyRoute });

export const listListenersSchema = {
  summary: 'List public listeners',
  response: { 200: Type.Object({ listeners: Type.Array(Listener) }), ...errorResponses },
};
export const createListenerSchema = {
  summary: 'Create a listener (bound before the answer when enabled)',
  body: ListenerBody,
  response: { 201: ListenerReply, ...errorResponses },
};
export const getListenerSchema = {
  summary: 'One listener',
  params: IdParams,
  response: { 200: ListenerReply, ...errorResponses },
};
export const updateListenerSchema = {
  summary: 'Change a listener (moved, restarted or stopped at once)',
  params: IdParams,
  body: ListenerBody,
  response: { 200: ListenerReply, ...errorResponses },
};
export const deleteListenerSchema = {
  summary: 'Delete a listener and its routes',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
export const listRoutesSchema = {
  summary: 'List proxy routes',
  response: { 200: Type.Object({ routes: Type.Array(ProxyRoute) }), ...errorResponses },
};
export const createRouteSchema = {
  summary: 'Create a route (serves the next request)',
  body: RouteBody,
  response: { 201: RouteReply, ...errorResponses },
};
export const getRouteSchema = {
  summary: 'One route',
  params: IdParams,
  response: { 200: RouteReply, ...errorResponses },
};
export const updateRouteSchema = {
  summary: 'Change a route',
  params: IdParams,
  body: RouteBody,
  response: { 200: RouteReply, ...errorResponses },
};
export const deleteRouteSchema = {
  summary: 'Delete a route',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};

// --- backends (docs/pipeline.md "Backend targets") ----------------------------------

export const BackendMember = Type.Union([
  Type.Object({
    id: Type.String(),
    type: Type.Literal('upstream'),
    url: Type.String(),
    weight: Type.Integer(),
    draining: Type.Boolean({ description: 'Takes no new requests; those in flight finish.' }),
  }),
  Type.Object({
    id: Type.String(),
    type: Type.Literal('agent'),
    agentId: Nullable(Type.String()),
    agentLabels: Nullable(Type.Record(Type.String(), Type.String())),
    upstreamUrl: Type.String(),
    weight: Type.Integer(),
    draining: Type.Boolean({ description: 'Takes no new requests; those in flight finish.' }),
  }),
]);

export const BackendHealthCheck = Type.Object({
  path: Type.String(),
  intervalSeconds: Type.Integer(),
  timeoutMs: Type.Integer(),
  healthyThreshold: Type.Integer(),
  unhealthyThreshold: Type.Integer(),
  expectStatus: Type.Integer(),
});

/** A backend as the API shows it. */
export const Backend = Type.Object({
  id: Type.String(),
  name: Type.String(),
  algorithm: Type.Enum(['round_robin', 'weighted_round_robin', 'least_active', 'consistent_hash']),
  hashKey: Type.String({ description: '`ip`, `path` or `header:NAME` (consistent_hash).' }),
  members: Type.Array(BackendMember),
  healthCheck: Nullable(BackendHealthCheck),
  passive: Type.Object({ failures: Type.Integer(), ejectSeconds: Type.Integer() }),
  createdAt: Timestamp,
  updatedAt: Timestamp,
});

export const BackendHealth = Type.Object({
  members: Type.Array(
    Type.Object({
      id: Type.String(),
      state: Type.Enum(['healthy', 'unhealthy', 'draining', 'unknown']),
      lastCheckAt: Nullable(Timestamp),
      lastError: Nullable(Type.String()),
      activeRequests: Type.Integer(),
    }),
  ),
});

const BackendBody = Type.Object(
  {
    name: Type.Optional(Type.String({ description: '1–128 characters, unique. Required on create.' })),
    algorithm: Type.Optional(Type.String({ description: 'Default `round_robin`.' })),
    hashKey: Type.Optional(Type.String({ description: 'Default `ip`.' })),
    members: Type.Optional(
      Type.Array(Type.Object({ type: Type.String() }), {
        description:
          '`{type: "upstream", url, weight?, draining?}` or ' +
          '`{type: "agent", agentId?, agentLabels?, upstreamUrl, weight?, draining?}`; ' +
          'replaced as a whole (send `id` back to keep a member’s health and requests in flight). ' +
          '`draining: true` stops new requests to a member while those in flight finish.',
      }),
    ),
    healthCheck: Type.Optional(Nullable(Type.Object({}, { description: 'null: no active checks.' }))),
    passive: Type.Optional(Type.Object({}, { description: '`{failures, ejectSeconds}`; default 3, 30.' })),
    ...readOnly,
  },
  { additionalProperties: false },
);
const BackendReply = Type.Object({ backend: Backend });

export const listBackendsSchema = {
  summary: 'List backends',
  response: { 200: Type.Object({ backends: Type.Array(Backend) }), ...errorResponses },
};
export const createBackendSchema = {
  summary: 'Create a backend',
  body: BackendBody,
  response: { 201: BackendReply, ...errorResponses },
};
export const getBackendSchema = {
  summary: 'One backend',
  params: IdParams,
  response: { 200: BackendReply, ...errorResponses },
};
export const updateBackendSchema = {
  summary: 'Change a backend',
  params: IdParams,
  body: BackendBody,
  response: { 200: BackendReply, ...errorResponses },
};
export const deleteBackendSchema = {
  summary: 'Delete a backend no route targets (409 CONFLICT otherwise)',
  params: IdParams,
  response: { 204: NoContent, ...errorResponses },
};
export const backendHealthSchema = {
  summary: 'Health of a backend’s members',
  params: IdParams,
  response: { 200: BackendHealth, ...errorResponses },
};
