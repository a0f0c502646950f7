/**
 * `GET /metrics`: Prometheus text of this instance, for an API token or a
 * session only, with public requests by listener, route and status class,
 * upstream errors, relayed requests by environment and outcome, logins,
 * agents and hub traffic, tracing, and process metrics — label values from
 * bounded sets only.
 */
import { describe, expect, it } from 'vitest';
import { createTestAgent, startTestAgent } from '../helpers/agent.js';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort } from '../helpers/processes.js';
import { type Exposition, parsePrometheus } from '../helpers/prometheus.js';
import { eventually, type Instance, registerEnvironment, startInstance } from './environment-helpers.js';
import { configureProxy, proxyClient, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

async function scrape(at: Instance): Promise<Exposition> {
  const res = await at.server.request('GET', '/metrics', { token: at.token });
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
  return parsePrometheus(res.text);
}

describe('GET /metrics', () => {
  it('answers only an API token or a session, never relayed, and includes process metrics', async () => {
    const control = await instance();
    const anonymous = await control.server.request('GET', '/metrics');
    expect(anonymous.status).toBe(401);
    expect(anonymous.json.error.code).toBe('UNAUTHENTICATED');
    const bySession = await control.server.request('GET', '/metrics', { cookie: control.cookie });
    expect(bySession.status).toBe(200);
    const metrics = await scrape(control);
    expect(metrics.value('process_cpu_user_seconds_total')).toBeGreaterThan(0);
    expect(metrics.types.get('nodejs_eventloop_lag_seconds')).toBe('gauge');
    expect(metrics.value('p2pstream_agents_connected')).toBe(0);
    // Local whatever the selection: an environment header does not relay it.
    const selected = await control.server.request('GET', '/metrics', {
      token: control.token,
      headers: { 'x-p2pstream-environment': 'no-such-environment' },
    });
    expect(selected.status).toBe(200);
  });

  it('counts public requests by listener, route and status class, with latency and upstream errors', async () => {
    const control = await instance();
    const upstream = await startUpstream((_req, res) => res.end('ok'));
    cleanups.push(() => upstream.close());
    const client = proxyClient();
    cleanups.push(() => client.close());
    const good = await configureProxy(control.server, control.token, { type: 'upstream', url: upstream.url });
    const dead = await configureProxy(control.server, control.token, {
      type: 'upstream',
      url: `http://127.0.0.1:${await freePort()}`,
    });
    for (let i = 0; i < 3; i++) expect((await client.send(good.port, `/page/${i}`)).status).toBe(200);
    expect((await client.send(dead.port, '/')).status).toBe(502);

    const metrics = await scrape(control);
    const ok = { listener: good.listenerId, route: good.routeId };
    expect(metrics.value('p2pstream_public_requests_total', { ...ok, status_class: '2xx' })).toBe(3);
    expect(metrics.value('p2pstream_public_request_duration_seconds_count', ok)).toBe(3);
    expect(metrics.value('p2pstream_public_request_duration_seconds_bucket', { ...ok, le: '+Inf' })).toBe(3);
    const failed = { listener: dead.listenerId, route: dead.routeId };
    expect(metrics.value('p2pstream_public_requests_total', { ...failed, status_class: '5xx' })).toBe(1);
    expect(metrics.value('p2pstream_upstream_errors_total', { ...failed, kind: 'upstream_refused' })).toBe(1);
    expect(metrics.types.get('p2pstream_public_request_duration_seconds')).toBe('histogram');
    // Paths never become labels.
    expect(metrics.samples.some((s) => Object.values(s.labels).some((v) => v.includes('/page')))).toBe(false);
  });

  it('counts logins by outcome', async () => {
    const control = await instance();
    const wrong = await control.server.request('POST', '/api/v1/auth/login', {
      body: { username: 'admin', password: 'not the password at all' },
    });
    expect(wrong.status).toBe(401);
    const metrics = await scrape(control);
    expect(metrics.value('p2pstream_login_attempts_total', { outcome: 'invalid' })).toBe(1);
    expect(metrics.value('p2pstream_login_attempts_total', { outcome: 'throttled' })).toBeUndefined();
  });

  it('counts relayed requests by environment and outcome, and agents with their hub traffic', async () => {
    const control = await instance();
    const target = await instance();
    const credentials = await createTestAgent(control.server, control.cookie, 'edge');
    const agent = startTestAgent(control.server, credentials);
    cleanups.push(() => agent.close());
    await agent.connected();
    await eventually(() => control.server.server.hub.isConnected(credentials.id));
    const accessToken = await target.server.createToken(target.cookie, 'control-plane');
    const id = await registerEnvironment(
      control,
      { url: target.server.url, accessToken },
      { transport: 'agent', agentId: credentials.id },
    );
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: { 'x-p2pstream-environment': id },
    });
    expect(relayed.status).toBe(200);
    const unknown = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: { 'x-p2pstream-environment': 'made-up-id' },
    });
    expect(unknown.json.error.code).toBe('ENVIRONMENT_NOT_FOUND');

    const metrics = await scrape(control);
    expect(metrics.value('p2pstream_relayed_requests_total', { environment: id, outcome: 'complete' })).toBe(
      1,
    );
    expect(metrics.value('p2pstream_relayed_request_duration_seconds_count', { environment: id })).toBe(1);
    expect(
      metrics.value('p2pstream_relayed_requests_total', {
        environment: 'unknown',
        outcome: 'ENVIRONMENT_NOT_FOUND',
      }),
    ).toBe(1);
    expect(metrics.samples.some((s) => s.labels.environment === 'made-up-id')).toBe(false);
    expect(metrics.value('p2pstream_agents_connected')).toBe(1);
    expect(metrics.value('p2pstream_hub_streams_active')).toBe(0);
    expect(metrics.value('p2pstream_hub_bytes_total', { direction: 'in' })).toBeGreaterThan(0);
    expect(metrics.value('p2pstream_hub_bytes_total', { direction: 'out' })).toBeGreaterThan(0);
    expect(metrics.types.get('p2pstream_hub_bytes_total')).toBe('counter');
  });
});
