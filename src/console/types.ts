/**
 * The shapes the console reads from the management API (DESIGN.md §3–§5).
 * Only the fields the console uses are typed; the server may send more.
 */

export interface User {
  id: string;
  username: string;
}

export type TrustState = 'UNTRUSTED' | 'TRUSTED' | 'CHANGED' | 'EXPIRED';

export interface Certificate {
  fingerprintSha256: string;
  subject: string;
  issuer: string;
  subjectAltNames: string[];
  validFrom: string;
  validTo: string;
  serialNumber: string;
}

export interface LastTest {
  ok: boolean;
  at: string;
  latencyMs: number | null;
  error: { code: string; message: string } | null;
}

/** A registered environment, or the virtual Local one (`virtual: true`). */
export interface Environment {
  id: string;
  name: string;
  virtual?: boolean;
  url?: string;
  transport?: 'direct' | 'agent';
  agentId?: string | null;
  enabled?: boolean;
  timeoutMs?: number;
  trustState?: TrustState;
  certificate?: Certificate | null;
  discoveredCertificate?: Certificate | null;
  hasAccessToken?: boolean;
  lastTest?: LastTest | null;
  lastError?: { code: string; message: string; at: string } | null;
  createdAt?: string;
  updatedAt?: string;
}

export interface ApiToken {
  id: string;
  name: string;
  enabled: boolean;
  expiresAt: string | null;
  lastUsedAt: string | null;
  createdAt: string;
}

export interface AgentConnection {
  id: string;
  startedAt: string;
  endedAt: string | null;
  remoteAddress: string | null;
  version: string | null;
  endReason?: string | null;
}

export interface Agent {
  id: string;
  name: string;
  enabled: boolean;
  labels: Record<string, string>;
  status: 'connected' | 'offline';
  connectedAt: string | null;
  lastSeenAt: string | null;
  remoteAddress: string | null;
  version: string | null;
  connections: AgentConnection[];
}

/** What creating or rotating an agent answers: the token is shown once. */
export interface AgentGrant {
  agent: Agent;
  token: string;
  setup?: unknown;
}

export interface Listener {
  id: string;
  name: string;
  bindAddress: string;
  port: number;
  enabled: boolean;
  /** Bound right now. */
  running?: boolean;
  /** Why an enabled listener is not running (port in use…), else null. */
  error?: string | null;
}

export type RouteTarget =
  | { type: 'upstream'; url: string; timeoutMs?: number }
  | { type: 'redirect'; location: string; status: number }
  | { type: 'static'; status: number; contentType: string; body: string };

export interface ProxyRoute {
  id: string;
  listenerId: string;
  host: string | null;
  pathPrefix: string;
  priority: number;
  target: RouteTarget;
}

export interface TraceEvent {
  seq: number;
  id: string;
  time: string;
  method: string;
  host: string | null;
  path: string;
  status: number | null;
  durationMs: number | null;
  bytesIn?: number;
  bytesOut?: number;
  listenerId?: string | null;
  routeId?: string | null;
  target?: string | null;
  clientIp?: string | null;
  error?: string | null;
  /** Decisions of the pipeline's policy stages (WAF, rate limits, cache, shapers), in order. */
  policy?: { stage: string; rule: string; action: string }[];
}

export type TraceLevel = 'basic' | 'detailed' | 'headers';

export interface TrafficSettings {
  enabled: boolean;
  level: TraceLevel;
  subscribers?: number;
  emittedEvents?: number;
  droppedEvents?: number;
}
