/**
 * DirectTransport: the control plane reaches targets itself. A RelayClient
 * wired back to back to an in-process EnvelopeExecutor: the same envelopes
 * as through an agent, passed as objects instead of bytes. Delivery is
 * asynchronous (a microtask per envelope, in order), as over a socket, so
 * neither side re-enters the other.
 */
import { AppError } from '../errors.js';
import type { Logger } from '../logger.js';
import { EnvelopeExecutor, type ExecutorStats } from './envelope-executor.js';
import { RelayClient, type RelayClientStats } from './relay-client.js';
import type { Resolver } from './target-policy.js';
import type { DiscoverOptions, DiscoverResult, RelayRequest, RelayResponse, Transport } from './transport.js';

/** Options of {@link createDirectTransport}; every field has a default. */
export interface DirectTransportOptions {
  /** `host:port` patterns the control plane may reach; absent = any. */
  allowedTargets?: readonly string[] | null | undefined;
  /** Resolves names that only an address range allows; default dns.lookup (tests replace it). */
  resolver?: Resolver | undefined;
  /** Concurrent requests; default 256. */
  maxStreams?: number | undefined;
  /** Response window per request; default 256 KiB. */
  windowBytes?: number | undefined;
  logger?: Pick<Logger, 'debug' | 'warn'> | undefined;
}

/** A Transport running the executor in-process, with close() and counters. */
export interface DirectTransport extends Transport {
  /** Fails every in-flight call with CANCELLED, closes every target connection; later calls reject. Idempotent. */
  close(): void;
  stats(): { client: RelayClientStats; executor: ExecutorStats };
}

/** Creates a DirectTransport. Throws VALIDATION_FAILED for a malformed `allowedTargets` pattern. */
export function createDirectTransport(options: DirectTransportOptions = {}): DirectTransport {
  let closed = false;
  // One microtask per envelope, in order: asynchronous like a socket, without its latency.
  const post = (deliver: () => void) => {
    if (closed) return;
    queueMicrotask(() => {
      if (!closed) deliver();
    });
  };
  const executor: EnvelopeExecutor = new EnvelopeExecutor({
    send: (envelope) => post(() => relay.receive(envelope)),
    allowedTargets: options.allowedTargets,
    resolver: options.resolver,
    logger: options.logger,
    maxStreams: options.maxStreams,
  });
  const relay: RelayClient = new RelayClient({
    send: (envelope) => post(() => executor.receive(envelope)),
    maxStreams: options.maxStreams,
    windowBytes: options.windowBytes,
    logger: options.logger,
  });
  const refuse = () => new AppError('CANCELLED', 'the direct transport is closed');
  return {
    discover(request: DiscoverOptions): Promise<DiscoverResult> {
      return closed ? Promise.reject(refuse()) : relay.discover(request);
    },
    request(request: RelayRequest): Promise<RelayResponse> {
      return closed ? Promise.reject(refuse()) : relay.request(request);
    },
    close() {
      if (closed) return;
      closed = true;
      relay.failAll('CANCELLED', 'the direct transport is closed');
      executor.close();
    },
    stats: () => ({ client: relay.stats(), executor: executor.stats() }),
  };
}
