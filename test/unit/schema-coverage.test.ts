/**
 * Replies are serialized through their schema, so a field a service returns
 * but the schema does not list would silently vanish from the API. These
 * checks fail when a domain type gains a field its reply schema lacks: at
 * type-check time for every reply type, and at run time for objects built by
 * the real services.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Static, TObject } from 'typebox';
import { afterEach, describe, expect, it } from 'vitest';
import type { Agent } from '../../src/domain/agent-service.js';
import { AgentService } from '../../src/domain/agent-service.js';
import type { User } from '../../src/domain/auth-service.js';
import type { DiscoverOutcome, Environment, TestOutcome } from '../../src/domain/environment-service.js';
import type { Overview } from '../../src/domain/overview-service.js';
import type { Listener, Route } from '../../src/domain/proxy-config-service.js';
import { ProxyConfigService } from '../../src/domain/proxy-config-service.js';
import type { SystemInfo } from '../../src/domain/system-service.js';
import type { ApiToken } from '../../src/domain/token-service.js';
import { TokenService } from '../../src/domain/token-service.js';
import type { TrafficSettingsView } from '../../src/domain/traffic-settings-service.js';
import { TrafficSettingsService } from '../../src/domain/traffic-settings-service.js';
import type { TraceEvent } from '../../src/domain/traffic-types.js';
import * as agents from '../../src/http/schemas/agents.js';
import * as auth from '../../src/http/schemas/auth.js';
import * as environments from '../../src/http/schemas/environments.js';
import * as proxy from '../../src/http/schemas/proxy.js';
import * as system from '../../src/http/schemas/system.js';
import * as tokens from '../../src/http/schemas/tokens.js';
import * as traffic from '../../src/http/schemas/traffic.js';
import { LowdbStore } from '../../src/storage/lowdb-store.js';

/** Fields of `Domain` that the schema `S` does not list. */
type Unlisted<Domain, S extends TObject> = Exclude<keyof Domain, keyof Static<S>>;

/**
 * Compiles only when the schema lists every field of the domain type; a
 * missing one makes TypeScript ask for an argument named after it.
 */
function covers<Domain>() {
  return <S extends TObject>(
    schema: S,
    ..._unlisted: [Unlisted<Domain, S>] extends [never] ? [] : [missing: Unlisted<Domain, S>]
  ): S => schema;
}

const TYPE_CHECKED = [
  covers<User>()(auth.User),
  covers<ApiToken>()(tokens.ApiToken),
  covers<Agent>()(agents.Agent),
  covers<Environment>()(environments.Environment),
  covers<DiscoverOutcome>()(environments.DiscoverReply),
  covers<TestOutcome>()(environments.TestReply),
  covers<Listener>()(proxy.Listener),
  covers<Route>()(proxy.ProxyRoute),
  covers<TraceEvent>()(traffic.TraceEvent),
  covers<TrafficSettingsView>()(traffic.TrafficSettings),
  covers<Overview>()(traffic.Overview),
  covers<SystemInfo>()(system.SystemInfo),
];

let dir: string | undefined;
afterEach(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
  dir = undefined;
});

const unlisted = (value: object, schema: TObject) =>
  Object.keys(value).filter((key) => !Object.hasOwn(schema.properties, key));

describe('reply schemas', () => {
  it('list every field the services return', async () => {
    expect(TYPE_CHECKED.every((schema) => schema.type === 'object')).toBe(true);
    dir = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-coverage-'));
    const store = await LowdbStore.open(dir);
    try {
      const token = await new TokenService({ store }).create({ name: 'ci', expiresAt: null });
      expect(unlisted(token.apiToken, tokens.ApiToken)).toEqual([]);
      const agent = await new AgentService({ store }).create({ name: 'edge', labels: { site: 'a' } });
      expect(unlisted(agent.agent, agents.Agent)).toEqual([]);
      const proxyConfig = new ProxyConfigService({ store });
      const listener = await proxyConfig.createListener({ name: 'web', port: 8080, enabled: false });
      expect(unlisted(listener, proxy.Listener)).toEqual([]);
      const route = await proxyConfig.createRoute({
        listenerId: listener.id,
        target: { type: 'upstream', url: 'http://127.0.0.1:3000', timeoutMs: 5000 },
      });
      expect(unlisted(route, proxy.ProxyRoute)).toEqual([]);
      expect(unlisted(new TrafficSettingsService({ store }).view(), traffic.TrafficSettings)).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
