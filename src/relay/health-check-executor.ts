/**
 * The agent's side of health streams (capability `health`, docs/protocol.md,
 * "Health streams"): the control plane names the checks of the backend
 * members this agent serves (`health_watch`), the agent runs them in its
 * network and reports every result (`health_report`) on the same stream.
 *
 * - A later `health_watch` on the stream replaces the whole set: a check
 *   whose id and settings are unchanged keeps its schedule, the others stop
 *   or start (a new one runs at once, then every `intervalMs`).
 * - Each check runs one at a time: a run still going when the next is due
 *   skips that turn.
 * - The check itself is the tunnel executor's `probe` (allowed-targets
 *   policy, TLS handling and pools of tunnel requests); a refused target
 *   reports TARGET_NOT_ALLOWED like any other failure.
 * - `cancel` (or an error) from the control plane stops the stream's checks,
 *   as does the end of the connection.
 *
 * A check's result flipping (healthy ↔ failing) is logged here too, for
 * whoever reads the agent's log; the control plane keeps the member states.
 */
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import {
  type Envelope,
  type EnvelopeCase,
  errorEnvelope,
  type HealthCheck,
  MAX_HEALTH_CHECKS,
  MIN_HEALTH_INTERVAL_MS,
} from './envelope.js';
import type { StreamHandler } from './relay-peer.js';

/** One check's run: null when healthy, else what went wrong. Never rejects. */
export type HealthProbe = (url: string, timeoutMs: number, expectStatus: number) => Promise<string | null>;

export interface HealthCheckExecutorOptions {
  send(envelope: Envelope): void;
  probe: HealthProbe;
  logger?: Pick<Logger, 'info' | 'warn' | 'debug'> | undefined;
}

interface RunningCheck {
  readonly spec: HealthCheck;
  readonly timer: NodeJS.Timeout;
  busy: boolean;
  /** The last result's health, null before the first. */
  ok: boolean | null;
  stopped: boolean;
}

/** Runs the health checks the control plane names; see the module comment. `receive` never throws. */
export class HealthCheckExecutor implements StreamHandler {
  readonly opens: readonly EnvelopeCase[] = ['healthWatch'];
  readonly #send: (envelope: Envelope) => void;
  readonly #probe: HealthProbe;
  readonly #logger: HealthCheckExecutorOptions['logger'];
  readonly #streams = new Map<number, Map<string, RunningCheck>>();
  #closed = false;

  constructor(options: HealthCheckExecutorOptions) {
    this.#send = options.send;
    this.#probe = options.probe;
    this.#logger = options.logger;
  }

  has(streamId: number): boolean {
    return this.#streams.has(streamId);
  }

  streamIds(): Iterable<number> {
    return this.#streams.keys();
  }

  /** Checks scheduled now, over every stream. */
  get activeChecks(): number {
    let n = 0;
    for (const checks of this.#streams.values()) n += checks.size;
    return n;
  }

  reset(streamId: number, error: AppError): void {
    if (!this.#streams.has(streamId)) return;
    this.#stop(streamId);
    this.#emit(errorEnvelope(streamId, error));
  }

  /** The connection ended: every check stops; nothing is sent. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const id of [...this.#streams.keys()]) this.#stop(id);
  }

  receive(envelope: Envelope): void {
    if (this.#closed) return;
    const { streamId, payload } = envelope;
    switch (payload.case) {
      case 'healthWatch': {
        if (streamId === 0) {
          this.#emit(errorEnvelope(0, new AppError('PROTOCOL_ERROR', 'stream 0 is the connection')));
          return;
        }
        const checks = payload.value.checks ?? [];
        if (checks.length > MAX_HEALTH_CHECKS) {
          this.#stop(streamId);
          this.#emit(
            errorEnvelope(
              streamId,
              new AppError('VALIDATION_FAILED', `at most ${MAX_HEALTH_CHECKS} health checks per watch`),
            ),
          );
          return;
        }
        this.#watch(streamId, checks);
        return;
      }
      case 'cancel':
      case 'error':
        this.#stop(streamId);
        return;
      default:
        if (!this.#streams.has(streamId)) return;
        this.#stop(streamId);
        this.#emit(
          errorEnvelope(
            streamId,
            new AppError('PROTOCOL_ERROR', `${payload.case} does not belong on a health stream`),
          ),
        );
    }
  }

  #watch(streamId: number, checks: readonly HealthCheck[]): void {
    const previous = this.#streams.get(streamId) ?? new Map<string, RunningCheck>();
    const next = new Map<string, RunningCheck>();
    for (const raw of checks) {
      const spec: HealthCheck = {
        id: String(raw.id),
        url: String(raw.url),
        intervalMs: Math.max(MIN_HEALTH_INTERVAL_MS, raw.intervalMs || 0),
        timeoutMs: raw.timeoutMs ?? 0,
        expectStatus: raw.expectStatus,
      };
      const old = previous.get(spec.id);
      if (old && !next.has(spec.id) && sameCheck(old.spec, spec)) {
        next.set(spec.id, old);
        continue;
      }
      // A repeated id: the last one counts.
      const repeated = next.get(spec.id);
      if (repeated) this.#halt(repeated);
      next.set(spec.id, this.#start(streamId, spec));
    }
    for (const [id, running] of previous) if (next.get(id) !== running) this.#halt(running);
    this.#streams.set(streamId, next);
  }

  #start(streamId: number, spec: HealthCheck): RunningCheck {
    const running: RunningCheck = {
      spec,
      timer: setInterval(() => this.#run(streamId, running), spec.intervalMs),
      busy: false,
      ok: null,
      stopped: false,
    };
    running.timer.unref();
    // The first run at once: the state is known one check after the watch, not one interval.
    queueMicrotask(() => this.#run(streamId, running));
    return running;
  }

  #run(streamId: number, running: RunningCheck): void {
    if (running.stopped || running.busy) return;
    running.busy = true;
    const { spec } = running;
    void this.#probe(spec.url, spec.timeoutMs ?? 0, spec.expectStatus).then((error) => {
      running.busy = false;
      if (running.stopped || this.#closed) return;
      const ok = error === null;
      if (running.ok !== ok) {
        const log = { checkId: spec.id, url: spec.url, error };
        if (ok) this.#logger?.info(log, 'health check passing');
        else this.#logger?.warn(log, 'health check failing');
      }
      running.ok = ok;
      this.#emit({
        streamId,
        payload: {
          case: 'healthReport',
          value: { results: [{ id: spec.id, ok, ...(error === null ? {} : { error }) }] },
        },
      });
    });
  }

  #halt(running: RunningCheck): void {
    running.stopped = true;
    clearInterval(running.timer);
  }

  #stop(streamId: number): void {
    const checks = this.#streams.get(streamId);
    if (!checks) return;
    this.#streams.delete(streamId);
    for (const running of checks.values()) this.#halt(running);
  }

  #emit(envelope: Envelope): void {
    if (this.#closed) return;
    try {
      this.#send(envelope);
    } catch (err) {
      this.#logger?.debug({ err, streamId: envelope.streamId }, 'health report could not be sent');
    }
  }
}

function sameCheck(a: HealthCheck, b: HealthCheck): boolean {
  return (
    a.url === b.url &&
    a.intervalMs === b.intervalMs &&
    (a.timeoutMs ?? 0) === (b.timeoutMs ?? 0) &&
    a.expectStatus === b.expectStatus
  );
}
