/**
 * The policy stages on an https listener speaking HTTP/2: the pipeline sees
 * the same request (host from `:authority`, lower-case headers) and its
 * answers and headers reach an h2 client.
 */
import { once } from 'node:events';
import { connect as http2Connect } from 'node:http2';
import { afterEach, describe, expect, it } from 'vitest';
import { DataPlane } from '../../src/dataplane/data-plane.js';
import { PolicyEngine } from '../../src/dataplane/policy-engine.js';
import { compileExpression } from '../../src/domain/policy-expression.js';
import { createLogger } from '../../src/logger.js';
import type { RateLimitRuleRecord, ShaperRecord, WafRuleRecord } from '../../src/storage/schema.js';
import { createCertificate } from '../../src/tls/certificates.js';
import { startUpstream, type Upstream } from './proxy-helpers.js';

const NOW = new Date().toISOString();
let plane: DataPlane | undefined;
let engine: PolicyEngine | undefined;
let upstream: Upstream | undefined;

afterEach(async () => {
  engine?.close();
  await plane?.close();
  await upstream?.close();
  plane = undefined;
  engine = undefined;
  upstream = undefined;
});

const common = { priority: 0, enabled: true, createdAt: NOW, updatedAt: NOW };

describe('policies over HTTP/2', () => {
  it('blocks, limits and shapes h2 requests like HTTP/1.1 ones', async () => {
    const ca = await createCertificate({ commonName: 'h2 policy CA', altNames: ['test-ca'], isCa: true });
    const cert = await createCertificate({ altNames: ['shop.test'], issuer: ca });
    upstream = await startUpstream((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/octet-stream' });
      res.end(Buffer.alloc(96 * 1024, 1));
    });
    plane = new DataPlane({ logger: createLogger('silent'), closeGraceMs: 1000 });
    const p = plane;
    engine = new PolicyEngine({
      install: (slot, stage) => p.setStage(slot, stage),
      logger: createLogger('silent'),
    });
    plane.setCertificates([
      {
        id: 'c1',
        hosts: ['shop.test'],
        certificatePem: cert.cert,
        privateKeyPem: cert.key,
        fingerprintSha256: cert.fingerprintSha256,
      },
    ]);
    await plane.start({
      listeners: [
        {
          id: 'l1',
          name: 'secure',
          bindAddress: '127.0.0.1',
          port: 0,
          enabled: true,
          protocol: 'https',
          defaultCertificateId: 'c1',
          createdAt: NOW,
          updatedAt: NOW,
        },
      ],
      routes: [
        {
          id: 'r1',
          listenerId: 'l1',
          host: null,
          pathPrefix: '/',
          priority: 0,
          target: { type: 'upstream', url: upstream.url },
          createdAt: NOW,
          updatedAt: NOW,
        },
      ],
    });
    const waf: WafRuleRecord = {
      ...common,
      id: 'w1',
      name: 'no bots on shop',
      expression: 'host == "shop.test" && listener == "secure" && headers["user-agent"] == "bot"',
      action: 'block',
      status: 403,
      templateId: null,
      mode: 'always',
      auto: null,
      passTtlSeconds: 3600,
    };
    const limit: RateLimitRuleRecord = {
      ...common,
      id: 'rl1',
      name: 'two',
      expression: '',
      key: ['host'],
      algorithm: 'fixed_window',
      limit: 2,
      windowSeconds: 3600,
      ratePerSecond: null,
      burst: null,
      status: 429,
      templateId: null,
    };
    const shaper: ShaperRecord = {
      ...common,
      id: 's1',
      name: 'slow',
      expression: '',
      key: ['ip'],
      downloadBytesPerSecond: 64 * 1024,
      uploadBytesPerSecond: null,
      burstBytes: 0,
      exemptBytes: 0,
    };
    engine.setPolicies({
      waf: [{ record: waf, match: compileExpression(waf.expression) }],
      rateLimits: [{ record: limit, match: compileExpression('') }],
      shapers: [{ record: shaper, match: compileExpression('') }],
    });
    const session = http2Connect(`https://127.0.0.1:${plane.boundPort('l1')}`, {
      ca: ca.cert,
      servername: 'shop.test',
    });
    const get = async (headers: Record<string, string> = {}) => {
      const t0 = performance.now();
      const stream = session.request({ ':path': '/item', ':authority': 'shop.test', ...headers });
      const [head] = (await once(stream, 'response')) as [Record<string, string | number>];
      let bytes = 0;
      for await (const chunk of stream) bytes += (chunk as Buffer).length;
      return { head, bytes, ms: performance.now() - t0 };
    };
    try {
      const blocked = await get({ 'user-agent': 'bot' });
      expect(blocked.head[':status']).toBe(403);
      const first = await get();
      expect(first.head[':status']).toBe(200);
      // The blocked request never reached the rate limit: this is the first of two.
      expect(first.head.ratelimit).toMatch(/^"two";r=1;t=\d+$/);
      expect(first.bytes).toBe(96 * 1024);
      // 96 KiB at 64 KiB/s with no burst: at least 1.4 s.
      expect(first.ms).toBeGreaterThanOrEqual(1400);
      expect((await get()).head.ratelimit).toMatch(/^"two";r=0;/);
      const refused = await get();
      expect(refused.head[':status']).toBe(429);
      expect(Number(refused.head['retry-after'])).toBeGreaterThan(0);
      const events = plane.recorder.recent(4);
      expect(events.map((e) => e.policy?.map((d) => `${d.stage}:${d.action}`))).toEqual([
        ['waf:block'],
        ['shaper:shape'],
        ['shaper:shape'],
        ['rate_limit:limit'],
      ]);
      expect(events[1]!.host).toBe('shop.test');
    } finally {
      session.close();
    }
  });
});
