import { describe, expect, it } from 'vitest';
import { loadAgentConfig, parseAllowedTargets } from '../../agent/config.js';
import type { AppError } from '../../src/errors.js';

const TOKEN = `p2pag_${'a'.repeat(43)}`;
const FINGERPRINT = 'ab'.repeat(32);
const BASE = {
  MANAGEMENT_URL: 'https://cp.example:8081/',
  AGENT_ID: '6f1c1f7e-8a39-4c3e-9d7e-0c4f4f0e7a11',
  AGENT_TOKEN: TOKEN,
  MANAGEMENT_FINGERPRINT: FINGERPRINT,
};

function messageOf(env: Record<string, string>, readFile?: (file: string) => string): string {
  try {
    loadAgentConfig(env, readFile);
  } catch (err) {
    expect((err as AppError).code).toBe('VALIDATION_FAILED');
    return (err as Error).message;
  }
  return 'no error';
}

describe('loadAgentConfig', () => {
  it('reads a complete configuration with a pinned fingerprint', () => {
    const config = loadAgentConfig({ ...BASE, AGENT_ALLOWED_TARGETS: 'app.lan:8081, *.internal:*' });
    expect(config).toEqual({
      managementUrl: 'https://cp.example:8081',
      managementUrls: ['https://cp.example:8081'],
      agentId: BASE.AGENT_ID,
      agentToken: TOKEN,
      ca: null,
      fingerprint: FINGERPRINT.toUpperCase().match(/.{2}/g)!.join(':'),
      allowedTargets: ['app.lan:8081', '*.internal:*'],
      logLevel: 'info',
      reconcileIntervalMs: 60_000,
    });
  });

  it('reads AGENT_RECONCILE_SECONDS: whole seconds from 1 to a day, or 0 for none', () => {
    expect(loadAgentConfig({ ...BASE, AGENT_RECONCILE_SECONDS: '15' }).reconcileIntervalMs).toBe(15_000);
    expect(loadAgentConfig({ ...BASE, AGENT_RECONCILE_SECONDS: '0' }).reconcileIntervalMs).toBe(0);
    for (const bad of ['-1', '1.5', '86401', 'soon']) {
      expect(messageOf({ ...BASE, AGENT_RECONCILE_SECONDS: bad })).toMatch(
        /^AGENT_RECONCILE_SECONDS must be 0/,
      );
    }
  });

  it('takes several comma-separated URLs (replicas of one control plane), each checked', () => {
    const config = loadAgentConfig({
      ...BASE,
      MANAGEMENT_URL: 'https://a.example:8081/, https://b.example:8081',
    });
    expect(config.managementUrls).toEqual(['https://a.example:8081', 'https://b.example:8081']);
    expect(config.managementUrl).toBe('https://a.example:8081');
    expect(messageOf({ ...BASE, MANAGEMENT_URL: 'https://a.example, http://b.example' })).toMatch(/in clear/);
    expect(messageOf({ ...BASE, MANAGEMENT_URL: 'https://a.example,https://a.example' })).toMatch(/twice/);
  });

  it('refuses http:// with a clear message', () => {
    expect(messageOf({ ...BASE, MANAGEMENT_URL: 'http://cp.example:8081' })).toMatch(/https:\/\/.*in clear/);
  });

  it('refuses URLs with credentials, a query or another scheme', () => {
    expect(messageOf({ ...BASE, MANAGEMENT_URL: 'https://u:p@cp.example' })).toMatch(/credentials/);
    expect(messageOf({ ...BASE, MANAGEMENT_URL: 'https://cp.example/?a=1' })).toMatch(/query/);
    expect(messageOf({ ...BASE, MANAGEMENT_URL: 'wss://cp.example' })).toMatch(/https/);
    expect(messageOf({ ...BASE, MANAGEMENT_URL: '' })).toMatch(/MANAGEMENT_URL is required/);
  });

  it('requires the credentials and a well-formed agent token', () => {
    expect(messageOf({ ...BASE, AGENT_ID: '' })).toMatch(/AGENT_ID/);
    expect(messageOf({ ...BASE, AGENT_TOKEN: '' })).toMatch(/AGENT_TOKEN is required/);
    expect(messageOf({ ...BASE, AGENT_TOKEN: `p2pat_${'a'.repeat(43)}` })).toMatch(/not an agent token/);
  });

  it('requires exactly one way to verify the control plane', () => {
    const { MANAGEMENT_FINGERPRINT: _f, ...none } = BASE;
    expect(messageOf(none)).toMatch(/never connects to an unverified control plane/);
    expect(messageOf({ ...BASE, MANAGEMENT_CA_FILE: '/ca.pem' })).toMatch(/not both/);
    expect(messageOf({ ...BASE, MANAGEMENT_FINGERPRINT: 'abc' })).toMatch(/64 hex/);
  });

  it('reads the CA file', () => {
    const { MANAGEMENT_FINGERPRINT: _f, ...rest } = BASE;
    const pem = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n';
    expect(loadAgentConfig({ ...rest, MANAGEMENT_CA_FILE: '/ca.pem' }, () => pem).ca).toBe(pem);
    expect(
      messageOf({ ...rest, MANAGEMENT_CA_FILE: '/missing.pem' }, () => {
        throw new Error('ENOENT');
      }),
    ).toMatch(/cannot be read/);
    expect(messageOf({ ...rest, MANAGEMENT_CA_FILE: '/ca.pem' }, () => 'junk')).toMatch(/no PEM/);
  });

  it('parses allowed targets and refuses malformed patterns', () => {
    expect(parseAllowedTargets(null)).toBeNull();
    expect(parseAllowedTargets(' ')).toBeNull();
    expect(parseAllowedTargets('[::1]:8443 10.0.0.5:443,app.lan')).toEqual([
      '[::1]:8443',
      '10.0.0.5:443',
      'app.lan',
    ]);
    expect(() => parseAllowedTargets('app.lan:99999')).toThrow(/host\[:port\]/);
    expect(() => parseAllowedTargets('https://app.lan:443')).toThrow(/host\[:port\]/);
    expect(() => parseAllowedTargets('app..lan:443')).toThrow(/host\[:port\]/);
  });
});
