/**
 * Envelope codec throughput: protobuf encode+decode of request-head and
 * 16 KiB body-chunk envelopes against JSON.stringify/parse of the same content
 * with base64 bodies (the obvious alternative), in the same run.
 */
import { randomBytes } from 'node:crypto';
import { decodeEnvelope, encodeEnvelope } from '../src/relay/codec.js';
import type { Envelope } from '../src/relay/envelope.js';
import { type BenchRow, nowMs, repeat, spread } from './harness.js';

function requestHead(der: Uint8Array): Envelope {
  return {
    streamId: 41,
    payload: {
      case: 'requestHead',
      value: {
        method: 'GET',
        url: 'https://target.internal:8081/api/v1/traffic/recent?limit=100',
        headers: [
          { name: 'accept', value: 'application/json' },
          { name: 'authorization', value: `Bearer p2pat_${'x'.repeat(43)}` },
          { name: 'content-type', value: 'application/json' },
          { name: 'user-agent', value: 'p2pstream/0.1.0' },
          { name: 'x-request-id', value: '7f9c2ba4-e88f-4c2d-9a4b-2f1e0d3c4b5a' },
        ],
        timeoutMs: 10_000,
        hasBody: false,
        trust: {
          fingerprintSha256: Array(32).fill('AB').join(':'),
          expectedHostname: 'target.internal',
          certificateDer: der,
        },
        initialWindowBytes: 256 * 1024,
      },
    },
  };
}

function bodyChunk(data: Uint8Array): Envelope {
  return { streamId: 41, payload: { case: 'bodyChunk', value: { data } } };
}

/** JSON form of an envelope: bytes fields as base64, as a JSON protocol would carry them. */
function toJson(envelope: Envelope): string {
  return JSON.stringify(base64Bytes(envelope));
}

// Buffer#toJSON would turn bytes into arrays of numbers; a JSON protocol would send base64.
function base64Bytes(value: unknown): unknown {
  if (value instanceof Uint8Array) {
    return Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64');
  }
  if (Array.isArray(value)) return value.map(base64Bytes);
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = base64Bytes(v);
    return out;
  }
  return value;
}

function fromJson(text: string, bytesKeys: ReadonlySet<string>): Envelope {
  return JSON.parse(text, (key, value: unknown) =>
    bytesKeys.has(key) && typeof value === 'string' ? Buffer.from(value, 'base64') : value,
  ) as Envelope;
}

const BYTES_KEYS = new Set(['data', 'certificateDer']);

/** Operations per second of `op` over about `budgetMs`. */
function opsPerSecond(op: () => void, budgetMs: number): number {
  let n = 0;
  const start = nowMs();
  let elapsed = 0;
  while (elapsed < budgetMs) {
    for (let i = 0; i < 200; i++) op();
    n += 200;
    elapsed = nowMs() - start;
  }
  return (n / elapsed) * 1000;
}

export interface CodecBenchOptions {
  budgetMs?: number;
  repetitions?: number;
}

/** Ratio rows: protobuf ops/s ÷ JSON ops/s for heads and 16 KiB chunks. */
export async function benchCodec(options: CodecBenchOptions = {}): Promise<BenchRow[]> {
  const budgetMs = options.budgetMs ?? 400;
  const der = randomBytes(420);
  const cases = [
    { name: 'request head', envelope: requestHead(der), goal: 1.5 },
    { name: '16 KiB body chunk', envelope: bodyChunk(randomBytes(16 * 1024)), goal: 5 },
  ];
  const rows: BenchRow[] = [];
  for (const c of cases) {
    let sink = 0;
    const proto = () => {
      sink += decodeEnvelope(encodeEnvelope(c.envelope)).streamId;
    };
    const json = () => {
      sink += fromJson(toJson(c.envelope), BYTES_KEYS).streamId;
    };
    const results = await repeat(
      async () => {
        const p = opsPerSecond(proto, budgetMs);
        const j = opsPerSecond(json, budgetMs);
        return { p, j, ratio: p / j };
      },
      { warmup: 1, repetitions: options.repetitions ?? 3 },
    );
    if (sink === 0) throw new Error('codec benchmark did no work');
    const ratio = spread(results.map((r) => r.ratio));
    rows.push({
      group: 'codec',
      metric: `${c.name}: protobuf ÷ JSON+base64 (encode+decode/s)`,
      value: ratio,
      unit: '×',
      goal: `≥ ${c.goal}`,
      met: ratio.median >= c.goal,
      note: `protobuf ${Math.round(spread(results.map((r) => r.p)).median)}/s, JSON ${Math.round(spread(results.map((r) => r.j)).median)}/s`,
    });
  }
  return rows;
}
