/**
 * DirectTransport: the control plane reaches targets itself. Two relay peers
 * joined by an in-memory frame pipe: the control-plane side (acceptor, with
 * the RelayClient) and the executor side (initiator, with the
 * EnvelopeExecutor), running the same handshake, limits and stream
 * bookkeeping as the hub and an agent, with every envelope encoded and
 * decoded on the way. Delivery is asynchronous (a microtask per frame, in
 * order), as over a socket, so neither side re-enters the other. There is no
 * keepalive: the pipe cannot go silent, and no `batch` capability: the
 * envelopes of one turn already cross the pipe in one delivery, and packing
 * them into a batch frame would only copy them.
 */
import { AppError } from '../errors.js';
import { createLogger, type Logger } from '../logger.js';
import { VERSION } from '../version.js';
import { EnvelopeExecutor, type ExecutorStats } from './envelope-executor.js';
import { createFramePipe } from './frame-transport.js';
import { CAPABILITY, CLOSE_CODE, DEFAULT_CAPABILITIES, END_REASON } from './protocol.js';
import { RelayClient, type RelayClientStats } from './relay-client.js';
import { RelayPeer } from './relay-peer.js';
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
  logger?: Logger | undefined;
}

/** A Transport running the executor in-process, with close() and counters. */
export interface DirectTransport extends Transport {
  /** Fails every in-flight call with CANCELLED, closes every target connection; later calls reject. Idempotent. */
  close(): void;
  stats(): { client: RelayClientStats; executor: ExecutorStats };
}

const NO_CLIENT_STATS: RelayClientStats = {
  activeStreams: 0,
  bufferedBytes: 0,
  windowBytes: 0,
  largeWindowBytes: 0,
  largeWindowBudgetBytes: 0,
  largeWindowsInUse: 0,
};
const NO_EXECUTOR_STATS: ExecutorStats = {
  activeStreams: 0,
  inFlightBytes: 0,
  bufferedBytes: 0,
  peakInFlightBytes: 0,
  peakBufferedBytes: 0,
  pooledOrigins: 0,
};

/** Creates a DirectTransport. Throws VALIDATION_FAILED for a malformed `allowedTargets` pattern. */
export function createDirectTransport(options: DirectTransportOptions = {}): DirectTransport {
  const logger = options.logger ?? createLogger('silent');
  // Checked now, so a bad pattern fails at start-up rather than at the first call.
  new EnvelopeExecutor({ send: () => {}, allowedTargets: options.allowedTargets }).close();
  const [controlEnd, executorEnd] = createFramePipe();
  let client: RelayClient | null = null;
  let executor: EnvelopeExecutor | null = null;
  const capabilities = DEFAULT_CAPABILITIES.filter((c) => c !== CAPABILITY.BATCH);
  const limits = {
    ...(options.maxStreams !== undefined ? { maxStreams: options.maxStreams } : {}),
    ...(options.windowBytes !== undefined ? { initialWindowBytes: options.windowBytes } : {}),
  };
  const control = new RelayPeer({
    transport: controlEnd,
    role: 'acceptor',
    logger,
    software: VERSION,
    capabilities,
    limits,
    keepalive: { intervalMs: 0 },
    offlineCode: 'CANCELLED',
    streams: (context) => {
      client = new RelayClient({
        send: context.send,
        nextStreamId: context.nextStreamId,
        maxStreams: context.session.maxStreams,
        maxFrameBytes: context.session.sendFrameBytes,
        windowBytes: options.windowBytes,
        pinOnce: context.session.capabilities.has(CAPABILITY.PIN_ONCE),
        logger,
      });
      return [client];
    },
  });
  const executorPeer = new RelayPeer({
    transport: executorEnd,
    role: 'initiator',
    logger,
    software: VERSION,
    capabilities,
    limits,
    keepalive: { intervalMs: 0 },
    offlineCode: 'CANCELLED',
    streams: (context) => {
      executor = new EnvelopeExecutor({
        send: context.send,
        allowedTargets: options.allowedTargets,
        resolver: options.resolver,
        logger,
        maxStreams: options.maxStreams,
        maxChunkBytes: context.session.sendFrameBytes - 1024,
        defaultWindowBytes: context.session.initialWindowBytes,
      });
      return [executor];
    },
  });
  let closed = false;
  const refuse = () => new AppError('CANCELLED', 'the direct transport is closed');
  const ready = async (): Promise<RelayClient> => {
    if (closed) throw refuse();
    if (client === null) await control.whenReady;
    if (closed || client === null) throw refuse();
    return client;
  };
  return {
    async discover(request: DiscoverOptions): Promise<DiscoverResult> {
      return (await ready()).discover(request);
    },
    async request(request: RelayRequest): Promise<RelayResponse> {
      return (await ready()).request(request);
    },
    close() {
      if (closed) return;
      closed = true;
      control.close(CLOSE_CODE.GOING_AWAY, 'the direct transport is closed', END_REASON.SHUTDOWN);
      executorPeer.close(CLOSE_CODE.GOING_AWAY, 'the direct transport is closed', END_REASON.SHUTDOWN);
    },
    stats: () => ({
      client: (client as RelayClient | null)?.stats() ?? NO_CLIENT_STATS,
      executor: (executor as EnvelopeExecutor | null)?.stats() ?? NO_EXECUTOR_STATS,
    }),
  };
}
