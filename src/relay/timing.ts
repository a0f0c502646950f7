/**
 * Timing across the relay path (docs/protocol.md "Timing"): the control plane's
 * own time, the hub (agent link), the target's name resolution, connect, TLS
 * handshake and time to first byte, and the total, in milliseconds, as the
 * `Server-Timing` header of relayed responses and the environment test's
 * `timing`.
 */
import type { RelayTiming } from './transport.js';

/** A relayed request's time, in ms; a step the executor did not report is null. */
export interface PathTiming {
  /** In the control plane itself (total minus the rest). */
  cp: number;
  /** On the agent link (hub, agent connection, agent process); null for the direct transport. */
  hub: number | null;
  /** The target's name resolution (0 when a pooled connection was reused, or an IP address). */
  dns: number | null;
  /** TCP connect to the target (0 when reused). */
  connect: number | null;
  /** TLS handshake with the target (0 when reused). */
  tls: number | null;
  /** Request written to the target → its response head. */
  ttfb: number | null;
  /** The whole request, up to the response head. */
  total: number;
}

const round = (ms: number) => Math.round(Math.max(0, ms) * 10) / 10;

/**
 * Splits `totalMs` (measured by the control plane up to the response head)
 * with the transport's timing. Through the direct transport, the in-process
 * relay counts as the control plane's own time.
 */
export function pathTiming(totalMs: number, relay: RelayTiming | undefined, viaAgent: boolean): PathTiming {
  if (relay === undefined) {
    return {
      cp: round(totalMs),
      hub: null,
      dns: null,
      connect: null,
      tls: null,
      ttfb: null,
      total: round(totalMs),
    };
  }
  const upstream = relay.dns + relay.connect + relay.tls + relay.ttfb;
  const hub = viaAgent ? Math.min(relay.relay, Math.max(0, totalMs - upstream)) : 0;
  return {
    cp: round(totalMs - upstream - hub),
    hub: viaAgent ? round(hub) : null,
    dns: round(relay.dns),
    connect: round(relay.connect),
    tls: round(relay.tls),
    ttfb: round(relay.ttfb),
    total: round(totalMs),
  };
}

/** The `Server-Timing` value: `cp;dur=0.4, hub;dur=1.2, …, total;dur=5.3` (unknown steps left out). */
export function serverTimingHeader(timing: PathTiming): string {
  const parts: string[] = [];
  for (const name of ['cp', 'hub', 'dns', 'connect', 'tls', 'ttfb', 'total'] as const) {
    const value = timing[name];
    if (value !== null) parts.push(`${name};dur=${value}`);
  }
  return parts.join(', ');
}
