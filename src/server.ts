/**
 * The composition root of `p2pstream server`: opens the data dir, the store
 * and the secrets box, builds the services and the app, and listens.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { FastifyInstance, FastifyPluginAsync } from 'fastify';
import { type AppOptions, buildApp } from './app.js';
import { ClusterPresence } from './cluster/cluster-presence.js';
import { ReplicaLinks } from './cluster/replica-links.js';
import type { ServerConfig } from './config.js';
import { DataPlane } from './dataplane/data-plane.js';
import { PolicyEngine } from './dataplane/policy-engine.js';
import { TraceRecorder } from './dataplane/trace-recorder.js';
import { AcmeAccountService } from './domain/acme-account-service.js';
import { AgentService } from './domain/agent-service.js';
import { AuthService } from './domain/auth-service.js';
import { BackendService } from './domain/backend-service.js';
import { CacheService } from './domain/cache-service.js';
import { CertificateService } from './domain/certificate-service.js';
import type { ReplicaSummary } from './domain/cluster-types.js';
import { EnvironmentService } from './domain/environment-service.js';
import { createOverviewService } from './domain/overview-service.js';
import type { HashingStats } from './domain/passwords.js';
import { PolicyService } from './domain/policy-service.js';
import { ProxyConfigService } from './domain/proxy-config-service.js';
import { createSystemService } from './domain/system-service.js';
import { TemplateService } from './domain/template-service.js';
import { TokenService } from './domain/token-service.js';
import { TrafficSettingsService } from './domain/traffic-settings-service.js';
import { createEnvironmentRelay, createEnvironmentTransports } from './http/environment-relay.js';
import { createAgentsPlugin } from './http/routes/agents.js';
import { createCachePlugin } from './http/routes/cache.js';
import { createConsolePlugin } from './http/routes/console.js';
import { createEnvironmentsPlugin } from './http/routes/environments.js';
import { createOverviewPlugin } from './http/routes/overview.js';
import { createPoliciesPlugin } from './http/routes/policies.js';
import { createProxyPlugin } from './http/routes/proxy.js';
import { createTemplatesPlugin } from './http/routes/templates.js';
import { createTlsPlugin } from './http/routes/tls.js';
import { createTrafficPlugin } from './http/routes/traffic.js';
import { Hub } from './hub/hub.js';
import type { Logger } from './logger.js';
import { registerCacheMetrics } from './metrics/cache-metrics.js';
import {
  publicRequestMetrics,
  registerInstanceMetrics,
  relayedRequestMetrics,
} from './metrics/instance-metrics.js';
import { MetricsRegistry } from './metrics/metrics-registry.js';
import { createDirectTransport } from './relay/direct-transport.js';
import { assertPrivateDataDir, lockDataDir } from './storage/data-dir.js';
import { openStore } from './storage/open-store.js';
import { loadSecretsBox, type SecretsBox } from './storage/secrets-box.js';
import type { Store } from './storage/store.js';
import { createAcmeIssuer } from './tls/acme-issuer.js';
import { loadManagementCertificate } from './tls/management-certificate.js';
import { VERSION } from './version.js';

export interface RunningServer {
  /** `https://HOST:PORT` of the management listener. */
  url: string;
  port: number;
  app: FastifyInstance;
  store: Store;
  /** `lowdb` (one process) or `postgres` (shared by replicas). */
  storeKind: 'lowdb' | 'postgres';
  /** This process's replica id (kept in the data dir, so a restart keeps it). */
  replicaId: string;
  /** The management certificate (PEM), for clients that pin it. */
  certificate: string;
  /** The agent hub: live agents and their transports. */
  hub: Hub;
  /** This instance's metrics (`GET /metrics`). */
  metrics: MetricsRegistry;
  /** The port a proxy listener is bound to right now, or null when it is not running. */
  dataPlanePort(listenerId: string): number | null;
  /** Streams open through the in-process (direct) transport (the hub counts those through agents). */
  directStreams(): number;
  /** Requests waiting for another request's origin answer for the same cache key (coalesced misses). */
  cacheWaiting(): number;
  /** Password hashing under way and refused (the login flood guard). */
  hashingStats(): HashingStats;
  /** Stops accepting, finishes in-flight requests, flushes the store. */
  close(): Promise<void>;
}

/** What a caller (a test) may add to the app beside the configuration. */
export interface StartServerOptions {
  /** Sees every route as it is added. */
  onRoute?: AppOptions['onRoute'];
  /**
   * Operational plugins added after the built-in ones (tests stand in for the
   * routes of a newer version with them).
   */
  extraOperationalPlugins?: FastifyPluginAsync[];
}

/** Starts the management listener; logs `management listening on https://HOST:PORT`. */
export async function startServer(
  config: Readonly<ServerConfig>,
  logger: Logger,
  options: StartServerOptions = {},
): Promise<RunningServer> {
  await fs.mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  await assertPrivateDataDir(config.dataDir);
  const unlockDataDir = await lockDataDir(config.dataDir);
  const replicaId = await loadReplicaId(config.dataDir);
  const opened = await openStore({
    dataDir: config.dataDir,
    databaseUrl: config.databaseUrl,
    logger: logger.child({ component: 'store' }),
  });
  const store = opened.store;
  const secrets = await loadSecretsBox(config.dataDir);
  if (opened.kind === 'postgres') await checkSharedSecretsKey(store, secrets);
  const tls = await loadManagementCertificate({
    dataDir: config.dataDir,
    certFile: config.tlsCertFile,
    keyFile: config.tlsKeyFile,
  });
  const setupToken = config.setupToken ?? randomBytes(12).toString('base64url');
  // Every feature registers its Prometheus metrics here (src/metrics/).
  const metrics = new MetricsRegistry();
  const auth = new AuthService({
    store,
    setupToken,
    ...(config.passwordCost ? { passwordCost: config.passwordCost } : {}),
  });
  const tokens = new TokenService({ store });
  // The cluster (replicas sharing the database and a NATS server): presence of replicas and agents.
  const startedAt = Date.now();
  let hubRef: Hub | null = null;
  const presence = config.natsUrl
    ? ClusterPresence.start({
        url: config.natsUrl,
        replicaId,
        version: VERSION,
        startedAt,
        agentsConnected: () => hubRef?.connectedCount() ?? 0,
        logger: logger.child({ component: 'cluster' }),
        onBusState: (connected) => busState(connected),
        ...(config.cluster?.heartbeatMs ? { heartbeatMs: config.cluster.heartbeatMs } : {}),
        ...(config.cluster?.replicaTtlMs ? { replicaTtlMs: config.cluster.replicaTtlMs } : {}),
      })
    : null;
  let busLossTimer: ReturnType<typeof setTimeout> | null = null;
  let linksRef: ReplicaLinks | null = null;
  const busState = (connected: boolean) => {
    linksRef?.busChanged();
    if (busLossTimer) clearTimeout(busLossTimer);
    busLossTimer = null;
    if (connected) {
      hubRef?.resume();
      return;
    }
    // A blip (NATS restarting) is ridden out; a longer loss sends this replica's agents elsewhere.
    busLossTimer = setTimeout(
      () => hubRef?.pause('this control-plane replica lost the cluster bus; connect to another one'),
      config.cluster?.busLossGraceMs ?? DEFAULT_BUS_LOSS_GRACE_MS,
    );
    busLossTimer.unref();
  };
  const replicaSummaries = (): ReplicaSummary[] =>
    presence
      ? presence.replicas()
      : [
          {
            id: replicaId,
            version: VERSION,
            startedAt: new Date(startedAt).toISOString(),
            uptimeSeconds: Math.floor((Date.now() - startedAt) / 1000),
            agentsConnected: hubRef?.connectedCount() ?? 0,
            lastHeartbeatAt: new Date().toISOString(),
            self: true,
          },
        ];
  const system = createSystemService({
    store,
    startedAt,
    replica: {
      status: () => ({
        id: replicaId,
        store: opened.kind,
        databaseConnected: opened.connected(),
        bus: presence ? (presence.busConnected ? 'connected' : 'disconnected') : 'off',
        acceptingAgents: hubRef?.acceptingAgents ?? false,
        agentsConnected: hubRef?.connectedCount() ?? 0,
      }),
      replicas: replicaSummaries,
    },
  });
  const agents = new AgentService({
    store,
    logger: logger.child({ component: 'agents' }),
    replicaId,
    ...(presence ? { presence: { holderOf: (id: string) => presence.holderOf(id) } } : {}),
  });
  await agents.closeOrphanSessions();
  const hub = new Hub({
    agents,
    logger: logger.child({ component: 'hub' }),
    ...(presence ? { replicaId } : {}),
    onAgentConnected: (agentId, sessionId, at) => presence?.agentConnected(agentId, sessionId, at),
    onAgentDisconnected: (agentId, sessionId) => presence?.agentDisconnected(agentId, sessionId),
    ...(config.reconcileIntervalMs !== undefined ? { reconcileIntervalMs: config.reconcileIntervalMs } : {}),
    ...(config.tunnels?.windowBytes ? { tunnelWindowBytes: config.tunnels.windowBytes } : {}),
    ...(config.tunnels?.maxStreamsPerAgent
      ? { maxTunnelStreamsPerAgent: config.tunnels.maxStreamsPerAgent }
      : {}),
  });
  hubRef = hub;
  // Calls for an agent another replica holds travel there over NATS, as the same envelopes.
  const links = presence
    ? new ReplicaLinks({
        replicaId,
        connection: () => presence.connection,
        holderOf: (id, exclude) => presence.holderOf(id, exclude),
        isAlive: (id) => presence.isAlive(id),
        bridgeFor: (id) => hub.bridgeFor(id),
        logger: logger.child({ component: 'cluster' }),
      })
    : null;
  linksRef = links;
  if (links) hub.setForwarder((agentId) => links.transportFor(agentId));
  if (presence) {
    // Until the bus is up this replica could not tell the others about its agents.
    if (!presence.busConnected)
      hub.pause('this control-plane replica is not connected to the cluster bus yet');
    await Promise.race([presence.ready(), new Promise((resolve) => setTimeout(resolve, 3000).unref())]);
    if (presence.busConnected) hub.resume();
  }
  // Environments: the registry, its transports (in-process, or through the hub's agents) and the relay.
  const directTransport = createDirectTransport({
    logger: logger.child({ component: 'relay' }),
    allowedTargets: config.directAllowedTargets ?? null,
  });
  const environments = new EnvironmentService({
    store,
    secrets,
    agentExists: (id) => agents.exists(id),
    transports: createEnvironmentTransports({
      direct: directTransport,
      hub,
      agentExists: (id) => agents.exists(id),
      ...(presence ? { agentReplica: (id: string) => presence.holderOf(id)?.replicaId ?? null } : {}),
    }),
  });
  // Public proxy data plane, tracer and overview (configuration restored after listen).
  const recorder = new TraceRecorder();
  const traffic = new TrafficSettingsService({
    store,
    counters: () => recorder.counters(),
    onChange: (settings) => recorder.configure(settings),
  });
  recorder.configure(traffic.settings());
  const dataPlane = new DataPlane({
    logger: logger.child({ component: 'dataplane' }),
    recorder,
    onRequestDone: publicRequestMetrics(metrics),
    dataDir: config.dataDir,
    // Backends' agent members tunnel through the agents connected to this replica.
    agents: hub,
  });
  const templates = new TemplateService({ store, runtime: dataPlane });
  const cache = new CacheService({ store, ...(dataPlane.cache ? { runtime: dataPlane.cache } : {}) });
  cache.apply();
  const backends = new BackendService({ store, runtime: dataPlane.backends });
  backends.apply();
  dataPlane.backends.startChecks();
  const proxyConfig = new ProxyConfigService({
    store,
    runtime: dataPlane,
    templates,
    logger: logger.child({ component: 'proxy-config' }),
  });
  // Traffic policies: WAF, rate limits and shapers, as stages of the data plane's pipeline.
  const policyEngine = new PolicyEngine({
    install: (slot, stage) => dataPlane.setStage(slot, stage),
    logger: logger.child({ component: 'policies' }),
    metrics,
    listenerName: (id) => store.read().proxy.listeners.find((l) => l.id === id)?.name ?? null,
  });
  const policies = new PolicyService({ store, runtime: policyEngine, templates });
  policies.apply();
  // Public TLS: the certificate store, ACME accounts and renewals, serving through the data plane.
  const acmeIssuer = createAcmeIssuer({ dnsPropagationMs: config.tls?.dnsPropagationMs });
  const acmeAccounts = new AcmeAccountService({ store, secrets, issuer: acmeIssuer });
  const certificates = new CertificateService({
    store,
    secrets,
    accounts: acmeAccounts,
    runtime: dataPlane,
    issuer: acmeIssuer,
    logger: logger.child({ component: 'tls' }),
    checkIntervalMs: config.tls?.checkIntervalMs,
    retryBaseMs: config.tls?.retryBaseMs,
    filePollMs: config.tls?.filePollMs,
    replicaId,
  });
  const overview = createOverviewService({
    stats: dataPlane.metrics,
    listenersRunning: () => dataPlane.runningCount(),
    listenersConfigured: () => proxyConfig.listenerCount(),
    traceSubscribers: () => recorder.subscriberCount,
    agentsConnected: () => hub.connectedCount(),
    replicas: replicaSummaries,
    cacheStats: () => cache.stats(),
  });
  registerCacheMetrics(metrics, () => cache.stats());
  registerInstanceMetrics(metrics, {
    agentsConnected: () => hub.connectedCount(),
    hubTraffic: () => hub.traffic(),
    directStreams: () => directTransport.stats().client.activeStreams,
    traceCounters: () => recorder.counters(),
  });

  const app = await buildApp(
    {
      logger,
      auth,
      tokens,
      system,
      metrics,
      environmentRelay: createEnvironmentRelay({
        environments,
        logger,
        observe: relayedRequestMetrics(metrics),
      }),
      localPlugins: [
        createConsolePlugin(),
        hub.plugin,
        createEnvironmentsPlugin({ environments, auth, tokens }),
      ],
      operationalPlugins: [
        createAgentsPlugin({ agents, managementFingerprint: new X509Certificate(tls.cert).fingerprint256 }),
        createProxyPlugin({ proxyConfig, backends }),
        createTemplatesPlugin({ templates }),
        createPoliciesPlugin({ policies }),
        createTlsPlugin({ certificates, accounts: acmeAccounts }),
        createCachePlugin({ cache }),
        createTrafficPlugin({ settings: traffic, recorder }),
        createOverviewPlugin({ overview }),
        ...(options.extraOperationalPlugins ?? []),
      ],
    },
    {
      https: { key: tls.key, cert: tls.cert },
      bodyLimitBytes: config.bodyLimitBytes,
      headersTimeoutMs: config.headersTimeoutMs,
      ...(options.onRoute ? { onRoute: options.onRoute } : {}),
    },
  );
  await app.listen({ host: config.managementAddr, port: config.managementPort });
  const address = app.server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  const url = `https://${host}:${address.port}`;
  logger.info({ url, certificate: tls.certFile }, `management listening on ${url}`);
  await certificates.start();
  await dataPlane.start({ ...store.read().proxy, templates: store.read().templates });
  // Changes written by other replicas sharing the database: derived state follows.
  let appliedListeners = new Set(
    store
      .read()
      .proxy.listeners.filter((l) => l.enabled)
      .map((l) => l.id),
  );
  let proxySync: Promise<void> = Promise.resolve();
  let tlsSync: Promise<void> = Promise.resolve();
  const unsubscribeStore = store.onExternalChange((keys) => {
    if (keys.has('agents')) hub.revalidate();
    if (keys.has('traffic')) recorder.configure(traffic.settings());
    if (keys.has('templates')) dataPlane.setTemplates(store.read().templates);
    if (keys.has('policies')) policies.apply();
    if (keys.has('cache')) cache.apply();
    if (keys.has('backends')) backends.apply();
    if (keys.has('tls') || keys.has('acmeChallenges')) {
      tlsSync = tlsSync
        .then(() => certificates.syncExternal())
        .catch((err: unknown) => {
          logger.warn({ err }, 'certificates changed by another replica could not be applied');
        });
    }
    if (keys.has('proxy')) {
      proxySync = proxySync.then(async () => {
        const proxy = store.read().proxy;
        dataPlane.setRoutes(proxy.routes);
        const enabled = proxy.listeners.filter((l) => l.enabled);
        for (const id of appliedListeners) {
          if (!enabled.some((l) => l.id === id)) await dataPlane.stopListener(id).catch(() => {});
        }
        for (const listener of enabled) {
          await dataPlane.startListener(listener).catch((err: unknown) => {
            logger.warn(
              { err, listenerId: listener.id },
              `proxy listener "${listener.name}" could not start`,
            );
          });
        }
        appliedListeners = new Set(enabled.map((l) => l.id));
      });
    }
  });
  if (auth.setupRequired) {
    // The setup code is meant to be read from the log by the operator, once.
    logger.warn(
      `setup pending: open ${url}/ and enter the setup code ${config.setupToken ? '(from P2PSTREAM_SETUP_TOKEN)' : setupToken}`,
    );
  }

  let closing: Promise<void> | null = null;
  return {
    url,
    port: address.port,
    app,
    store,
    storeKind: opened.kind,
    replicaId,
    certificate: tls.cert,
    hub,
    metrics,
    dataPlanePort: (id) => dataPlane.boundPort(id),
    hashingStats: () => auth.hashingStats(),
    directStreams: () => directTransport.stats().client.activeStreams,
    cacheWaiting: () => dataPlane.cache?.waiting ?? 0,
    close() {
      closing ??= (async () => {
        unsubscribeStore();
        if (busLossTimer) clearTimeout(busLossTimer);
        if (presence) {
          // A replica of several stops gracefully: the others stop sending it calls for agents they
          // can reach another way, and the streams already open through its agents finish first.
          await presence.drain();
          // Calls routed here just before the others saw the draining heartbeat are still on their way.
          await new Promise((resolve) => setTimeout(resolve, DRAIN_SETTLE_MS));
          await hub.drain(config.cluster?.drainGraceMs ?? DEFAULT_DRAIN_GRACE_MS);
        }
        await hub.close();
        links?.close();
        await presence?.close();
        await app.close();
        await tlsSync;
        await certificates.close();
        directTransport.close();
        await proxySync;
        policyEngine.close();
        await dataPlane.close();
        await store.close();
        await unlockDataDir();
      })();
      return closing;
    },
  };
}

/** How long a stopping replica lets calls already routed to it arrive before it counts its streams. */
const DRAIN_SETTLE_MS = 1000;

/** How long a stopping replica waits for the streams open through its agents. */
export const DEFAULT_DRAIN_GRACE_MS = 10_000;

/** How long the cluster bus may be away before a replica stops taking agents. */
export const DEFAULT_BUS_LOSS_GRACE_MS = 3000;

/** The file in the data dir holding this replica's id. */
export const REPLICA_ID_FILE_NAME = 'replica-id';

/** This replica's id: read from the data dir, created there (12 hex digits) on first start. */
async function loadReplicaId(dataDir: string): Promise<string> {
  const file = path.join(dataDir, REPLICA_ID_FILE_NAME);
  const existing = await fs.readFile(file, 'utf8').catch(() => '');
  if (/^[A-Za-z0-9_-]{1,64}$/.test(existing.trim())) return existing.trim();
  const id = randomBytes(6).toString('hex');
  await fs.writeFile(file, `${id}\n`, { mode: 0o600 });
  return id;
}

const SECRETS_CHECK_PURPOSE = 'secrets-key-check';

/**
 * Replicas sharing a database must share `secrets.key`, or one could not open
 * what another sealed. The first replica seals a check value into the
 * instance record; a replica whose key cannot open it refuses to start.
 */
async function checkSharedSecretsKey(store: Store, secrets: SecretsBox): Promise<void> {
  const check = () => store.read().instance.secretsCheck;
  const instanceId = store.read().instance.id;
  if (!check()) {
    const sealed = secrets.seal(SECRETS_CHECK_PURPOSE, instanceId, 'p2pstream');
    await store.update((db) => {
      db.instance.secretsCheck ??= sealed;
    });
  }
  try {
    secrets.open(SECRETS_CHECK_PURPOSE, instanceId, check() ?? '');
  } catch {
    await store.close();
    throw new Error(
      'this replica’s secrets.key is not the key the shared database was sealed with: copy secrets.key from another replica into its data dir',
    );
  }
}
