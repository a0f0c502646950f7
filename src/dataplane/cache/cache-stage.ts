/**
 * The response cache as the pipeline's `cache` stage (docs/pipeline.md "The
 * cache stage").
 *
 * For a request to an upstream route that a cache rule takes:
 * - bypass (Authorization, Cookie, other methods…): `Cache-Status` is added
 *   and the request continues to the target;
 * - otherwise the stage answers it: from the store, or by asking the
 *   upstream itself (a conditional request for a stale entry, a plain one
 *   for a miss) and streaming that answer while it is stored. The answer is
 *   a stage answer with a streamed body, so later stages (shapers) still
 *   see it.
 *
 * An upstream failure with nothing stored to fall back on is answered like
 * the target's own: 502/504 with the route's (else the listener's) error
 * template. Each decision is recorded in the trace: `policy` gets
 * `{stage: "cache", rule, action}` (the result in lower case) and `cache`
 * the result.
 */
import { Readable } from 'node:stream';
import type { Dispatcher } from 'undici';
import { CACHE_NOTE, type CacheResult, UPSTREAM_MS_NOTE } from '../../domain/cache-types.js';
import {
  CONTINUE,
  type PipelineRequest,
  type Stage,
  type StageAnswer,
  type StageDecision,
} from '../pipeline.js';
import { classifyUpstreamError } from '../proxy-exchange.js';
import type { CacheClient, Origin, ResponseCache } from './response-cache.js';

export interface CacheStageOptions {
  cache: ResponseCache;
  dispatcher: Dispatcher;
  /** Upstream timeout when the route sets none. */
  defaultTimeoutMs: number;
  /** The error template of a listener, or null. */
  listenerErrorTemplate(listenerId: string): string | null;
}

/** The stage, or null when the cache is off or has no rule (an empty slot costs nothing). */
export function createCacheStage(options: CacheStageOptions): Stage | null {
  const { cache } = options;
  if (!cache.active) return null;
  return {
    slot: 'cache',
    decide(request) {
      const route = request.route;
      if (route === null || route.target.type !== 'upstream') return CONTINUE;
      const lookup = cache.lookup({
        method: request.method,
        host: request.host,
        path: request.path,
        query: request.query,
        headers: request.headers,
        routeId: route.id,
        listenerId: request.listener.id,
        listenerName: request.listener.name,
        clientIp: request.clientIp,
      });
      if (lookup === null) return CONTINUE;
      if (lookup.kind === 'bypass') {
        request.addResponseHeader('cache-status', lookup.cacheStatus);
        note(request, lookup.rule.record.name, 'BYPASS');
        return CONTINUE;
      }
      const fresh = cache.hitNow(lookup, (release) => hold(request, release));
      if (fresh !== null) {
        note(request, lookup.rule.record.name, 'HIT');
        return fresh;
      }
      const target = route.target;
      const timeout = target.timeoutMs ?? options.defaultTimeoutMs;
      const path = target.basePath + request.path + (request.query === '' ? '' : `?${request.query}`);
      const origin: Origin = async ({ method, set, drop }) => {
        const response = await options.dispatcher.request({
          origin: target.origin,
          path,
          method,
          headers: request.upstreamHeaders?.(drop, set) ?? [],
          headersTimeout: timeout,
          bodyTimeout: timeout,
        });
        // A body given up on (destroyed) reports an abort error nobody needs to hear.
        response.body.on('error', () => {});
        return { status: response.statusCode, headers: response.headers, body: response.body };
      };
      return new Promise<StageDecision>((resolve) => {
        let answered = false;
        const { client, body } = streamingClient(
          (status, headers, info) => {
            answered = true;
            note(request, lookup.rule.record.name, info.result);
            if (info.upstreamMs !== null) request.notes.set(UPSTREAM_MS_NOTE, info.upstreamMs);
            resolve({ status, headers, body });
          },
          (release) => hold(request, release),
        );
        void cache.serve(lookup, origin, client).then((outcome) => {
          if (answered) return;
          note(request, lookup.rule.record.name, outcome.result);
          resolve(failureAnswer(request, outcome.error, options));
        });
      });
    },
    complete(done) {
      const held = done.request.notes.get(HELD_NOTE) as (() => void) | (() => void)[] | undefined;
      if (held === undefined) return;
      if (typeof held === 'function') held();
      else for (const release of held) release();
    },
  };
}

/** Releases of memory-tier bodies an answer writes, called when the exchange is over. */
const HELD_NOTE = 'cache.held';

function hold(request: PipelineRequest, release: () => void): void {
  const held = request.notes.get(HELD_NOTE) as (() => void) | (() => void)[] | undefined;
  if (held === undefined) request.notes.set(HELD_NOTE, release);
  else if (typeof held === 'function') request.notes.set(HELD_NOTE, [held, release]);
  else held.push(release);
}

function note(request: PipelineRequest, rule: string, result: CacheResult): void {
  request.notes.set(CACHE_NOTE, result);
  request.recordDecision('cache', rule, result.toLowerCase());
}

/** 502/504 as the target would answer it (error template of the route, else the listener). */
function failureAnswer(request: PipelineRequest, error: unknown, options: CacheStageOptions): StageAnswer {
  const failure = classifyUpstreamError(error);
  const route = request.route;
  const templateId = route?.record.errorTemplateId ?? options.listenerErrorTemplate(request.listener.id);
  if (templateId) return { status: failure.status, template: { id: templateId }, error: failure.kind };
  return {
    status: failure.status,
    headers: ['content-type', 'text/plain; charset=utf-8'],
    body: failure.status === 504 ? 'gateway timeout\n' : 'bad gateway\n',
    error: failure.kind,
  };
}

/**
 * A cache client whose body is a readable stream: the cache's writes wait
 * while the stream's reader (the exchange, the client) does not take more,
 * and stop when it is destroyed (the client went away).
 */
function streamingClient(
  onHead: CacheClient['head'],
  onHold: CacheClient['hold'],
): { client: CacheClient; body: Readable } {
  let wake: (() => void) | null = null;
  const release = () => {
    const resume = wake;
    wake = null;
    resume?.();
  };
  const body = new Readable({
    read: release,
    destroy(err, callback) {
      release();
      callback(err);
    },
  });
  const client: CacheClient = {
    head: onHead,
    write(chunk) {
      if (body.destroyed) return Promise.resolve();
      if (body.push(chunk)) return Promise.resolve();
      return new Promise<void>((resolve) => {
        wake = resolve;
      });
    },
    end() {
      if (!body.destroyed) body.push(null);
    },
    abort(err) {
      body.destroy(err);
    },
    hold: onHold,
    get gone() {
      return body.destroyed;
    },
  };
  return { client, body };
}
