/**
 * A relayed event stream: the target's traffic stream selected through the
 * control plane arrives event by event (nothing sits in a buffer), and
 * closing it on the caller's side ends the target's subscription.
 */
import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { eventually, type Instance, registerEnvironment, startInstance } from './environment-helpers.js';
import { configureProxy, openSse, proxyClient, type SseReader } from './proxy-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

const dataEvents = (reader: SseReader) =>
  reader.messages.filter((m) => m.event === 'message').map((m) => JSON.parse(m.data) as { path: string });

describe('relayed event stream (direct transport)', () => {
  it('delivers events one by one and cancels the remote stream when closed', async () => {
    const control = await instance();
    const target = await instance();
    const accessToken = await target.server.createToken(target.cookie, 'control-plane');
    const id = await registerEnvironment(control, { url: target.server.url, accessToken });
    const { port } = await configureProxy(target.server, target.token, {
      type: 'static',
      status: 200,
      contentType: 'text/plain',
      body: 'ok',
    });
    const client = proxyClient();
    cleanups.push(() => client.close());
    const subscribers = async () =>
      (await target.server.request('GET', '/api/v1/traffic/settings', { token: target.token })).json
        .subscribers as number;

    const reader = await openSse(control.server, `/api/v1/traffic/stream?environment=${id}`, control.token);
    cleanups.push(async () => reader.close());
    expect(reader.status).toBe(200);
    expect(reader.headers['content-type']).toMatch(/^text\/event-stream/);
    expect(reader.headers['set-cookie']).toBeUndefined();
    await eventually(async () => (await subscribers()) === 1);
    // Nothing local: the control plane's own tracer has no subscriber.
    const local = await control.server.request('GET', '/api/v1/traffic/settings', { token: control.token });
    expect(local.json.subscribers).toBe(0);

    // Each event arrives while the stream stays open, before the next one exists.
    for (const path of ['/first', '/second', '/third']) {
      await client.send(port, path);
      await reader.until(() => dataEvents(reader).some((e) => e.path === path));
    }
    expect(dataEvents(reader).map((e) => e.path)).toEqual(['/first', '/second', '/third']);

    reader.close();
    await reader.ended;
    await eventually(async () => (await subscribers()) === 0);
  });
});
