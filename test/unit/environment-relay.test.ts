/**
 * The environment relay's pure parts: which query parameters, request headers
 * and response headers cross, and the transport selection rules.
 */
import { describe, expect, it } from 'vitest';
import { AppError } from '../../src/errors.js';
import {
  createEnvironmentTransports,
  relayedRequestHeaders,
  relayedResponseHeaders,
  stripEnvironmentParam,
} from '../../src/http/environment-relay.js';
import { isRelayableUnknownPath, localApiSegments } from '../../src/http/unknown-api-paths.js';
import type { Transport } from '../../src/relay/transport.js';

const AGENT_ID = '0b5d1f3e-4a8b-4c2d-9e6f-1a2b3c4d5e6f';

function namedTransport(name: string): Transport & { name: string } {
  return {
    name,
    discover: async () => {
      throw new AppError('INTERNAL', name);
    },
    request: async () => {
      throw new AppError('INTERNAL', name);
    },
  };
}

describe('stripEnvironmentParam', () => {
  it('removes every environment parameter and keeps the rest byte for byte', () => {
    expect(stripEnvironmentParam('')).toBe('');
    expect(stripEnvironmentParam('environment=abc')).toBe('');
    expect(stripEnvironmentParam('limit=5&environment=abc')).toBe('limit=5');
    expect(stripEnvironmentParam('environment=abc&after=3&environment=def')).toBe('after=3');
    expect(stripEnvironmentParam('%65nvironment=abc&q=a%20b+c')).toBe('q=a%20b+c');
    expect(stripEnvironmentParam('environmentx=1&xenvironment=2')).toBe('environmentx=1&xenvironment=2');
    expect(stripEnvironmentParam('a=%E0%A4%A&environment')).toBe('a=%E0%A4%A');
  });
});

describe('relayedRequestHeaders', () => {
  it('keeps content headers and drops credentials, cookies, hop-by-hop and the selector', () => {
    const list = relayedRequestHeaders({
      accept: 'text/event-stream',
      'content-type': 'application/json',
      'last-event-id': '42',
      authorization: 'Bearer p2pat_caller',
      cookie: 'p2pstream_session=abc',
      connection: 'keep-alive, x-secret',
      'x-secret': 'hop',
      'transfer-encoding': 'chunked',
      'x-p2pstream-environment': 'abc',
      host: 'control.example',
      origin: 'https://control.example',
      'x-forwarded-for': '10.0.0.1',
    });
    expect(list).toEqual([
      ['accept', 'text/event-stream'],
      ['content-type', 'application/json'],
      ['last-event-id', '42'],
    ]);
  });
});

describe('relayedResponseHeaders', () => {
  it('drops Set-Cookie and hop-by-hop headers (also those named in Connection) and groups repeats', () => {
    expect(
      relayedResponseHeaders([
        ['Content-Type', 'text/event-stream'],
        ['set-cookie', 'a=1'],
        ['Set-Cookie', 'b=2'],
        ['connection', 'keep-alive, x-hop'],
        ['x-hop', 'gone'],
        ['keep-alive', 'timeout=5'],
        ['transfer-encoding', 'chunked'],
        ['location', 'https://elsewhere.example/'],
        ['vary', 'accept'],
        ['vary', 'origin'],
      ]),
    ).toEqual({
      'content-type': 'text/event-stream',
      location: 'https://elsewhere.example/',
      vary: ['accept', 'origin'],
      'x-content-type-options': 'nosniff',
      'content-security-policy': 'sandbox',
    });
  });
});

describe('createEnvironmentTransports', () => {
  it('gives the shared direct transport, or the hub transport of a connected agent', () => {
    const direct = namedTransport('direct');
    const viaAgent = namedTransport('agent');
    const connected = new Set<string>();
    const transports = createEnvironmentTransports({
      direct,
      hub: { isConnected: (id) => connected.has(id), transportFor: () => viaAgent },
      agentExists: (id) => id === AGENT_ID,
    });
    expect(transports.select({ transport: 'direct', agentId: null })).toBe(direct);
    expect(() => transports.select({ transport: 'agent', agentId: AGENT_ID })).toThrow(
      expect.objectContaining({ code: 'AGENT_OFFLINE' }),
    );
    expect(() => transports.select({ transport: 'agent', agentId: 'gone' })).toThrow(
      expect.objectContaining({ code: 'AGENT_NOT_FOUND' }),
    );
    connected.add(AGENT_ID);
    expect(transports.select({ transport: 'agent', agentId: AGENT_ID })).toBe(viaAgent);
  });

  it('answers AGENT_OFFLINE for agent environments when there is no hub', () => {
    const transports = createEnvironmentTransports({
      direct: namedTransport('direct'),
      agentExists: () => true,
    });
    expect(() => transports.select({ transport: 'agent', agentId: AGENT_ID })).toThrow(
      expect.objectContaining({ code: 'AGENT_OFFLINE' }),
    );
  });
});

describe('unknown API paths (version skew)', () => {
  const local = localApiSegments(
    [
      '/api/v1/setup',
      '/api/v1/auth/login',
      '/api/v1/environments/:id/trust',
      '/api/v1/agent/connect',
      '/api/v1/openapi.json',
      '/api/v1/agents/:id',
      '/api/v1/tokens',
      '/api/v1/*',
      '/assets/*',
      '/metrics',
    ],
    new Set(['/api/v1/agents/:id', '/api/v1/tokens']),
  );

  it('takes the first segments of the local API routes only', () => {
    expect([...local].sort()).toEqual(['agent', 'auth', 'environments', 'openapi.json', 'setup']);
  });

  it('relays a path under no local segment, with its query', () => {
    expect(isRelayableUnknownPath('/api/v1/insights', local)).toBe(true);
    expect(isRelayableUnknownPath('/api/v1/insights/summary?day=3', local)).toBe(true);
    expect(isRelayableUnknownPath('/api/v1/agents/x/new-view', local)).toBe(true);
  });

  it('keeps local segments, the bare prefix, other prefixes and dot segments here', () => {
    for (const path of [
      '/api/v1/environments/x/history',
      '/api/v1/auth/other',
      '/api/v1/agent',
      '/api/v1/',
      '/api/v2/insights',
      '/metrics',
      '/api/v1/insights/../environments',
      '/api/v1/insights/%2E%2e/environments',
      '/api/v1/insights/./x',
      '/api/v1/insights/a\\..\\b',
    ]) {
      expect([path, isRelayableUnknownPath(path, local)]).toEqual([path, false]);
    }
  });
});
