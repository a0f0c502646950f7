/**
 * The composition root of `p2pstream server`: opens the data dir, the store
 * and the secrets box, builds the services and the app, and listens.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import { promises as fs } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { type AppOptions, buildApp } from './app.js';
import type { ServerConfig } from './config.js';
import { DataPlane } from './dataplane/data-plane.js';
import { TraceRecorder } from './dataplane/trace-recorder.js';
import { AcmeAccountService } from './domain/acme-account-service.js';
import { AgentService } from './domain/agent-service.js';
import { AuthService } from './domain/auth-service.js';
import { CertificateService } from './domain/certificate-service.js';
import { EnvironmentService } from './domain/environment-service.js';
import { createOverviewService } from './domain/overview-service.js';
import { ProxyConfigService } from './domain/proxy-config-service.js';
import { createSystemService } from './domain/system-service.js';
import { TemplateService } from './domain/template-service.js';
import { TokenService } from './domain/token-service.js';
import { TrafficSettingsService } from './domain/traffic-settings-service.js';
import { createEnvironmentRelay, createEnvironmentTransports } from './http/environment-relay.js';
import { agentRoutes } from './http/routes/agents.js';
import { createConsolePlugin } from './http/routes/console.js';
import { createEnvironmentsPlugin } from './http/routes/environments.js';
import { createOverviewPlugin } from './http/routes/overview.js';
import { createProxyPlugin } from './http/routes/proxy.js';
import { createTemplatesPlugin } from './http/routes/templates.js';
import { createTlsPlugin } from './http/routes/tls.js';
import { createTrafficPlugin } from './http/routes/traffic.js';
import { Hub } from './hub/hub.js';
import type { Logger } from './logger.js';
import {
  publicRequestMetrics,
  registerInstanceMetrics,
  relayedRequestMetrics,
} from './metrics/instance-metrics.js';
import { MetricsRegistry } from './metrics/metrics-registry.js';
import { createDirectTransport } from './relay/direct-transport.js';
import { LowdbStore } from './storage/lowdb-store.js';
import { loadSecretsBox } from './storage/secrets-box.js';
import { createAcmeIssuer } from './tls/acme-issuer.js';
import { loadManagementCertificate } from './tls/management-certificate.js';

export interface RunningServer {
  /** `https://HOST:PORT` of the management listener. */
  url: string;
  port: number;
  app: FastifyInstance;
  store: LowdbStore;
  /** The management certificate (PEM), for clients that pin it. */
  certificate: string;
  /** The agent hub: live agents and their transports. */
  hub: Hub;
  /** This instance's metrics (`GET /metrics`). */
  metrics: MetricsRegistry;
  /** Streams open through the in-process (direct) transport (the hub counts those through agents). */
  directStreams(): number;
  /** Stops accepting, finishes in-flight requests, flushes the store. */
  close(): Promise<void>;
}

/** What a caller (a test) may add to the app beside the configuration. */
export interface StartServerOptions {
  /** Sees every route as it is added. */
  onRoute?: AppOptions['onRoute'];
}

/** Starts the management listener; logs `management listening on https://HOST:PORT`. */
export async function startServer(
  config: Readonly<ServerConfig>,
  logger: Logger,
  options: StartServerOptions = {},
): Promise<RunningServer> {
  await fs.mkdir(config.dataDir, { recursive: true, mode: 0o700 });
  const store = await LowdbStore.open(config.dataDir);
  const secrets = await loadSecretsBox(config.dataDir);
  const tls = await loadManagementCertificate({
    dataDir: config.dataDir,
    certFile: config.tlsCertFile,
    keyFile: config.tlsKeyFile,
  });
  const setupToken = config.setupToken ?? randomBytes(12).toString('base64url');
  // Every feature registers its Prometheus metrics here (src/metrics/).
  const metrics = new MetricsRegistry();
  const auth = new AuthService({ store, setupToken });
  const tokens = new TokenService({ store });
  const system = createSystemService({ store });
  const agents = new AgentService({ store });
  await agents.closeOrphanSessions();
  const hub = new Hub({ agents, logger: logger.child({ component: 'hub' }) });
  // Environments: the registry, its transports (in-process, or through the hub's agents) and the relay.
  const directTransport = createDirectTransport({ logger: logger.child({ component: 'relay' }) });
  const environments = new EnvironmentService({
    store,
    secrets,
    agentExists: (id) => agents.exists(id),
    transports: createEnvironmentTransports({
      direct: directTransport,
      hub,
      agentExists: (id) => agents.exists(id),
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
  });
  const templates = new TemplateService({ store, runtime: dataPlane });
  const proxyConfig = new ProxyConfigService({ store, runtime: dataPlane, templates });
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
  });
  const overview = createOverviewService({
    stats: dataPlane.metrics,
    listenersRunning: () => dataPlane.runningCount(),
    listenersConfigured: () => proxyConfig.listenerCount(),
    traceSubscribers: () => recorder.subscriberCount,
    agentsConnected: () => hub.connectedCount(),
  });
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
        agentRoutes({ agents, managementFingerprint: new X509Certificate(tls.cert).fingerprint256 }),
        createProxyPlugin({ proxyConfig }),
        createTemplatesPlugin({ templates }),
        createTlsPlugin({ certificates, accounts: acmeAccounts }),
        createTrafficPlugin({ settings: traffic, recorder }),
        createOverviewPlugin({ overview }),
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
    certificate: tls.cert,
    hub,
    metrics,
    directStreams: () => directTransport.stats().client.activeStreams,
    close() {
      closing ??= (async () => {
        await hub.close();
        await app.close();
        await certificates.close();
        directTransport.close();
        await dataPlane.close();
        await store.close();
      })();
      return closing;
    },
  };
}
