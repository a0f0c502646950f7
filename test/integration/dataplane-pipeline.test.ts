/**
 * The request pipeline seam: stages plugged into a real data plane on a real
 * port, in front of a real upstream.
 */
import { once } from 'node:events';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { Readable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { DataPlane } from '../../src/dataplane/data-plane.js';
import {
  type ChunkSink,
  CONTINUE,
  type PipelineRequest,
  type Stage,
  type StageDecision,
} from '../../src/dataplane/pipeline.js';
import { PolicyEngine } from '../../src/dataplane/policy-engine.js';
import { TraceRecorder } from '../../src/dataplane/trace-recorder.js';
import { compileExpression } from '../../src/domain/policy-expression.js';
import { createLogger } from '../../src/logger.js';
import type { ListenerRecord, RouteRecord } from '../../src/storage/schema.js';
import { eventually, startUpstream, type Upstream } from './proxy-helpers.js';

let plane: DataPlane | undefined;
let upstream: Upstream | undefined;

afterEach(async () => {
  await plane?.close();
  await upstream?.close();
  plane = undefined;
  upstream = undefined;
});

const AT = '2026-01-01T00:00:00.000Z';

function listener(): ListenerRecord {
  return {
    id: 'l1',
    name: 'public',
    bindAddress: '127.0.0.1',
    port: 0,
    enabled: true,
    createdAt: AT,
    updatedAt: AT,
  };
}

function route(url: string, pathPrefix = '/'): RouteRecord {
  return {
    id: `r${pathPrefix}`,
    listenerId: 'l1',
    host: null,
    pathPrefix,
    priority: 0,
    target: { type: 'upstream', url },
    createdAt: AT,
    updatedAt: AT,
  };
}

async function start(): Promise<{ plane: DataPlane; port: number; recorder: TraceRecorder }> {
  upstream = await startUpstream((req, res) => {
    if (req.url === '/big') {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(Buffer.alloc(256 * 1024, 7));
      return;
    }
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => {
      body += c;
    });
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end(`upstream saw ${req.method} ${req.url} ${body}`);
    });
  });
  const recorder = new TraceRecorder();
  plane = new DataPlane({ logger: createLogger('silent'), recorder });
  await plane.start({ listeners: [listener()], routes: [route(upstream.url)] });
  return { plane, port: plane.boundPort('l1')!, recorder };
}

async function send(
  port: number,
  path: string,
  options: { method?: string; body?: string; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: IncomingMessage['headers']; text: string }> {
  const req = httpRequest({
    host: '127.0.0.1',
    port,
    path,
    method: options.method ?? 'GET',
    headers: options.headers,
    agent: false,
  });
  req.end(options.body);
  const [res] = (await once(req, 'response')) as [IncomingMessage];
  let text = '';
  res.setEncoding('utf8');
  for await (const chunk of res) text += chunk;
  return { status: res.statusCode ?? 0, headers: res.headers, text };
}

/** The newest trace event once `count` events were recorded (the trace is written when the response closes). */
async function traced(recorder: TraceRecorder, count: number) {
  await eventually(() => recorder.latestSeq >= count);
  return recorder.recent(1)[0]!;
}

function stage(slot: Stage['slot'], decide: (r: PipelineRequest) => StageDecision | Promise<StageDecision>) {
  return { slot, decide } satisfies Stage;
}

describe('the request pipeline', () => {
  it('runs installed stages in slot order, whatever the order they were installed in', async () => {
    const { plane, port, recorder } = await start();
    const seen: string[] = [];
    plane.setStage(
      'shaper',
      stage('shaper', () => {
        seen.push('shaper');
        return CONTINUE;
      }),
    );
    plane.setStage(
      'waf',
      stage('waf', (r) => {
        seen.push(`waf saw route ${r.route?.id}`);
        r.recordDecision('waf', 'watch', 'log');
        return CONTINUE;
      }),
    );
    plane.setStage(
      'rate_limit',
      stage('rate_limit', () => {
        seen.push('rate_limit');
        return CONTINUE;
      }),
    );
    const res = await send(port, '/hello?x=1');
    expect(res.status).toBe(200);
    expect(res.text).toBe('upstream saw GET /hello?x=1 ');
    expect(seen).toEqual(['waf saw route r/', 'rate_limit', 'shaper']);
    const event = await traced(recorder, 1);
    expect(event.policy).toEqual([{ stage: 'waf', rule: 'watch', action: 'log' }]);
    expect(event.routeId).toBe('r/');
  });

  it('lets a stage answer instead of the target, with its decision and the route in the trace', async () => {
    const { plane, port, recorder } = await start();
    plane.setStage(
      'waf',
      stage('waf', (r) => {
        if (!r.path.startsWith('/admin')) return CONTINUE;
        r.recordDecision('waf', 'no-admin', 'block');
        return { status: 403, headers: ['content-type', 'text/plain'], body: 'blocked\n' };
      }),
    );
    const blocked = await send(port, '/admin/users', { method: 'POST', body: 'x'.repeat(10_000) });
    expect(blocked.status).toBe(403);
    expect(blocked.text).toBe('blocked\n');
    expect(blocked.headers['content-length']).toBe('8');
    expect(upstream!.seen).toHaveLength(0);
    const event = await traced(recorder, 1);
    expect(event).toMatchObject({
      status: 403,
      routeId: 'r/',
      bytesIn: 10_000,
      policy: [{ stage: 'waf', rule: 'no-admin', action: 'block' }],
    });
    const passed = await send(port, '/public');
    expect(passed.status).toBe(200);
    expect((await traced(recorder, 2)).policy).toBeUndefined();
  });

  it('awaits a stage that decides asynchronously, and answers 500 when one fails', async () => {
    const { plane, port, recorder } = await start();
    plane.setStage(
      'cache',
      stage('cache', async (r) => {
        // Decides on a later turn of the event loop, as a disk read would.
        await new Promise((resolve) => setImmediate(resolve));
        if (r.path === '/cached')
          return { status: 200, body: Readable.from([Buffer.from('from '), 'cache']) };
        if (r.path === '/broken') throw new Error('disk gone');
        return CONTINUE;
      }),
    );
    expect((await send(port, '/cached')).text).toBe('from cache');
    expect((await send(port, '/other')).text).toBe('upstream saw GET /other ');
    const broken = await send(port, '/broken');
    expect(broken.status).toBe(500);
    expect((await traced(recorder, 3)).error).toBe('stage_error');
  });

  it('renders a response template for a stage answer, with the values the stage gives', async () => {
    const { plane, port } = await start();
    plane.setTemplates([
      {
        id: 't1',
        name: 'blocked',
        kind: 'block',
        status: 403,
        contentType: 'text/html; charset=utf-8',
        body: '<p>{{status}} by {{ruleName}} for {{path}}</p>',
        createdAt: AT,
        updatedAt: AT,
      },
    ]);
    plane.setStage(
      'waf',
      stage('waf', () => ({ status: 451, template: { id: 't1', values: { ruleName: '<evil>' } } })),
    );
    const res = await send(port, '/x');
    expect(res.status).toBe(451);
    expect(res.headers['content-type']).toBe('text/html; charset=utf-8');
    expect(res.text).toBe('<p>451 by &lt;evil&gt; for /x</p>');
  });

  it('adds stage headers to proxied and answered responses alike', async () => {
    const { plane, port } = await start();
    plane.setStage(
      'rate_limit',
      stage('rate_limit', (r) => {
        r.addResponseHeader('ratelimit', '"default";r=9;t=1');
        return r.path === '/deny' ? { status: 429, headers: ['retry-after', '1'], body: null } : CONTINUE;
      }),
    );
    const ok = await send(port, '/x');
    expect(ok.headers.ratelimit).toBe('"default";r=9;t=1');
    const denied = await send(port, '/deny');
    expect(denied.status).toBe(429);
    expect(denied.headers.ratelimit).toBe('"default";r=9;t=1');
    expect(denied.headers['retry-after']).toBe('1');
  });

  it('passes response and request bodies through stage transforms, with backpressure', async () => {
    const { plane, port, recorder } = await start();
    let delayed = 0;
    const slowSink = (next: ChunkSink): ChunkSink => {
      // Forwards every chunk a tick later and asks the writer to wait meanwhile.
      let waiter: (() => void) | null = null;
      let pending = 0;
      return {
        write(chunk) {
          pending++;
          setImmediate(() => {
            delayed += chunk.length;
            next.write(chunk);
            pending--;
            const wake = waiter;
            waiter = null;
            wake?.();
          });
          return false;
        },
        end() {
          const finish = () => (pending === 0 ? next.end() : setImmediate(finish));
          finish();
        },
        onDrain(listener) {
          if (pending === 0) listener();
          else waiter = listener;
        },
        abort: (err) => next.abort(err),
      };
    };
    plane.setStage('shaper', {
      slot: 'shaper',
      decide: () => CONTINUE,
      response: (_r, head) => {
        head.headers.push('x-shaped', 'yes');
        return slowSink;
      },
      requestBody: () =>
        async function* (source) {
          for await (const chunk of source) yield Buffer.from(chunk.toString('utf8').toUpperCase());
        },
    });
    const big = await send(port, '/big');
    expect(big.headers['x-shaped']).toBe('yes');
    expect(big.text.length).toBe(256 * 1024);
    expect(delayed).toBe(256 * 1024);
    expect((await traced(recorder, 1)).bytesOut).toBe(256 * 1024);
    const posted = await send(port, '/echo', { method: 'POST', body: 'quiet please' });
    expect(posted.text).toBe('upstream saw POST /echo QUIET PLEASE');
  });

  it('tells complete hooks how each exchange ended', async () => {
    const { plane, port } = await start();
    const outcomes: string[] = [];
    plane.setStage('waf', {
      slot: 'waf',
      decide: (r) => (r.path === '/no' ? { status: 418, body: 'teapot' } : CONTINUE),
      complete: (done) => outcomes.push(`${done.request.path} ${done.status}`),
    });
    await send(port, '/yes');
    await send(port, '/no');
    await eventually(() => outcomes.length === 2);
    expect(outcomes).toEqual(['/yes 200', '/no 418']);
  });

  it('swaps the pipeline atomically: a request in flight keeps the stages it started with', async () => {
    const { plane, port } = await start();
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const oldWaf = stage('waf', () => CONTINUE);
    let waiting = false;
    plane.setStage(
      'cache',
      stage('cache', async (r): Promise<StageDecision> => {
        if (r.path === '/slow') {
          waiting = true;
          await gate;
        }
        return CONTINUE;
      }),
    );
    plane.setStage('waf', oldWaf);
    const slow = send(port, '/slow');
    await eventually(() => waiting);
    // A new rule set that blocks everything, and no cache stage at all.
    plane.setStage('cache', null);
    plane.setStage(
      'rate_limit',
      stage('rate_limit', () => ({ status: 429, body: 'new rules' })),
    );
    const fresh = await send(port, '/fresh');
    expect(fresh.status).toBe(429);
    release();
    const old = await send(port, '/slow').catch(() => null);
    expect(old?.status).toBe(429);
    const first = await slow;
    expect(first.status).toBe(200);
    expect(first.text).toBe('upstream saw GET /slow ');
  });

  it('answers 404 no_route from the route stage before later stages run', async () => {
    const { plane, port, recorder } = await start();
    plane.setRoutes([route(upstream!.url, '/only')]);
    let wafRan = false;
    plane.setStage(
      'waf',
      stage('waf', () => {
        wafRan = true;
        return CONTINUE;
      }),
    );
    const res = await send(port, '/elsewhere');
    expect(res.status).toBe(404);
    expect(wafRan).toBe(false);
    expect((await traced(recorder, 1)).error).toBe('no_route');
    expect(() => plane.setStage('route', null)).toThrow();
    expect(() =>
      plane.setStage(
        'waf',
        stage('cache', () => CONTINUE),
      ),
    ).toThrow();
  });

  it('shapes an answer given by an earlier stage (a cache hit), but not a refusal', async () => {
    const { plane, port, recorder } = await start();
    const engine = new PolicyEngine({
      install: (slot, st) => plane.setStage(slot, st),
      logger: createLogger('silent'),
    });
    engine.setPolicies({
      waf: [],
      rateLimits: [],
      shapers: [
        {
          record: {
            id: 's',
            name: 'slow',
            priority: 0,
            expression: '',
            key: ['ip'],
            downloadBytesPerSecond: 32 * 1024,
            uploadBytesPerSecond: null,
            burstBytes: 0,
            exemptBytes: 0,
            enabled: true,
            createdAt: AT,
            updatedAt: AT,
          },
          match: compileExpression(''),
        },
      ],
    });
    plane.setStage(
      'cache',
      stage('cache', (r) =>
        r.path === '/denied'
          ? { status: 403, body: Buffer.alloc(48 * 1024) }
          : { status: 200, body: Buffer.alloc(48 * 1024, 1) },
      ),
    );
    const t0 = performance.now();
    const hit = await send(port, '/cached');
    expect(hit.text.length).toBe(48 * 1024);
    // 48 KiB at 32 KiB/s without burst: at least 1.4 s.
    expect(performance.now() - t0).toBeGreaterThanOrEqual(1400);
    expect((await traced(recorder, 1)).policy).toEqual([{ stage: 'shaper', rule: 'slow', action: 'shape' }]);
    expect((await send(port, '/denied')).status).toBe(403);
    expect((await traced(recorder, 2)).policy).toBeUndefined();
    engine.close();
  });

  it('walks only the route stage when no policy stage is installed', async () => {
    const { plane } = await start();
    expect(plane.pipeline.stages.map((s) => s.slot)).toEqual(['route']);
    expect(plane.pipeline.responseStages).toEqual([]);
    plane.setStage(
      'waf',
      stage('waf', () => CONTINUE),
    );
    plane.setStage('waf', null);
    expect(plane.pipeline.stages.map((s) => s.slot)).toEqual(['route']);
  });
});
