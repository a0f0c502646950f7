/**
 * Public proxy configuration (docs/pipeline.md): listeners and routes, validated,
 * persisted in the store's `proxy` collection and applied live to the data
 * plane through a {@link ProxyRuntime} — a new listener serves as soon as it
 * is created, a disabled or deleted one stops accepting connections at once,
 * a changed route takes effect for the next request.
 *
 * Listeners serve `protocol` `http` (default) or `https` (docs/tls.md:
 * `defaultCertificateId` and `hsts` apply to https, `redirectHttps` to http).
 *
 * Errors: VALIDATION_FAILED (bad field, unknown listener or certificate,
 * address not available), CONFLICT (name taken, port in use or configured twice, duplicate
 * route), NOT_FOUND.
 */
import { isIP } from 'node:net';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { BackendRecord, Database, ListenerRecord, RouteRecord, RouteTarget } from '../storage/schema.js';
import type { Store } from '../storage/store.js';
import { newId } from './ids.js';
import { requireTemplateRef, type TemplateService, type TemplateUsage } from './template-service.js';
import {
  invalid,
  optionalBoolean,
  rejectUnknownFields,
  requireBoolean,
  requireInteger,
  requireName,
  requireObject,
} from './validate.js';

/** Upstream timeout (response head, then idle time between body chunks) when a route sets none. */
export const DEFAULT_UPSTREAM_TIMEOUT_MS = 30_000;
export const MIN_UPSTREAM_TIMEOUT_MS = 100;
export const MAX_UPSTREAM_TIMEOUT_MS = 600_000;
/** Largest body of a `static` target. */
export const MAX_STATIC_BODY_CHARS = 64 * 1024;
export const MAX_PATH_PREFIX_CHARS = 1024;
export const MIN_PRIORITY = -1_000_000;
export const MAX_PRIORITY = 1_000_000;
export const REDIRECT_STATUSES: readonly number[] = [301, 302, 303, 307, 308];

/** Whether a listener is bound right now, and why not when it should be. */
export interface ListenerStatus {
  running: boolean;
  /** Why an enabled listener is not running (e.g. the port is in use), else null. */
  error: string | null;
}

/**
 * What the configuration drives: the data plane. `startListener` binds (or
 * rebinds on a changed address/port, binding the new socket before closing
 * the old) and throws AppError CONFLICT (port in use) or VALIDATION_FAILED
 * (address not available, permission denied); `stopListener` closes the
 * listening socket at once.
 */
export interface ProxyRuntime {
  startListener(listener: Readonly<ListenerRecord>): Promise<void>;
  stopListener(id: string): Promise<void>;
  setRoutes(routes: readonly Readonly<RouteRecord>[]): void;
  listenerStatus(id: string): ListenerStatus;
}

/** A listener as the API shows it. */
export interface Listener extends ListenerStatus {
  id: string;
  name: string;
  bindAddress: string;
  port: number;
  enabled: boolean;
  /** Template of this listener's 502/503/504 answers (a route's own wins), or null. */
  errorTemplateId: string | null;
  protocol: 'http' | 'https';
  defaultCertificateId: string | null;
  redirectHttps: boolean;
  hsts: boolean;
  /** CIDR ranges of proxies in front of this listener whose forwarding headers are kept. */
  trustedProxies: string[];
  createdAt: string;
  updatedAt: string;
}

/** A route as the API shows it. */
export interface Route {
  id: string;
  listenerId: string;
  host: string | null;
  pathPrefix: string;
  priority: number;
  target: RouteTarget;
  /** Template of this route's 502/503/504 answers, or null (the listener's). */
  errorTemplateId: string | null;
  createdAt: string;
  updatedAt: string;
}

export interface ProxyConfigServiceOptions {
  store: Store;
  /** The data plane; without one, the configuration is only stored. */
  runtime?: ProxyRuntime;
  /** Told which routes and listeners use which template (deletes of used templates are refused). */
  templates?: Pick<TemplateService, 'registerUsage'>;
  /** Where a failed rollback of the data plane is reported (the saved configuration stays the truth). */
  logger?: Logger;
  now?: () => number;
}

const LISTENER_FIELDS = [
  'name',
  'bindAddress',
  'port',
  'enabled',
  'errorTemplateId',
  'protocol',
  'defaultCertificateId',
  'redirectHttps',
  'hsts',
  'trustedProxies',
] as const;
const ROUTE_FIELDS = ['listenerId', 'host', 'pathPrefix', 'priority', 'target', 'errorTemplateId'] as const;
/** Read-only fields a client may send back from a GET; ignored. */
const READ_ONLY_FIELDS = ['id', 'running', 'error', 'createdAt', 'updatedAt'];

const IDLE_RUNTIME: ProxyRuntime = {
  startListener: async () => {},
  stopListener: async () => {},
  setRoutes: () => {},
  listenerStatus: () => ({ running: false, error: null }),
};

export class ProxyConfigService {
  readonly #store: Store;
  readonly #runtime: ProxyRuntime;
  readonly #logger: Logger | undefined;
  readonly #now: () => number;
  /** Configuration changes run one at a time: binding and persisting must not interleave. */
  #serial: Promise<unknown> = Promise.resolve();

  constructor(options: ProxyConfigServiceOptions) {
    this.#store = options.store;
    this.#runtime = options.runtime ?? IDLE_RUNTIME;
    this.#logger = options.logger;
    this.#now = options.now ?? Date.now;
    options.templates?.registerUsage(proxyTemplateUsage);
  }

  listListeners(): Listener[] {
    return this.#store.read().proxy.listeners.map((l) => this.#toListener(l));
  }

  getListener(id: string): Listener {
    return this.#toListener(this.#findListener(id));
  }

  /** Creates a listener; when enabled (the default) it is bound before the answer. */
  async createListener(body: unknown): Promise<Listener> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...LISTENER_FIELDS, ...READ_ONLY_FIELDS]);
    const at = new Date(this.#now()).toISOString();
    const record: ListenerRecord = {
      id: newId(),
      name: requireName(input.name),
      bindAddress: input.bindAddress === undefined ? '0.0.0.0' : requireBindAddress(input.bindAddress),
      port: requirePort(input.port),
      enabled: optionalBoolean(input.enabled, 'enabled', true),
      errorTemplateId: requireTemplateRef(this.#store.read(), input.errorTemplateId, 'errorTemplateId'),
      protocol: input.protocol === undefined ? 'http' : requireProtocol(input.protocol),
      defaultCertificateId:
        input.defaultCertificateId === undefined ? null : requireCertificateRef(input.defaultCertificateId),
      redirectHttps: optionalBoolean(input.redirectHttps, 'redirectHttps', false),
      hsts: optionalBoolean(input.hsts, 'hsts', false),
      trustedProxies: input.trustedProxies === undefined ? [] : requireCidrList(input.trustedProxies),
      createdAt: at,
      updatedAt: at,
    };
    return this.#exclusive(async () => {
      assertListenerFree(this.#store.read().proxy.listeners, record);
      assertTlsFields(this.#store.read(), record);
      if (record.enabled) await this.#runtime.startListener(record);
      try {
        await this.#store.update((db) => {
          assertListenerFree(db.proxy.listeners, record);
          requireTemplateRef(db, record.errorTemplateId, 'errorTemplateId');
          db.proxy.listeners.push(record);
        });
      } catch (err) {
        if (record.enabled)
          await this.#runtime
            .stopListener(record.id)
            .catch((rollbackErr: unknown) => this.#rollbackFailed(rollbackErr, record.id, err));
        throw err;
      }
      return this.#toListener(record);
    });
  }

  /** Changes any of `name, bindAddress, port, enabled`; rebinds or stops the listener to match. */
  async updateListener(id: string, body: unknown): Promise<Listener> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...LISTENER_FIELDS, ...READ_ONLY_FIELDS]);
    const name = input.name === undefined ? undefined : requireName(input.name);
    const bindAddress = input.bindAddress === undefined ? undefined : requireBindAddress(input.bindAddress);
    const port = input.port === undefined ? undefined : requirePort(input.port);
    const enabled = input.enabled === undefined ? undefined : requireBoolean(input.enabled, 'enabled');
    const errorTemplateId =
      input.errorTemplateId === undefined
        ? undefined
        : requireTemplateRef(this.#store.read(), input.errorTemplateId, 'errorTemplateId');
    const protocol = input.protocol === undefined ? undefined : requireProtocol(input.protocol);
    const defaultCertificateId =
      input.defaultCertificateId === undefined
        ? undefined
        : requireCertificateRef(input.defaultCertificateId);
    const redirectHttps =
      input.redirectHttps === undefined ? undefined : requireBoolean(input.redirectHttps, 'redirectHttps');
    const hsts = input.hsts === undefined ? undefined : requireBoolean(input.hsts, 'hsts');
    const trustedProxies =
      input.trustedProxies === undefined ? undefined : requireCidrList(input.trustedProxies);
    return this.#exclusive(async () => {
      const current = { ...this.#findListener(id) };
      const next: ListenerRecord = {
        ...current,
        name: name ?? current.name,
        bindAddress: bindAddress ?? current.bindAddress,
        port: port ?? current.port,
        enabled: enabled ?? current.enabled,
        errorTemplateId: errorTemplateId === undefined ? (current.errorTemplateId ?? null) : errorTemplateId,
        protocol: protocol ?? current.protocol ?? 'http',
        defaultCertificateId:
          defaultCertificateId === undefined ? (current.defaultCertificateId ?? null) : defaultCertificateId,
        redirectHttps: redirectHttps ?? current.redirectHttps ?? false,
        hsts: hsts ?? current.hsts ?? false,
        trustedProxies: trustedProxies ?? current.trustedProxies ?? [],
        updatedAt: new Date(this.#now()).toISOString(),
      };
      assertListenerFree(this.#store.read().proxy.listeners, next);
      assertTlsFields(this.#store.read(), next);
      await this.#apply(next);
      try {
        await this.#store.update((db) => {
          const index = db.proxy.listeners.findIndex((l) => l.id === id);
          if (index < 0) throw new AppError('NOT_FOUND', 'no such listener');
          assertListenerFree(db.proxy.listeners, next);
          requireTemplateRef(db, next.errorTemplateId, 'errorTemplateId');
          db.proxy.listeners[index] = next;
        });
      } catch (err) {
        await this.#apply(current).catch((rollbackErr: unknown) =>
          this.#rollbackFailed(rollbackErr, id, err),
        );
        throw err;
      }
      return this.#toListener(next);
    });
  }

  /** Deletes a listener and its routes; its port is free when this resolves. */
  async removeListener(id: string): Promise<void> {
    return this.#exclusive(async () => {
      this.#findListener(id);
      await this.#runtime.stopListener(id);
      await this.#store.update((db) => {
        db.proxy.listeners = db.proxy.listeners.filter((l) => l.id !== id);
        db.proxy.routes = db.proxy.routes.filter((r) => r.listenerId !== id);
      });
      this.#runtime.setRoutes(this.#store.read().proxy.routes);
    });
  }

  listRoutes(): Route[] {
    return this.#store.read().proxy.routes.map(toRoute);
  }

  getRoute(id: string): Route {
    return toRoute(this.#findRoute(id));
  }

  /** Creates a route; it serves the next request. */
  async createRoute(body: unknown): Promise<Route> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...ROUTE_FIELDS, ...READ_ONLY_FIELDS]);
    if (input.listenerId === undefined) throw invalid('listenerId', 'is required');
    if (input.target === undefined) throw invalid('target', 'is required');
    const at = new Date(this.#now()).toISOString();
    const record: RouteRecord = {
      id: newId(),
      listenerId: requireListenerId(input.listenerId),
      host: input.host === undefined ? null : requireHostPattern(input.host),
      pathPrefix: input.pathPrefix === undefined ? '/' : requirePathPrefix(input.pathPrefix),
      priority: input.priority === undefined ? 0 : requirePriority(input.priority),
      target: requireTarget(input.target),
      errorTemplateId: null,
      createdAt: at,
      updatedAt: at,
    };
    return this.#exclusive(async () => {
      await this.#store.update((db) => {
        assertRouteValid(db.proxy.listeners, db.proxy.routes, record, db.backends ?? []);
        record.errorTemplateId = requireTemplateRef(db, input.errorTemplateId, 'errorTemplateId');
        record.target = resolveTargetTemplate(db, record.target, input.target);
        db.proxy.routes.push(record);
      });
      this.#runtime.setRoutes(this.#store.read().proxy.routes);
      return toRoute(record);
    });
  }

  /** Changes any of the route's fields (`target` is replaced as a whole). */
  async updateRoute(id: string, body: unknown): Promise<Route> {
    const input = requireObject(body);
    rejectUnknownFields(input, [...ROUTE_FIELDS, ...READ_ONLY_FIELDS]);
    const listenerId = input.listenerId === undefined ? undefined : requireListenerId(input.listenerId);
    const host = input.host === undefined ? undefined : requireHostPattern(input.host);
    const pathPrefix = input.pathPrefix === undefined ? undefined : requirePathPrefix(input.pathPrefix);
    const priority = input.priority === undefined ? undefined : requirePriority(input.priority);
    const target = input.target === undefined ? undefined : requireTarget(input.target);
    return this.#exclusive(async () => {
      this.#findRoute(id);
      const updated = await this.#store.update((db) => {
        const index = db.proxy.routes.findIndex((r) => r.id === id);
        const current = db.proxy.routes[index];
        if (!current) throw new AppError('NOT_FOUND', 'no such route');
        const next: RouteRecord = {
          ...current,
          listenerId: listenerId ?? current.listenerId,
          host: host === undefined ? current.host : host,
          pathPrefix: pathPrefix ?? current.pathPrefix,
          priority: priority ?? current.priority,
          target: target === undefined ? current.target : resolveTargetTemplate(db, target, input.target),
          errorTemplateId:
            input.errorTemplateId === undefined
              ? (current.errorTemplateId ?? null)
              : requireTemplateRef(db, input.errorTemplateId, 'errorTemplateId'),
          updatedAt: new Date(this.#now()).toISOString(),
        };
        assertRouteValid(db.proxy.listeners, db.proxy.routes, next, db.backends ?? []);
        db.proxy.routes[index] = next;
        return next;
      });
      this.#runtime.setRoutes(this.#store.read().proxy.routes);
      return toRoute(updated);
    });
  }

  /** Deletes a route; the next request no longer matches it. */
  async removeRoute(id: string): Promise<void> {
    return this.#exclusive(async () => {
      this.#findRoute(id);
      await this.#store.update((db) => {
        db.proxy.routes = db.proxy.routes.filter((r) => r.id !== id);
      });
      this.#runtime.setRoutes(this.#store.read().proxy.routes);
    });
  }

  /** Number of configured listeners (enabled or not). */
  listenerCount(): number {
    return this.#store.read().proxy.listeners.length;
  }

  async #apply(listener: ListenerRecord): Promise<void> {
    if (listener.enabled) await this.#runtime.startListener(listener);
    else await this.#runtime.stopListener(listener.id);
  }

  // The listener now runs as nothing saved says: say so, with both causes.
  #rollbackFailed(err: unknown, listenerId: string, saveErr: unknown): void {
    this.#logger?.error(
      { err, listenerId, saveError: saveErr instanceof Error ? saveErr.message : String(saveErr) },
      'the listener could not be put back after its change was not saved',
    );
  }

  #exclusive<T>(task: () => Promise<T>): Promise<T> {
    const run = this.#serial.then(task, task);
    this.#serial = run.catch(() => {});
    return run;
  }

  #toListener(record: Readonly<ListenerRecord>): Listener {
    const status = record.enabled ? this.#runtime.listenerStatus(record.id) : { running: false, error: null };
    return {
      id: record.id,
      name: record.name,
      bindAddress: record.bindAddress,
      port: record.port,
      enabled: record.enabled,
      errorTemplateId: record.errorTemplateId ?? null,
      protocol: record.protocol ?? 'http',
      defaultCertificateId: record.defaultCertificateId ?? null,
      redirectHttps: record.redirectHttps ?? false,
      hsts: record.hsts ?? false,
      trustedProxies: [...(record.trustedProxies ?? [])],
      running: status.running,
      error: status.error,
      createdAt: record.createdAt,
      updatedAt: record.updatedAt,
    };
  }

  #findListener(id: string): Readonly<ListenerRecord> {
    const record = this.#store.read().proxy.listeners.find((l) => l.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such listener');
    return record;
  }

  #findRoute(id: string): Readonly<RouteRecord> {
    const record = this.#store.read().proxy.routes.find((r) => r.id === id);
    if (!record) throw new AppError('NOT_FOUND', 'no such route');
    return record;
  }
}

function toRoute(record: Readonly<RouteRecord>): Route {
  return {
    id: record.id,
    listenerId: record.listenerId,
    host: record.host,
    pathPrefix: record.pathPrefix,
    priority: record.priority,
    target: { ...record.target },
    errorTemplateId: record.errorTemplateId ?? null,
    createdAt: record.createdAt,
    updatedAt: record.updatedAt,
  };
}

/** The routes and listeners that use templates (error pages, static targets). */
export function proxyTemplateUsage(db: Readonly<Database>): TemplateUsage[] {
  const usages: TemplateUsage[] = [];
  for (const route of db.proxy.routes) {
    const label = `${route.host ?? '*'}${route.pathPrefix}`;
    if (route.errorTemplateId)
      usages.push({
        templateId: route.errorTemplateId,
        type: 'route',
        id: route.id,
        name: `${label} (error pages)`,
      });
    if (route.target.type === 'static' && route.target.templateId)
      usages.push({ templateId: route.target.templateId, type: 'route', id: route.id, name: label });
  }
  for (const listener of db.proxy.listeners) {
    if (listener.errorTemplateId)
      usages.push({
        templateId: listener.errorTemplateId,
        type: 'listener',
        id: listener.id,
        name: `${listener.name} (error pages)`,
      });
  }
  return usages;
}

/**
 * Checks a static target's template reference against the database; without
 * an explicit status, the target takes the template's.
 */
function resolveTargetTemplate(db: Readonly<Database>, target: RouteTarget, raw: unknown): RouteTarget {
  if (target.type !== 'static' || target.templateId === undefined) return target;
  const templateId = requireTemplateRef(db, target.templateId, 'target.templateId');
  if (templateId === null) {
    const { templateId: _dropped, ...rest } = target;
    return rest;
  }
  const explicitStatus = (raw as { status?: unknown }).status !== undefined;
  const template = db.templates.find((t) => t.id === templateId);
  return {
    ...target,
    templateId,
    status: explicitStatus ? target.status : (template?.status ?? target.status),
  };
}

const WILDCARD_ADDRESSES = new Set(['0.0.0.0', '::']);

/** CONFLICT when another listener has the same name, or the same port on an overlapping address. */
function assertListenerFree(listeners: readonly ListenerRecord[], next: ListenerRecord): void {
  for (const other of listeners) {
    if (other.id === next.id) continue;
    if (other.name === next.name) {
      throw new AppError('CONFLICT', `a listener named "${next.name}" already exists`, {
        details: { field: 'name' },
      });
    }
    const overlap =
      other.bindAddress === next.bindAddress ||
      WILDCARD_ADDRESSES.has(other.bindAddress) ||
      WILDCARD_ADDRESSES.has(next.bindAddress);
    if (other.port === next.port && overlap) {
      throw new AppError(
        'CONFLICT',
        `port ${next.port} is already configured for listener "${other.name}" (${other.bindAddress})`,
        { details: { field: 'port' } },
      );
    }
  }
}

/**
 * VALIDATION_FAILED when a TLS field does not fit the protocol (a default
 * certificate or `hsts` on http, `redirectHttps` on https) or the default
 * certificate does not exist.
 */
function assertTlsFields(db: Readonly<Database>, next: ListenerRecord): void {
  const https = next.protocol === 'https';
  if (!https && next.defaultCertificateId)
    throw invalid('defaultCertificateId', 'applies to https listeners only');
  if (!https && next.hsts) throw invalid('hsts', 'applies to https listeners only');
  if (https && next.redirectHttps) throw invalid('redirectHttps', 'applies to http listeners only');
  const certificateId = next.defaultCertificateId ?? null;
  if (certificateId !== null && !(db.tls?.certificates ?? []).some((c) => c.id === certificateId))
    throw invalid('defaultCertificateId', 'no such certificate');
}

function requireProtocol(value: unknown): 'http' | 'https' {
  if (value !== 'http' && value !== 'https') throw invalid('protocol', 'must be http or https');
  return value;
}

function requireCertificateRef(value: unknown): string | null {
  if (value === null || value === '') return null;
  if (typeof value !== 'string' || value.length > 128)
    throw invalid('defaultCertificateId', 'no such certificate');
  return value;
}

/** VALIDATION_FAILED for an unknown listener; CONFLICT for a duplicate route. */
function assertRouteValid(
  listeners: readonly ListenerRecord[],
  routes: readonly RouteRecord[],
  next: RouteRecord,
  backends: readonly BackendRecord[] = [],
): void {
  if (!listeners.some((l) => l.id === next.listenerId)) throw invalid('listenerId', 'no such listener');
  if (
    next.target.type === 'backend' &&
    !backends.some((b) => b.id === (next.target as { backendId: string }).backendId)
  )
    throw invalid('target.backendId', 'no such backend');
  const duplicate = routes.find(
    (r) =>
      r.id !== next.id &&
      r.listenerId === next.listenerId &&
      r.host === next.host &&
      r.pathPrefix === next.pathPrefix &&
      r.priority === next.priority,
  );
  if (duplicate) {
    throw new AppError(
      'CONFLICT',
      'a route with the same listener, host, path prefix and priority already exists',
      { details: { field: 'pathPrefix' } },
    );
  }
}

/** An IP address literal to bind (`0.0.0.0` = every IPv4 address, `::` = every address). */
export function requireBindAddress(value: unknown): string {
  if (typeof value !== 'string' || isIP(value.trim()) === 0)
    throw invalid('bindAddress', 'must be an IP address such as 0.0.0.0, 127.0.0.1 or ::');
  return value.trim().toLowerCase();
}

/**
 * A listener's `trustedProxies`: at most 64 addresses or CIDR ranges
 * (`10.0.0.0/8`, `fd00::/8`), normalized; VALIDATION_FAILED naming the field otherwise.
 */
export function requireCidrList(value: unknown): string[] {
  const field = 'trustedProxies';
  if (!Array.isArray(value) || value.length > 64)
    throw invalid(field, 'must be a list of at most 64 CIDR ranges');
  return value.map((entry) => {
    if (typeof entry !== 'string') throw invalid(field, 'must hold CIDR ranges such as 10.0.0.0/8');
    const [address = '', prefix, ...rest] = entry.trim().toLowerCase().split('/');
    const family = isIP(address);
    const bits = prefix === undefined ? (family === 6 ? 128 : 32) : Number(prefix);
    if (
      family === 0 ||
      rest.length > 0 ||
      (prefix !== undefined && !/^\d{1,3}$/.test(prefix)) ||
      bits > (family === 6 ? 128 : 32)
    ) {
      throw invalid(field, `${JSON.stringify(entry)} is not an address or CIDR range such as 10.0.0.0/8`);
    }
    return `${address}/${bits}`;
  });
}

/** A TCP port from 1 to 65535 (a listener needs a stable port, so 0 is refused). */
export function requirePort(value: unknown): number {
  return requireInteger(value, 'port', 1, 65535);
}

function requireListenerId(value: unknown): string {
  if (typeof value !== 'string' || value === '') throw invalid('listenerId', 'no such listener');
  return value;
}

const HOST_NAME =
  /^(?=.{1,253}$)[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?)*$/;

/**
 * A route's host: null/empty (any host), an exact host name, or `*.suffix`
 * (any name ending in `.suffix`, not `suffix` itself). Lower-cased, without
 * port or trailing dot.
 */
export function requireHostPattern(value: unknown): string | null {
  if (value === null) return null;
  if (typeof value !== 'string') throw invalid('host', 'must be a host name, *.suffix, or null');
  let host = value.trim().toLowerCase();
  if (host === '') return null;
  if (host.endsWith('.')) host = host.slice(0, -1);
  const name = host.startsWith('*.') ? host.slice(2) : host;
  if (!HOST_NAME.test(name))
    throw invalid('host', 'must be a host name (no port) or *.suffix, e.g. api.example.com or *.example.com');
  return host;
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
const BAD_PATH_CHARACTERS = /[\u0000-\u0020\u007f?#]/;

/** A path prefix: starts with `/`, no query, fragment, spaces or control characters. */
export function requirePathPrefix(value: unknown): string {
  if (typeof value !== 'string' || !value.startsWith('/')) throw invalid('pathPrefix', 'must start with /');
  if (value.length > MAX_PATH_PREFIX_CHARS)
    throw invalid('pathPrefix', `must be at most ${MAX_PATH_PREFIX_CHARS} characters`);
  if (BAD_PATH_CHARACTERS.test(value))
    throw invalid('pathPrefix', 'must not contain spaces, control characters, ? or #');
  return value;
}

function requirePriority(value: unknown): number {
  return requireInteger(value, 'priority', MIN_PRIORITY, MAX_PRIORITY);
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: refusing them is the point
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f]/;

/**
 * A route target: `{type: "upstream", url, timeoutMs?}` (an http(s) origin,
 * optionally with a base path prepended to forwarded paths; no query,
 * fragment or credentials), `{type: "redirect", location, status}` (an
 * absolute http(s) URL or a path; status 301/302/303/307/308, default 302) or
 * `{type: "static", status, contentType, body}` (status 200–599, default 200;
 * body up to 64 KiB).
 */
export function requireTarget(value: unknown): RouteTarget {
  const input = requireObject(value, 'target');
  switch (input.type) {
    case 'upstream': {
      rejectTargetFields(input, ['type', 'url', 'timeoutMs']);
      const url = requireUpstreamUrl(input.url);
      if (input.timeoutMs === undefined) return { type: 'upstream', url };
      const timeoutMs = requireInteger(
        input.timeoutMs,
        'target.timeoutMs',
        MIN_UPSTREAM_TIMEOUT_MS,
        MAX_UPSTREAM_TIMEOUT_MS,
      );
      return { type: 'upstream', url, timeoutMs };
    }
    case 'redirect': {
      rejectTargetFields(input, ['type', 'location', 'status']);
      const location = requireLocation(input.location);
      const status = input.status === undefined ? 302 : input.status;
      if (typeof status !== 'number' || !REDIRECT_STATUSES.includes(status))
        throw invalid('target.status', `must be one of ${REDIRECT_STATUSES.join(', ')}`);
      return { type: 'redirect', location, status };
    }
    case 'static': {
      rejectTargetFields(input, ['type', 'status', 'contentType', 'body', 'templateId']);
      const status =
        input.status === undefined ? 200 : requireInteger(input.status, 'target.status', 200, 599);
      const contentType = input.contentType === undefined ? 'text/plain; charset=utf-8' : input.contentType;
      if (
        typeof contentType !== 'string' ||
        contentType.trim() === '' ||
        contentType.length > 256 ||
        CONTROL_CHARACTERS.test(contentType)
      )
        throw invalid('target.contentType', 'must be a media type such as text/plain');
      const body = input.body === undefined ? '' : input.body;
      if (typeof body !== 'string') throw invalid('target.body', 'must be a string');
      if (body.length > MAX_STATIC_BODY_CHARS)
        throw invalid('target.body', `must be at most ${MAX_STATIC_BODY_CHARS} characters`);
      const templateId = input.templateId;
      if (templateId === undefined) return { type: 'static', status, contentType: contentType.trim(), body };
      if (templateId !== null && typeof templateId !== 'string')
        throw invalid('target.templateId', 'must be a template id or null');
      // The reference is checked against the stored templates when the route is saved.
      return { type: 'static', status, contentType: contentType.trim(), body, templateId };
    }
    case 'backend': {
      rejectTargetFields(input, ['type', 'backendId']);
      if (typeof input.backendId !== 'string' || input.backendId === '')
        throw invalid('target.backendId', 'must be a backend id');
      // The reference is checked against the stored backends when the route is saved.
      return { type: 'backend', backendId: input.backendId };
    }
    default:
      throw invalid('target.type', 'must be upstream, redirect, static or backend');
  }
}

function rejectTargetFields(input: Record<string, unknown>, allowed: readonly string[]): void {
  for (const key of Object.keys(input)) {
    if (!allowed.includes(key)) throw invalid(`target.${key}`, 'is not a known field');
  }
}

/** An upstream URL, normalised to `scheme://host[:port][/base]` without a trailing slash. */
export function requireUpstreamUrl(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') throw invalid('target.url', 'is required');
  let url: URL;
  try {
    url = new URL(value.trim());
  } catch {
    throw invalid('target.url', 'must be an absolute http:// or https:// URL');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw invalid('target.url', 'must be an http:// or https:// URL');
  if (url.username !== '' || url.password !== '') throw invalid('target.url', 'must not contain credentials');
  if (url.search !== '' || value.includes('?')) throw invalid('target.url', 'must not have a query');
  if (url.hash !== '' || value.includes('#')) throw invalid('target.url', 'must not have a fragment');
  if (url.hostname === '') throw invalid('target.url', 'must name a host');
  const base = url.pathname.replace(/\/+$/, '');
  return `${url.origin}${base}`;
}

function requireLocation(value: unknown): string {
  if (typeof value !== 'string' || value.trim() === '') throw invalid('target.location', 'is required');
  const location = value.trim();
  if (CONTROL_CHARACTERS.test(location) || location.length > 2048)
    throw invalid('target.location', 'must be a URL or a path without control characters');
  if (location.startsWith('/') && !location.startsWith('//')) return location;
  let url: URL;
  try {
    url = new URL(location);
  } catch {
    throw invalid('target.location', 'must be an absolute http(s) URL or a path starting with /');
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw invalid('target.location', 'must be an http:// or https:// URL or a path');
  return location;
}
