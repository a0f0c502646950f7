/**
 * The `acme` slot of the pipeline (docs/tls.md, docs/pipeline.md): before
 * routing, a request for `/.well-known/acme-challenge/TOKEN` whose token
 * belongs to a pending HTTP-01 order gets the key authorization (traced as
 * `{stage: "acme", rule: "http-01", action: "answer"}`); then, on an http
 * listener with `redirectHttps`, every other request gets a 308 to the same URL
 * on https. Installed only while a challenge is pending or a listener
 * redirects, so it costs nothing otherwise. An unknown token continues to
 * routing (another ACME client behind the proxy may own it).
 */
import { CONTINUE, type Stage, type StageAnswer } from './pipeline.js';

export const ACME_CHALLENGE_PREFIX = '/.well-known/acme-challenge/';

export interface AcmeStageOptions {
  /** The key authorization of a pending HTTP-01 token, or null. */
  http01(token: string): string | null;
  /**
   * For an http listener with `redirectHttps`: the https port to redirect to
   * (null = the default, 443); undefined when the listener does not redirect.
   */
  redirectPort(listenerId: string): number | null | undefined;
}

const OCTETS = ['content-type', 'application/octet-stream', 'cache-control', 'no-store'];

export function createAcmeStage(options: AcmeStageOptions): Stage {
  return {
    slot: 'acme',
    decide(request) {
      if (request.path.startsWith(ACME_CHALLENGE_PREFIX)) {
        const answer = options.http01(request.path.slice(ACME_CHALLENGE_PREFIX.length));
        if (answer !== null) {
          request.recordDecision('acme', 'http-01', 'answer');
          return { status: 200, headers: OCTETS, body: answer } satisfies StageAnswer;
        }
      }
      if (request.listener.secure || request.host === null) return CONTINUE;
      const port = options.redirectPort(request.listener.id);
      if (port === undefined) return CONTINUE;
      const suffix = port === null || port === 443 ? '' : `:${port}`;
      const host =
        request.host.includes(':') && !request.host.startsWith('[') ? `[${request.host}]` : request.host;
      const location = `https://${host}${suffix}${request.path}${request.query === '' ? '' : `?${request.query}`}`;
      return { status: 308, headers: ['location', location] };
    },
  };
}
