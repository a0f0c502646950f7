import { createServer as createNetServer } from 'node:net';
import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { freePort, portAccepts } from '../helpers/processes.js';
import { startTestServer, type TestServer } from '../helpers/server.js';
import { canBind, configureProxy, proxyClient, startProxyTest, startUpstream } from './proxy-helpers.js';

const cleanups = useCleanups();

describe('proxy listeners', () => {
  it('serves as soon as created, refuses connections once disabled, and frees the port when deleted', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const port = await freePort();
    const created = await server.request('POST', '/api/v1/proxy/listeners', {
      token,
      body: { name: 'public', bindAddress: '127.0.0.1', port },
    });
    expect(created.status).toBe(201);
    expect(created.json.listener).toMatchObject({
      name: 'public',
      bindAddress: '127.0.0.1',
      port,
      enabled: true,
      running: true,
      error: null,
    });
    const id = created.json.listener.id as string;

    // Serving, without any route yet: a traced 404.
    const noRoute = await client.send(port, '/nothing');
    expect(noRoute.status).toBe(404);

    const route = await server.request('POST', '/api/v1/proxy/routes', {
      token,
      body: {
        listenerId: id,
        pathPrefix: '/',
        target: { type: 'static', status: 200, contentType: 'text/plain', body: 'hello' },
      },
    });
    expect(route.status).toBe(201);
    expect((await client.send(port, '/')).text).toBe('hello');

    const disabled = await server.request('PATCH', `/api/v1/proxy/listeners/${id}`, {
      token,
      body: { enabled: false },
    });
    expect(disabled.status).toBe(200);
    expect(disabled.json.listener).toMatchObject({ enabled: false, running: false });
    await client.close();
    const again = proxyClient(cleanups);
    expect(await portAccepts(port)).toBe(false);

    const enabled = await server.request('PATCH', `/api/v1/proxy/listeners/${id}`, {
      token,
      body: { enabled: true },
    });
    expect(enabled.json.listener.running).toBe(true);
    expect((await again.send(port, '/')).text).toBe('hello');

    const deleted = await server.request('DELETE', `/api/v1/proxy/listeners/${id}`, { token });
    expect(deleted.status).toBe(204);
    expect(await canBind(port)).toBe(true);
    const routes = await server.request('GET', '/api/v1/proxy/routes', { token });
    expect(routes.json.routes).toEqual([]);
    expect((await server.request('GET', `/api/v1/proxy/listeners/${id}`, { token })).status).toBe(404);
  });

  it('moves a listener to a new port: the new one serves, the old one is freed', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const { listenerId, port } = await configureProxy(server, token, {
      type: 'static',
      status: 200,
      contentType: 'text/plain',
      body: 'moved',
    });
    const next = await freePort();
    const res = await server.request('PATCH', `/api/v1/proxy/listeners/${listenerId}`, {
      token,
      body: { port: next },
    });
    expect(res.status).toBe(200);
    expect((await client.send(next, '/')).text).toBe('moved');
    expect(await canBind(port)).toBe(true);
  });

  it('refuses a port in use, a port configured twice, a bad address and a taken name', async () => {
    const { server, token } = await startProxyTest(cleanups);
    const post = (body: unknown) => server.request('POST', '/api/v1/proxy/listeners', { token, body });

    // In use by another process-level socket (the management listener).
    const inUse = await post({ name: 'a', bindAddress: '127.0.0.1', port: server.server.port });
    expect(inUse.status).toBe(409);
    expect(inUse.json.error).toMatchObject({ code: 'CONFLICT', field: 'port' });
    expect(inUse.json.error.message).toMatch(/in use/);

    const port = await freePort();
    expect((await post({ name: 'a', bindAddress: '127.0.0.1', port })).status).toBe(201);
    const twice = await post({ name: 'b', bindAddress: '0.0.0.0', port, enabled: false });
    expect(twice.status).toBe(409);
    expect(twice.json.error.field).toBe('port');
    const sameName = await post({ name: 'a', bindAddress: '127.0.0.1', port: await freePort() });
    expect(sameName.status).toBe(409);
    expect(sameName.json.error.field).toBe('name');

    for (const [body, field] of [
      [{ name: 'c', bindAddress: 'not-an-ip', port: 8080 }, 'bindAddress'],
      [{ name: 'c', bindAddress: '127.0.0.1', port: 0 }, 'port'],
      [{ name: 'c', bindAddress: '127.0.0.1', port: 70000 }, 'port'],
      [{ name: 'c', bindAddress: '127.0.0.1', port: '8080' }, 'port'],
      [{ name: '', bindAddress: '127.0.0.1', port: 8080 }, 'name'],
      [{ name: 'c', port: 8080, extra: true }, 'extra'],
    ] as const) {
      const res = await post(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error).toMatchObject({ code: 'VALIDATION_FAILED', field });
    }
    // An address this host does not have.
    const foreign = await post({ name: 'd', bindAddress: '192.0.2.1', port: await freePort() });
    expect(foreign.status).toBe(400);
    expect(foreign.json.error.field).toBe('bindAddress');

    const list = await server.request('GET', '/api/v1/proxy/listeners', { token });
    expect(list.json.listeners.map((l: { name: string }) => l.name)).toEqual(['a']);
  });

  it('refuses bad routes: bad URL, unknown listener, duplicate route, bad host and prefix', async () => {
    const { server, token } = await startProxyTest(cleanups);
    const { listenerId } = await configureProxy(server, token, {
      type: 'upstream',
      url: 'http://127.0.0.1:9',
    });
    const post = (body: Record<string, unknown>) =>
      server.request('POST', '/api/v1/proxy/routes', { token, body: { listenerId, ...body } });
    const cases: [Record<string, unknown>, string][] = [
      [{ target: { type: 'upstream', url: 'ftp://example.com' } }, 'target.url'],
      [{ target: { type: 'upstream', url: 'not a url' } }, 'target.url'],
      [{ target: { type: 'upstream', url: 'http://user:pw@example.com' } }, 'target.url'],
      [{ target: { type: 'upstream', url: 'http://example.com/?q=1' } }, 'target.url'],
      [{ target: { type: 'upstream', url: 'http://example.com', timeoutMs: 5 } }, 'target.timeoutMs'],
      [{ target: { type: 'redirect', location: 'javascript:alert(1)', status: 302 } }, 'target.location'],
      [{ target: { type: 'redirect', location: '/x', status: 200 } }, 'target.status'],
      [{ target: { type: 'static', status: 99, contentType: 'text/plain', body: '' } }, 'target.status'],
      [{ target: { type: 'teleport' } }, 'target.type'],
      [{ listenerId: 'nope', target: { type: 'upstream', url: 'http://example.com' } }, 'listenerId'],
      [{ host: 'bad host!', target: { type: 'upstream', url: 'http://example.com' } }, 'host'],
      [{ host: 'example.com:80', target: { type: 'upstream', url: 'http://example.com' } }, 'host'],
      [{ pathPrefix: 'no-slash', target: { type: 'upstream', url: 'http://example.com' } }, 'pathPrefix'],
      [{ pathPrefix: '/a?b', target: { type: 'upstream', url: 'http://example.com' } }, 'pathPrefix'],
      [{ priority: 1.5, target: { type: 'upstream', url: 'http://example.com' } }, 'priority'],
    ];
    for (const [body, field] of cases) {
      const res = await post(body);
      expect(res.status, JSON.stringify(body)).toBe(400);
      expect(res.json.error).toMatchObject({ code: 'VALIDATION_FAILED', field });
    }
    const ok = await post({
      host: 'API.Example.com.',
      pathPrefix: '/api',
      target: { type: 'upstream', url: 'http://example.com/base/' },
    });
    expect(ok.status).toBe(201);
    expect(ok.json.route).toMatchObject({
      host: 'api.example.com',
      pathPrefix: '/api',
      priority: 0,
      target: { type: 'upstream', url: 'http://example.com/base' },
    });
    const duplicate = await post({ host: 'api.example.com', pathPrefix: '/api', target: { type: 'static' } });
    expect(duplicate.status).toBe(409);
    expect(duplicate.json.error.code).toBe('CONFLICT');
    // Same place with another priority is a different route.
    expect(
      (await post({ host: 'api.example.com', pathPrefix: '/api', priority: 5, target: { type: 'static' } }))
        .status,
    ).toBe(201);
  });

  it('applies a route change to the next request', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const upstream = await startUpstream((req, res) => res.end(`upstream saw ${req.url}`), cleanups);
    const { routeId, port } = await configureProxy(server, token, {
      type: 'static',
      status: 200,
      contentType: 'text/plain',
      body: 'before',
    });
    expect((await client.send(port, '/x')).text).toBe('before');
    const patched = await server.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
      token,
      body: { target: { type: 'upstream', url: upstream.url } },
    });
    expect(patched.status).toBe(200);
    expect((await client.send(port, '/x?y=1')).text).toBe('upstream saw /x?y=1');
    const redirect = await server.request('PATCH', `/api/v1/proxy/routes/${routeId}`, {
      token,
      body: { target: { type: 'redirect', location: 'https://example.com/new', status: 308 } },
    });
    expect(redirect.json.route.target).toEqual({
      type: 'redirect',
      location: 'https://example.com/new',
      status: 308,
    });
    const moved = await client.send(port, '/x');
    expect(moved.status).toBe(308);
    expect(moved.headers.location).toBe('https://example.com/new');
    expect((await server.request('DELETE', `/api/v1/proxy/routes/${routeId}`, { token })).status).toBe(204);
    expect((await client.send(port, '/x')).status).toBe(404);
  });

  it('restores listeners and routes when the server restarts on the same data dir', async () => {
    const { server, token, client } = await startProxyTest(cleanups);
    const { port } = await configureProxy(server, token, {
      type: 'static',
      status: 203,
      contentType: 'text/plain',
      body: 'persisted',
    });
    expect((await client.send(port, '/')).status).toBe(203);
    await server.stop();
    await client.close();
    const again = proxyClient(cleanups);
    expect(await portAccepts(port)).toBe(false);

    const restarted = await server.restart();
    const answer = await again.send(port, '/');
    expect(answer.status).toBe(203);
    expect(answer.text).toBe('persisted');
    const list = await restarted.request('GET', '/api/v1/proxy/listeners', { token });
    expect(list.json.listeners).toHaveLength(1);
    expect(list.json.listeners[0]).toMatchObject({ port, running: true, error: null });
  });

  it('reports a listener that cannot bind at start and keeps the others serving', async () => {
    const { server: original, token, client } = await startProxyTest(cleanups);
    const first = await configureProxy(original, token, { type: 'static', body: 'one' });
    const second = await configureProxy(original, token, { type: 'static', body: 'two' });
    await original.stop();
    // Someone else takes the first port while the server is down.
    const squatter = createNetServer();
    await new Promise<void>((resolve) => squatter.listen(first.port, '127.0.0.1', resolve));
    let server: TestServer;
    try {
      server = await original.restart();
      expect((await client.send(second.port, '/')).text).toBe('two');
      const listed = await server.request('GET', `/api/v1/proxy/listeners/${first.listenerId}`, { token });
      expect(listed.json.listener).toMatchObject({ enabled: true, running: false });
      expect(listed.json.listener.error).toMatch(/in use/);
    } finally {
      await new Promise<void>((resolve) => squatter.close(() => resolve()));
    }
    // Retrying once the port is free brings it up.
    const retried = await server.request('PATCH', `/api/v1/proxy/listeners/${first.listenerId}`, {
      token,
      body: { enabled: true },
    });
    expect(retried.json.listener).toMatchObject({ running: true, error: null });
    expect((await client.send(first.port, '/')).text).toBe('one');
  });

  it('needs authentication', async () => {
    const server = await startTestServer({}, cleanups);
    await server.setupAdmin();
    const res = await server.request('GET', '/api/v1/proxy/listeners');
    expect(res.status).toBe(401);
    const post = await server.request('POST', '/api/v1/proxy/listeners', {
      body: { name: 'x', bindAddress: '127.0.0.1', port: await freePort() },
    });
    expect(post.status).toBe(401);
  });
});
