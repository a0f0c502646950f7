/**
 * An impostor takes over a trusted environment's port with another
 * certificate: the relayed call is refused with CERTIFICATE_CHANGED inside
 * the TLS handshake, the environment moves to CHANGED on disk at once, and
 * the impostor never receives an application byte (so never the token).
 */
import { readFile, rm } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { useCleanups } from '../helpers/cleanup.js';
import { startTestServer } from '../helpers/server.js';
import {
  discoverAndTrust,
  fingerprintOf,
  type Instance,
  registerEnvironment,
  startImpostor,
  startInstance,
} from './environment-helpers.js';

const cleanups = useCleanups();

const instance = (options: Parameters<typeof startInstance>[0] = {}): Promise<Instance> =>
  startInstance(options, cleanups);

describe('impostor on a trusted environment (direct transport)', () => {
  it('refuses it with CERTIFICATE_CHANGED, persists CHANGED and sends it nothing', async () => {
    const control = await instance({ keepDataDir: true });
    const target = await instance();
    const accessToken = await target.server.createToken(target.cookie, 'control-plane');
    const id = await registerEnvironment(control, { url: target.server.url, accessToken });
    const trustedFingerprint = fingerprintOf(target.server);
    const selected = { 'x-p2pstream-environment': id };
    expect(
      (await control.server.request('GET', '/api/v1/tokens', { token: control.token, headers: selected }))
        .status,
    ).toBe(200);

    // The target goes away; an impostor with a fresh certificate (valid for 127.0.0.1 too) takes its port.
    const port = target.server.server.port;
    await target.server.close();
    const impostor = await startImpostor(port);
    cleanups.push(() => impostor.close());

    const refused = await control.server.request('POST', '/api/v1/tokens', {
      token: control.token,
      headers: selected,
      body: { name: 'must-not-arrive' },
    });
    expect([refused.status, refused.json.error.code]).toEqual([412, 'CERTIFICATE_CHANGED']);
    expect(impostor.connections).toBeGreaterThan(0);
    expect(impostor.receivedBytes).toBe(0);

    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment).toMatchObject({
      trustState: 'CHANGED',
      certificate: { fingerprintSha256: trustedFingerprint },
      discoveredCertificate: { fingerprintSha256: impostor.fingerprintSha256 },
      lastError: { code: 'CERTIFICATE_CHANGED' },
    });

    // From now on the call is refused before anything leaves the process.
    const connections = impostor.connections;
    const again = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(again.json.error.code).toBe('CERTIFICATE_CHANGED');
    const tested = await control.server.request('POST', `/api/v1/environments/${id}/test`, {
      token: control.token,
    });
    expect(tested.json.error.code).toBe('CERTIFICATE_CHANGED');
    expect(impostor.connections).toBe(connections);
    expect(impostor.receivedBytes).toBe(0);

    // Persisted: on disk, and after a restart of the control plane.
    await control.server.server.store.flush();
    const stored = JSON.parse(await readFile(path.join(control.server.dataDir, 'p2pstream.json'), 'utf8'));
    const record = stored.environments.find((e: { id: string }) => e.id === id);
    expect(record.discoveredCertificate.fingerprintSha256).toBe(impostor.fingerprintSha256);
    expect(record.certificate.fingerprintSha256).toBe(trustedFingerprint);
    await control.server.close();
    const restarted = await startTestServer({ dataDir: control.server.dataDir });
    cleanups.push(() => rm(control.server.dataDir, { recursive: true, force: true }));
    cleanups.push(() => restarted.close());
    const afterRestart = await restarted.request('GET', `/api/v1/environments/${id}`, {
      token: control.token,
    });
    expect(afterRestart.json.environment.trustState).toBe('CHANGED');
    const stillRefused = await restarted.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(stillRefused.json.error.code).toBe('CERTIFICATE_CHANGED');
    expect(impostor.receivedBytes).toBe(0);
  });

  it('takes the new certificate after a planned rotation: discover, review, trust', async () => {
    const control = await instance();
    const target = await instance();
    const accessToken = await target.server.createToken(target.cookie, 'control-plane');
    const id = await registerEnvironment(control, { url: target.server.url, accessToken });
    const selected = { 'x-p2pstream-environment': id };

    // Rotation stand-in: the port now presents another certificate.
    const port = target.server.server.port;
    await target.server.close();
    const rotated = await startImpostor(port);
    cleanups.push(() => rotated.close());
    const discovered = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
      token: control.token,
    });
    expect(discovered.json).toMatchObject({
      trustState: 'CHANGED',
      certificate: { fingerprintSha256: rotated.fingerprintSha256 },
    });
    const blocked = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(blocked.json.error.code).toBe('CERTIFICATE_CHANGED');
    expect(rotated.receivedBytes).toBe(0);
    expect(await discoverAndTrust(control, id)).toBe(rotated.fingerprintSha256);
    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment.trustState).toBe('TRUSTED');
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(relayed.json).toMatchObject({ instanceId: 'impostor' });
    expect(rotated.receivedBytes).toBeGreaterThan(0);
  });

  it('stays CHANGED when the trusted certificate comes back, until an admin trusts again', async () => {
    const control = await instance();
    const target = await instance({ keepDataDir: true });
    cleanups.push(() => rm(target.server.dataDir, { recursive: true, force: true }));
    const accessToken = await target.server.createToken(target.cookie, 'control-plane');
    const id = await registerEnvironment(control, { url: target.server.url, accessToken });
    const trustedFingerprint = fingerprintOf(target.server);
    const selected = { 'x-p2pstream-environment': id };
    const instanceId = (await target.server.request('GET', '/api/v1/system/info', { token: target.token }))
      .json.instanceId as string;

    // An impostor holds the port for a while: a call meets it and the environment reads CHANGED.
    const port = target.server.server.port;
    await target.server.close();
    const impostor = await startImpostor(port);
    const refused = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(refused.json.error.code).toBe('CERTIFICATE_CHANGED');
    await impostor.close();

    // The real target is back on its port with its own (trusted) certificate.
    const back = await startTestServer({
      dataDir: target.server.dataDir,
      env: { MANAGEMENT_PORT: String(port) },
    });
    cleanups.push(() => back.close());
    const rediscovered = await control.server.request('POST', `/api/v1/environments/${id}/discover`, {
      token: control.token,
    });
    expect(rediscovered.json).toMatchObject({
      trustState: 'CHANGED',
      certificate: { fingerprintSha256: trustedFingerprint },
    });
    const env = await control.server.request('GET', `/api/v1/environments/${id}`, { token: control.token });
    expect(env.json.environment).toMatchObject({
      trustState: 'CHANGED',
      certificate: { fingerprintSha256: trustedFingerprint },
      discoveredCertificate: { fingerprintSha256: trustedFingerprint },
    });
    const blocked = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(blocked.json.error.code).toBe('CERTIFICATE_CHANGED');

    // The admin reviews and trusts again: relayed calls flow once more.
    expect(await discoverAndTrust(control, id)).toBe(trustedFingerprint);
    const relayed = await control.server.request('GET', '/api/v1/system/info', {
      token: control.token,
      headers: selected,
    });
    expect(relayed.status).toBe(200);
    expect(relayed.json.instanceId).toBe(instanceId);
  });
});
