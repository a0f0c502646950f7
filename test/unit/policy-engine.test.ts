import { createHash } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { fullBucket, reserveBytes } from '../../src/dataplane/byte-shaper.js';
import { ChallengeSigner, leadingZeroBits } from '../../src/dataplane/challenge.js';
import { CONTINUE, type PipelineRequest, type Stage, type StageSlot } from '../../src/dataplane/pipeline.js';
import { PolicyEngine } from '../../src/dataplane/policy-engine.js';
import { consume, KeyStore, type LimitSpec } from '../../src/dataplane/rate-limiter.js';
import { compileExpression } from '../../src/domain/policy-expression.js';
import { createLogger } from '../../src/logger.js';
import type { WafRuleRecord } from '../../src/storage/schema.js';

const fixed: LimitSpec = { algorithm: 'fixed_window', limit: 3, windowMs: 10_000, ratePerMs: 0 };
const sliding: LimitSpec = { algorithm: 'sliding_window', limit: 10, windowMs: 10_000, ratePerMs: 0 };
const bucket: LimitSpec = { algorithm: 'token_bucket', limit: 5, windowMs: 5000, ratePerMs: 1 / 1000 };

function allowedCount(store: KeyStore, spec: LimitSpec, at: number, n: number): number {
  let allowed = 0;
  for (let i = 0; i < n; i++) if (consume(store, 'k', spec, at).allowed) allowed++;
  return allowed;
}

describe('rate-limit algorithms', () => {
  it('fixed window: the limit per aligned window, then a fresh window', () => {
    const store = new KeyStore();
    expect(allowedCount(store, fixed, 1000, 5)).toBe(3);
    const refused = consume(store, 'k', fixed, 4000);
    expect(refused).toMatchObject({ allowed: false, remaining: 0, retryAfterSeconds: 6 });
    expect(allowedCount(store, fixed, 10_000, 5)).toBe(3);
  });

  it('sliding window: the previous window still counts, weighted by its overlap', () => {
    const store = new KeyStore();
    expect(allowedCount(store, sliding, 9000, 10)).toBe(10);
    // At 12 s, 80 % of the previous window overlaps: 8 count, so 2 more fit.
    expect(allowedCount(store, sliding, 12_000, 5)).toBe(2);
    const refused = consume(store, 'k', sliding, 12_000);
    expect(refused.allowed).toBe(false);
    expect(refused.retryAfterSeconds).toBeGreaterThanOrEqual(1);
    // At 19.9 s almost nothing overlaps: the two of this window plus ~0.1 of the old.
    expect(allowedCount(store, sliding, 19_900, 10)).toBe(7);
  });

  it('token bucket: a burst, then the refill rate', () => {
    const store = new KeyStore();
    expect(allowedCount(store, bucket, 0, 10)).toBe(5);
    expect(consume(store, 'k', bucket, 0)).toMatchObject({ allowed: false, retryAfterSeconds: 1 });
    expect(allowedCount(store, bucket, 2000, 10)).toBe(2);
    expect(allowedCount(store, bucket, 100_000, 10)).toBe(5);
  });

  it('dry runs count nothing', () => {
    const store = new KeyStore();
    for (let i = 0; i < 10; i++) expect(consume(store, 'k', fixed, 0, true).allowed).toBe(true);
    expect(store.size).toBe(0);
    expect(allowedCount(store, fixed, 0, 5)).toBe(3);
  });

  it('holds at most its cap of keys under a flood of 1,000,000 distinct keys, in bounded memory', () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const cap = 100_000;
    const store = new KeyStore(cap);
    const fill = (from: number, to: number) => {
      for (let i = from; i < to; i++) consume(store, `rule\u0001\u0000198.51.${i}`, fixed, 1000);
    };
    fill(0, cap);
    gc();
    const atCap = process.memoryUsage().heapUsed;
    fill(cap, 1_000_000);
    gc();
    const after = process.memoryUsage().heapUsed;
    expect(store.size).toBeLessThanOrEqual(cap);
    expect(store.size + store.evicted).toBe(1_000_000);
    // Nine times as many keys went through, yet the heap holds what the cap holds (± 16 MiB of noise).
    expect(after - atCap).toBeLessThan(16 * 1024 * 1024);
    // The newest keys are kept, the oldest dropped.
    expect(store.peek('rule\u0001\u0000198.51.999999')).not.toBeNull();
    expect(store.peek('rule\u0001\u0000198.51.0')).toBeNull();
  });
});

describe('byte buckets', () => {
  it('lets a burst through, then delays by the rate, in arrival order', () => {
    const state = fullBucket(1000, 0);
    expect(reserveBytes(state, 1000, 1000, 1000, 0)).toBe(0);
    expect(reserveBytes(state, 500, 1000, 1000, 0)).toBe(500);
    expect(reserveBytes(state, 500, 1000, 1000, 0)).toBe(1000);
    expect(reserveBytes(state, 100, 1000, 1000, 5000)).toBe(0);
  });
});

describe('challenge tokens', () => {
  it('accepts solved work only for the same address, and passes only for their rule and address', () => {
    const signer = new ChallengeSigner({ difficulty: 8 });
    const token = signer.challenge('rule-1', '198.51.100.7', 0);
    let solution = 0;
    while (leadingZeroBits(createHash('sha256').update(`${token}:${solution}`).digest()) < 8) solution++;
    expect(signer.verifySolution(token, String(solution), '198.51.100.8', 0)).toBeNull();
    expect(signer.verifySolution(token, String(solution), '198.51.100.7', 11 * 60_000)).toBeNull();
    expect(signer.verifySolution(token, String(solution), '198.51.100.7', 0)).toBe('rule-1');
    const pass = signer.pass('rule-1', '198.51.100.7', 60, 0);
    expect(signer.verifyPass(pass, 'rule-1', '198.51.100.7', 59_000)).toBe(true);
    expect(signer.verifyPass(pass, 'rule-1', '198.51.100.7', 61_000)).toBe(false);
    expect(signer.verifyPass(pass, 'rule-2', '198.51.100.7', 0)).toBe(false);
    expect(signer.verifyPass(pass, 'rule-1', '198.51.100.9', 0)).toBe(false);
    expect(signer.verifyPass(token, 'rule-1', '198.51.100.7', 0)).toBe(false);
    expect(new ChallengeSigner().verifyPass(pass, 'rule-1', '198.51.100.7', 0)).toBe(false);
  });
});

describe('auto-mode WAF rules', () => {
  it('switch on after forSeconds past the rate threshold and off after the cool-down, each switch logged', () => {
    let now = 1_000_000;
    const stages = new Map<StageSlot, Stage | null>();
    const lines: string[] = [];
    const logger = createLogger('info', { write: (line: string) => void lines.push(line) });
    const engine = new PolicyEngine({
      install: (slot, stage) => stages.set(slot, stage),
      logger,
      now: () => now,
    });
    const at = new Date(0).toISOString();
    const rule: WafRuleRecord = {
      id: 'r1',
      name: 'shield',
      priority: 0,
      expression: '',
      action: 'block',
      status: 503,
      templateId: null,
      mode: 'auto',
      auto: { requestsPerSecond: 10, errorRatio: null, forSeconds: 2, coolDownSeconds: 3 },
      passTtlSeconds: 3600,
      enabled: true,
      createdAt: at,
      updatedAt: at,
    };
    engine.setPolicies({
      waf: [{ record: rule, match: compileExpression('') }],
      rateLimits: [],
      shapers: [],
    });
    const waf = stages.get('waf')!;
    const request = (): PipelineRequest =>
      ({
        method: 'GET',
        host: 'h',
        path: '/',
        query: '',
        headers: {},
        clientIp: '1.2.3.4',
        listener: { id: 'l1', name: 'public', secure: false },
        route: null,
        startedAt: now,
        notes: new Map(),
        decisions: [] as string[],
        addResponseHeader() {},
        recordDecision(_s: string, _r: string, action: string) {
          (this as unknown as { decisions: string[] }).decisions.push(action);
        },
      }) as unknown as PipelineRequest;
    const second = (requests: number) => {
      for (let i = 0; i < requests; i++) {
        const r = request();
        const decision = waf.decide(r);
        waf.complete?.({
          request: r,
          status: decision === CONTINUE ? 200 : 503,
          durationMs: 1,
          bytesIn: 0,
          bytesOut: 0,
          error: null,
        });
      }
      now += 1000;
      engine.tickAuto();
    };
    second(20);
    second(20);
    expect(waf.decide(request())).toBe(CONTINUE);
    second(20);
    expect(waf.decide(request())).not.toBe(CONTINUE);
    expect(engine.wafAutoState('r1')!.activeListeners).toEqual(['l1']);
    second(2);
    second(2);
    second(2);
    expect(waf.decide(request())).not.toBe(CONTINUE);
    second(2);
    expect(waf.decide(request())).toBe(CONTINUE);
    const state = engine.wafAutoState('r1')!;
    expect(state.activeListeners).toEqual([]);
    expect(state.switches.map((s) => s.active)).toEqual([true, false]);
    expect(lines.filter((l) => l.includes('switched')).map((l) => JSON.parse(l).active)).toEqual([
      true,
      false,
    ]);
    engine.close();
  });
});
