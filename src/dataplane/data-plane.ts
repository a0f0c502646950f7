/**
 * The public proxy: one server per enabled listener (plain HTTP, or HTTPS
 * with `h2` and `http/1.1` — see {@link HttpsListener}), the served
 * certificates and pending ACME challenges, the compiled
 * route tables, and one shared undici Agent for upstreams (keep-alive pools
 * per origin). Implements the domain's ProxyRuntime, so configuration
 * changes apply live: a listener binds when created or enabled, closes its
 * listening socket at once when disabled or deleted (in-flight requests get
 * `closeGraceMs` to finish), and a route change takes effect for the next
 * request.
 *
 * Requests run through the pipeline (pipeline.ts): the route stage is built
 * from the routes; other features install their stage with `setStage`. Each
 * change builds a new immutable pipeline and swaps it, so a request runs with
 * the pipeline current when it arrived.
 *
 * Bind failures map to AppError: EADDRINUSE → CONFLICT (field `port`),
 * EADDRNOTAVAIL → VALIDATION_FAILED (field `bindAddress`), EACCES →
 * VALIDATION_FAILED (field `port`).
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { type AddressInfo, BlockList, isIP, type Server as NetServer } from 'node:net';
import type { Duplex } from 'node:stream';
import { rootCertificates, type SecureContext } from 'node:tls';
import { Agent } from 'undici';
import type { AgentDirectory } from '../domain/backend-service.js';
import {
  DEFAULT_UPSTREAM_TIMEOUT_MS,
  type ListenerStatus,
  type ProxyRuntime,
} from '../domain/proxy-config-service.js';
import { type CompiledTemplate, compileTemplates } from '../domain/template-render.js';
import type { TemplateRuntime } from '../domain/template-service.js';
import type { ServingCertificate, TlsRuntime } from '../domain/tls-types.js';
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import type { ListenerRecord, RouteRecord, TemplateRecord } from '../storage/schema.js';
import { SniIndex } from '../tls/sni-index.js';
import { createAcmeStage } from './acme-stage.js';
import { BackendBalancer } from './backend-balancer.js';
import { createCacheStage } from './cache/cache-stage.js';
import { ResponseCache } from './cache/response-cache.js';
import { HttpsListener, type HttpsTimeouts, type KeyPair, secureContextOf } from './https-listener.js';
import {
  buildPipeline,
  createRouteStage,
  type Pipeline,
  type PipelineListener,
  type Stage,
  type StageSlot,
} from './pipeline.js';
import {
  type ExchangeContext,
  type ExchangeOptions,
  handleExchange,
  handleUpgrade,
} from './proxy-exchange.js';
import { RequestMetrics } from './request-metrics.js';
import { compileRoutes } from './route-table.js';
import { type TraceInput, TraceRecorder } from './trace-recorder.js';

/** Time in-flight requests get when their listener stops, before their connections are cut. */
export const DEFAULT_CLOSE_GRACE_MS = 5000;
export const DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS = 10_000;
/** Idle upstream connections are kept this long for reuse. */
export const DEFAULT_UPSTREAM_KEEP_ALIVE_MS = 4000;

export interface DataPlaneOptions {
  logger: Logger;
  recorder?: TraceRecorder;
  metrics?: RequestMetrics;
  /** Called once per finished public request (the Prometheus metrics count it). */
  onRequestDone?: (request: TraceInput) => void;
  /** Upstream timeout when a route sets none (default 30 s). */
  upstreamTimeoutMs?: number;
  upstreamConnectTimeoutMs?: number;
  upstreamKeepAliveMs?: number;
  /** Extra trusted CA certificates (PEM) for https upstreams; the system store is always used. */
  upstreamCa?: string | string[];
  closeGraceMs?: number;
  /** https listeners: time a client gets to send its ClientHello (default 10 s). */
  tlsHelloTimeoutMs?: number;
  /**
   * https listeners: the other timeouts against slow or silent clients
   * (handshake, first request, HTTP/2 idle session; defaults in https-listener.ts).
   */
  httpsTimeouts?: Partial<Omit<HttpsTimeouts, 'helloTimeoutMs'>>;
  /** The data dir: with one, the response cache keeps its disk tier in `<dataDir>/cache`. */
  dataDir?: string;
  /** The connected agents that backends' agent members tunnel through (the hub); absent = none. */
  agents?: AgentDirectory;
}

interface RunningListener {
  record: Readonly<ListenerRecord>;
  /** The listening socket (the http server itself, or the https listener's TCP front). */
  server: NetServer;
  http: Server | null;
  https: HttpsListener | null;
  /** What the listener's answers need (hsts, redirect), recomputed when listeners change. */
  options: ExchangeOptions;
  /** What stages see of the listener; replaced (not mutated) when the record changes. */
  info: PipelineListener;
}

function listenerInfo(record: Readonly<ListenerRecord>): PipelineListener {
  return Object.freeze({ id: record.id, name: record.name, secure: record.protocol === 'https' });
}

interface LoadedCertificate {
  readonly serving: ServingCertificate;
  readonly pair: KeyPair;
  readonly context: SecureContext;
}

export class DataPlane implements ProxyRuntime, TemplateRuntime, TlsRuntime {
  readonly recorder: TraceRecorder;
  readonly metrics: RequestMetrics;
  /** Members and health of the backends (docs/pipeline.md "Backend targets"). */
  readonly backends: BackendBalancer;
  /** The response cache (configured by the cache service), or null without a data dir. */
  readonly cache: ResponseCache | null;
  readonly #logger: Logger;
  readonly #agent: Agent;
  readonly #context: ExchangeContext;
  readonly #closeGraceMs: number;
  readonly #httpsTimeouts: Partial<HttpsTimeouts>;
  readonly #running = new Map<string, RunningListener>();
  readonly #errors = new Map<string, string>();
  readonly #closing = new Set<Promise<void>>();
  readonly #slots = new Map<StageSlot, Stage>([['route', createRouteStage(new Map())]]);
  #pipeline: Pipeline = buildPipeline(this.#slots);
  #templates: ReadonlyMap<string, CompiledTemplate> = new Map();
  #closed = false;
  #certificates = new Map<string, LoadedCertificate>();
  #sni = new SniIndex<LoadedCertificate>([]);
  readonly #http01 = new Map<string, string>();
  /** http listeners with `redirectHttps` → the https port to send them to (null = 443). */
  readonly #redirects = new Map<string, number | null>();
  readonly #acmeStage = createAcmeStage({
    http01: (token) => this.#http01.get(token) ?? null,
    redirectPort: (listenerId) =>
      this.#redirects.has(listenerId) ? this.#redirects.get(listenerId)! : undefined,
  });
  readonly #tlsAlpn01 = new Map<string, SecureContext>();

  constructor(options: DataPlaneOptions) {
    this.#logger = options.logger;
    this.recorder = options.recorder ?? new TraceRecorder();
    this.metrics = options.metrics ?? new RequestMetrics();
    this.#closeGraceMs = options.closeGraceMs ?? DEFAULT_CLOSE_GRACE_MS;
    this.#httpsTimeouts = {
      ...options.httpsTimeouts,
      ...(options.tlsHelloTimeoutMs === undefined ? {} : { helloTimeoutMs: options.tlsHelloTimeoutMs }),
    };
    const keepAlive = options.upstreamKeepAliveMs ?? DEFAULT_UPSTREAM_KEEP_ALIVE_MS;
    const ca = options.upstreamCa;
    this.#agent = new Agent({
      keepAliveTimeout: keepAlive,
      keepAliveMaxTimeout: Math.max(keepAlive, 600_000),
      connect: {
        timeout: options.upstreamConnectTimeoutMs ?? DEFAULT_UPSTREAM_CONNECT_TIMEOUT_MS,
        // Set here so NODE_TLS_REJECT_UNAUTHORIZED=0 cannot send clients' credentials to an unverified upstream.
        rejectUnauthorized: true,
        ...(ca === undefined ? {} : { ca: [...(Array.isArray(ca) ? ca : [ca]), ...rootCertificates] }),
      },
    });
    // Health checks share the upstream agent: a member is verified (CA, no NODE_TLS_REJECT_UNAUTHORIZED) as its requests are.
    this.backends = new BackendBalancer({
      logger: options.logger.child({ component: 'backends' }),
      dispatcher: this.#agent,
      ...(options.agents ? { agents: options.agents } : {}),
    });
    this.cache =
      options.dataDir === undefined
        ? null
        : new ResponseCache({
            dataDir: options.dataDir,
            logger: options.logger.child({ component: 'cache' }),
            onConfigure: () => this.#installCacheStage(),
          });
    this.#context = {
      dispatcher: this.#agent,
      recorder: this.recorder,
      metrics: this.metrics,
      ...(options.onRequestDone ? { onRequestDone: options.onRequestDone } : {}),
      defaultTimeoutMs: options.upstreamTimeoutMs ?? DEFAULT_UPSTREAM_TIMEOUT_MS,
      templates: () => this.#templates,
      listenerErrorTemplate: (listenerId) => this.#running.get(listenerId)?.record.errorTemplateId ?? null,
      backends: this.backends,
    };
  }

  // --- TLS: served certificates and ACME challenges ---------------------------

  /**
   * Replaces the served certificates; the next handshake uses them, open
   * connections keep theirs. A certificate whose chain or key does not load
   * is left out (and logged) rather than failing the others.
   */
  setCertificates(certificates: readonly ServingCertificate[]): void {
    const next = new Map<string, LoadedCertificate>();
    const ordered: LoadedCertificate[] = [];
    for (const serving of certificates) {
      const previous = this.#certificates.get(serving.id);
      let loaded: LoadedCertificate;
      if (previous && previous.serving.fingerprintSha256 === serving.fingerprintSha256) {
        loaded = { ...previous, serving };
      } else {
        const pair = { cert: serving.certificatePem, key: serving.privateKeyPem };
        try {
          loaded = { serving, pair, context: secureContextOf(pair) };
        } catch (err) {
          this.#logger.warn(
            { certificateId: serving.id, err },
            'certificate could not be loaded; not served',
          );
          continue;
        }
      }
      next.set(serving.id, loaded);
      ordered.push(loaded);
    }
    this.#certificates = next;
    this.#sni = new SniIndex(ordered.map((value) => ({ hosts: value.serving.hosts, value })));
    for (const running of this.#running.values()) this.#applyDefault(running);
  }

  setHttp01Challenge(token: string, keyAuthorization: string | null): void {
    if (keyAuthorization === null) this.#http01.delete(token);
    else this.#http01.set(token, keyAuthorization);
    this.#refreshAcmeStage();
  }

  setTlsAlpn01Challenge(host: string, certificate: { cert: string; key: string } | null): void {
    const name = host.toLowerCase();
    if (certificate === null) this.#tlsAlpn01.delete(name);
    else this.#tlsAlpn01.set(name, secureContextOf(certificate));
  }

  /** The id of the certificate an https handshake for `serverName` gets on listener `listenerId`, or null. */
  certificateFor(listenerId: string, serverName: string | null): string | null {
    const fromName = serverName === null ? undefined : this.#sni.lookup(serverName.toLowerCase());
    if (fromName) return fromName.serving.id;
    const running = this.#running.get(listenerId);
    const id = running?.record.defaultCertificateId ?? null;
    return id !== null && this.#certificates.has(id) ? id : null;
  }

  #applyDefault(running: RunningListener): void {
    if (!running.https) return;
    const id = running.record.defaultCertificateId ?? null;
    running.https.setDefault(id === null ? null : (this.#certificates.get(id)?.pair ?? null));
  }

  /**
   * Restores a configuration at start: routes, then every enabled listener.
   * A listener that cannot bind is logged and reported by `listenerStatus`;
   * the others start anyway.
   */
  async start(config: {
    listeners: readonly Readonly<ListenerRecord>[];
    routes: readonly Readonly<RouteRecord>[];
    templates?: readonly Readonly<TemplateRecord>[];
  }): Promise<void> {
    this.setTemplates(config.templates ?? []);
    this.setRoutes(config.routes);
    // The disk tier loads in the background; the cache answers meanwhile with what it has.
    void this.cache?.open();
    for (const listener of config.listeners) {
      if (!listener.enabled) continue;
      try {
        await this.startListener(listener);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        this.#errors.set(listener.id, message);
        this.#logger.warn(
          { listenerId: listener.id, bindAddress: listener.bindAddress, port: listener.port, err },
          `proxy listener "${listener.name}" could not start: ${message}`,
        );
      }
    }
  }

  async startListener(listener: Readonly<ListenerRecord>): Promise<void> {
    if (this.#closed) throw new AppError('INTERNAL', 'the data plane is closed');
    let existing = this.#running.get(listener.id);
    const protocol = listener.protocol ?? 'http';
    const sameSocket =
      existing !== undefined &&
      existing.record.bindAddress === listener.bindAddress &&
      existing.record.port === listener.port;
    if (existing && sameSocket && (existing.record.protocol ?? 'http') === protocol) {
      existing.record = listener;
      existing.info = listenerInfo(listener);
      this.#applyDefault(existing);
      this.#refreshOptions();
      return;
    }
    if (existing && sameSocket) {
      // Same port, other protocol: the old socket must go before the new one can bind.
      this.#running.delete(listener.id);
      this.#closeRunning(existing);
      existing = undefined;
    }
    const id = listener.id;
    let running: RunningListener;
    if (protocol === 'https') {
      const https = new HttpsListener({
        ...this.#httpsTimeouts,
        certificates: {
          forName: (name) => this.#sni.lookup(name)?.context,
          challengeFor: (name) => (this.#tlsAlpn01.size === 0 ? undefined : this.#tlsAlpn01.get(name)),
        },
        onRequest: (req, res) => {
          handleExchange(this.#context, running.info, this.#pipeline, req, res, running.options);
        },
        // WebSocket upgrades over HTTP/1.1 on TLS, as on plain listeners.
        onUpgrade: (req, socket, head) => {
          handleUpgrade(this.#context, running.info, this.#pipeline, req, socket, head, running.options);
        },
      });
      running = {
        record: listener,
        server: https.server,
        http: null,
        https,
        options: {},
        info: listenerInfo(listener),
      };
      this.#applyDefault(running);
    } else {
      const server = createServer(
        { keepAliveTimeout: 5000, headersTimeout: 60_000, requestTimeout: 0 },
        (req: IncomingMessage, res: ServerResponse) => {
          handleExchange(this.#context, running.info, this.#pipeline, req, res, running.options);
        },
      );
      // WebSocket (and other) upgrades: through an agent tunnel they become a byte pipe.
      server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
        handleUpgrade(this.#context, running.info, this.#pipeline, req, socket, head, running.options);
      });
      server.on('clientError', (_err, socket) => {
        if (socket.writable) socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n');
        else socket.destroy();
      });
      running = {
        record: listener,
        server,
        http: server,
        https: null,
        options: {},
        info: listenerInfo(listener),
      };
    }
    const server = running.server;
    await listen(server, listener);
    // Bound: only now replace the previous socket, so a failed rebind keeps the old one serving.
    this.#running.set(id, running);
    this.#refreshOptions();
    this.#errors.delete(id);
    if (existing) this.#closeRunning(existing);
    this.#logger.info(
      { listenerId: id, bindAddress: listener.bindAddress, port: boundPort(server) },
      `proxy listener "${listener.name}" serving on ${listener.bindAddress}:${boundPort(server)}`,
    );
  }

  async stopListener(id: string): Promise<void> {
    this.#errors.delete(id);
    const running = this.#running.get(id);
    if (!running) return;
    this.#running.delete(id);
    this.#refreshOptions();
    this.#closeRunning(running);
    this.#logger.info({ listenerId: id }, `proxy listener "${running.record.name}" stopped`);
  }

  setRoutes(routes: readonly Readonly<RouteRecord>[]): void {
    this.setStage('route', createRouteStage(compileRoutes(routes)));
  }

  /**
   * Installs (or, with null, removes) the stage of a slot and swaps in a new
   * pipeline: requests already running keep the one they started with. The
   * route slot cannot be emptied.
   */
  setStage(slot: StageSlot, stage: Stage | null): void {
    if (stage !== null && stage.slot !== slot) {
      throw new AppError('INTERNAL', `a ${stage.slot} stage cannot fill the ${slot} slot`);
    }
    if (stage === null) {
      if (slot === 'route') throw new AppError('INTERNAL', 'the route stage cannot be removed');
      this.#slots.delete(slot);
    } else this.#slots.set(slot, stage);
    this.#pipeline = buildPipeline(this.#slots);
  }

  /** (Re)installs the cache stage after the cache's configuration changed. */
  #installCacheStage(): void {
    const cache = this.cache;
    if (!cache) return;
    this.setStage(
      'cache',
      createCacheStage({
        cache,
        dispatcher: this.#agent,
        defaultTimeoutMs: this.#context.defaultTimeoutMs,
        listenerErrorTemplate: this.#context.listenerErrorTemplate,
      }),
    );
  }

  /** The pipeline new requests run through (tests and the policy tester read it). */
  get pipeline(): Pipeline {
    return this.#pipeline;
  }

  /** Compiles the response templates; the next answer that uses one renders the new set. */
  setTemplates(templates: readonly Readonly<TemplateRecord>[]): void {
    this.#templates = compileTemplates(templates);
  }

  listenerStatus(id: string): ListenerStatus {
    return { running: this.#running.has(id), error: this.#errors.get(id) ?? null };
  }

  /** The port a running listener is bound to (useful with port 0), or null. */
  boundPort(id: string): number | null {
    const running = this.#running.get(id);
    return running ? boundPort(running.server) : null;
  }

  /** Number of listeners bound right now. */
  runningCount(): number {
    return this.#running.size;
  }

  /** Stops every listener (in-flight requests get the grace period) and the upstream pools. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.backends.stopChecks();
    for (const running of this.#running.values()) this.#closeRunning(running);
    this.#running.clear();
    await Promise.all(this.#closing);
    await this.cache?.close();
    await this.#agent.close();
  }

  /**
   * Per-listener answer options: `hsts` on https listeners; on http ones with
   * `redirectHttps`, the port of this instance's https listener (443 first,
   * else the lowest), or the default port when none runs.
   */
  #refreshOptions(): void {
    let httpsPort: number | null = null;
    for (const other of this.#running.values()) {
      if (!other.https) continue;
      const port = boundPort(other.server);
      if (httpsPort === null || port === 443 || (httpsPort !== 443 && port < httpsPort)) httpsPort = port;
    }
    this.#redirects.clear();
    for (const running of this.#running.values()) {
      const record = running.record;
      const trustedProxies = trustedProxyList(record.trustedProxies);
      running.options = {
        ...(running.https ? { hsts: record.hsts === true } : {}),
        ...(trustedProxies ? { trustedProxies } : {}),
      };
      if (!running.https && record.redirectHttps === true) this.#redirects.set(record.id, httpsPort);
    }
    this.#refreshAcmeStage();
  }

  /** The `acme` stage is in the pipeline only while a challenge is pending or a listener redirects. */
  #refreshAcmeStage(): void {
    const needed = this.#http01.size > 0 || this.#redirects.size > 0;
    if (needed === this.#slots.has('acme')) return;
    this.setStage('acme', needed ? this.#acmeStage : null);
  }

  #closeRunning(running: RunningListener): void {
    if (running.http) this.#closeServer(running.http);
    else if (running.https) this.#track(running.https.close(this.#closeGraceMs));
  }

  #track(done: Promise<void>): void {
    this.#closing.add(done);
    void done.then(() => this.#closing.delete(done));
  }

  /** Closes the listening socket now; idle connections at once, busy ones after the grace period. */
  #closeServer(server: Server): void {
    const done = new Promise<void>((resolve) => {
      const timer = setTimeout(() => server.closeAllConnections(), this.#closeGraceMs);
      timer.unref();
      server.close(() => {
        clearTimeout(timer);
        resolve();
      });
      server.closeIdleConnections();
    });
    this.#track(done);
  }
}

function listen(server: NetServer, listener: Readonly<ListenerRecord>): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (err: NodeJS.ErrnoException) => {
      server.off('listening', onListening);
      reject(bindError(err, listener));
    };
    const onListening = () => {
      server.off('error', onError);
      resolve();
    };
    server.once('error', onError);
    server.once('listening', onListening);
    server.listen({ host: listener.bindAddress, port: listener.port, exclusive: true });
  });
}

function bindError(err: NodeJS.ErrnoException, listener: Readonly<ListenerRecord>): AppError {
  const where = `${listener.bindAddress}:${listener.port}`;
  switch (err.code) {
    case 'EADDRINUSE':
      return new AppError('CONFLICT', `port ${listener.port} is in use on ${listener.bindAddress}`, {
        cause: err,
        details: { field: 'port' },
      });
    case 'EADDRNOTAVAIL':
    case 'EAFNOSUPPORT':
      return new AppError(
        'VALIDATION_FAILED',
        `bindAddress: ${listener.bindAddress} is not an address of this host`,
        {
          cause: err,
          details: { field: 'bindAddress' },
        },
      );
    case 'EACCES':
      return new AppError('VALIDATION_FAILED', `port: not allowed to bind ${where}`, {
        cause: err,
        details: { field: 'port' },
      });
    default:
      return new AppError('INTERNAL', `cannot bind ${where}`, { cause: err });
  }
}

function boundPort(server: NetServer): number {
  return (server.address() as AddressInfo | null)?.port ?? 0;
}

/** A listener's `trustedProxies` as a BlockList, or null when it has none (entries are checked when saved). */
function trustedProxyList(ranges: readonly string[] | undefined): BlockList | null {
  if (!ranges || ranges.length === 0) return null;
  const list = new BlockList();
  for (const range of ranges) {
    const [address = '', prefix = ''] = range.split('/');
    const family = isIP(address);
    if (family === 0) continue;
    list.addSubnet(address, Number(prefix || (family === 6 ? 128 : 32)), family === 6 ? 'ipv6' : 'ipv4');
  }
  return list;
}
