/**
 * Keeps the dependencies pointing one way (STYLE.md, docs/architecture.md) as
 * an allow-list: every source file of src/ and agent/ belongs to a scope, and
 * each scope names what it may import — other parts of the code and npm
 * packages (Node built-ins where `node` is true). An import outside its list
 * fails, and so does a file in no scope: a new directory is placed on purpose.
 *
 * Inside src/relay/ the list is per file: transports → executor → codec, the
 * peer under both ends.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

interface Scope {
  /** A directory (`src/domain/`) or a file (`src/app.ts`) of the repository. */
  scope: string;
  /** Repository paths (files, or directories ending in `/`) it may import. `*`: anything. */
  code: readonly string[];
  /** npm packages it may import (a name, or a scope like `@fastify/`). */
  packages: readonly string[];
  /** May import Node built-ins (`node:…`). */
  node: boolean;
  /** Imports that must be `import type` (nothing of them reaches the running code). */
  typeOnly?: readonly string[];
  why: string;
}

const LEAVES = ['src/errors.ts', 'src/logger.ts', 'src/version.ts', 'src/http-headers.ts'];

const RELAY_FILES: Record<string, readonly string[]> = {
  'envelope.ts': ['src/relay/generated/'],
  'codec.ts': ['src/relay/envelope.ts', 'src/relay/generated/'],
  'protocol.ts': ['src/relay/envelope.ts'],
  'keepalive.ts': [],
  'target-policy.ts': [],
  'transport.ts': [],
  'timing.ts': ['src/relay/transport.ts'],
  'frame-transport.ts': ['src/relay/protocol.ts'],
  'websocket-frame-transport.ts': ['src/relay/frame-transport.ts', 'src/relay/protocol.ts'],
  'relay-peer.ts': [
    'src/relay/codec.ts',
    'src/relay/envelope.ts',
    'src/relay/frame-transport.ts',
    'src/relay/keepalive.ts',
    'src/relay/protocol.ts',
  ],
  'pinned-tls.ts': ['src/relay/envelope.ts'],
  'relay-client.ts': ['src/relay/envelope.ts', 'src/relay/relay-peer.ts', 'src/relay/transport.ts'],
  'envelope-executor.ts': [
    'src/relay/envelope.ts',
    'src/relay/pinned-tls.ts',
    'src/relay/relay-peer.ts',
    'src/relay/target-policy.ts',
  ],
  'direct-transport.ts': ['src/relay/'],
  'tunnel-client.ts': ['src/relay/envelope.ts', 'src/relay/relay-peer.ts'],
  'health-watch-client.ts': ['src/relay/envelope.ts', 'src/relay/relay-peer.ts'],
  'health-check-executor.ts': ['src/relay/envelope.ts', 'src/relay/relay-peer.ts'],
  'tunnel-executor.ts': [
    'src/relay/envelope.ts',
    'src/relay/relay-peer.ts',
    'src/relay/target-policy.ts',
    'src/relay/transport.ts',
  ],
};

const SCOPES: Scope[] = [
  ...Object.entries(RELAY_FILES).map(([file, relay]) => ({
    scope: `src/relay/${file}`,
    code: [...relay, ...LEAVES, 'src/tls/certificates.ts', 'src/relay/transport.ts'],
    packages: ['ws', 'protobufjs'],
    node: true,
    why: 'the relay protocol layers: transports → executor → codec; it knows no environments or routes',
  })),
  {
    scope: 'src/relay/generated/',
    code: [],
    packages: ['protobufjs'],
    node: false,
    why: 'generated protobuf code',
  },
  {
    scope: 'agent/',
    code: ['agent/', 'src/relay/', ...LEAVES, 'src/tls/certificates.ts'],
    packages: ['ws'],
    node: true,
    why: 'the agent runs only the relay',
  },
  {
    scope: 'src/domain/',
    code: [
      'src/domain/',
      ...LEAVES,
      'src/storage/store.ts',
      'src/storage/schema.ts',
      'src/storage/secrets-box.ts',
      'src/relay/transport.ts',
      'src/relay/timing.ts',
      'src/tls/',
    ],
    packages: ['@marcbachmann/cel-js'],
    node: true,
    why: 'domain services over the Store interface: no fastify, ws, lowdb or store implementations',
  },
  {
    scope: 'src/storage/',
    code: ['src/storage/', ...LEAVES],
    packages: ['lowdb', 'pg'],
    node: true,
    why: 'storage knows nothing above it',
  },
  {
    scope: 'src/tls/',
    code: ['src/tls/', ...LEAVES, 'src/domain/tls-types.ts'],
    packages: ['@peculiar/x509', 'acme-client', 'undici'],
    node: true,
    why: 'certificates and ACME: below the domain, beside the relay',
  },
  {
    scope: 'src/dataplane/',
    code: [
      'src/dataplane/',
      ...LEAVES,
      'src/domain/',
      'src/storage/schema.ts',
      'src/tls/',
      'src/metrics/metrics-registry.ts',
    ],
    packages: ['undici', 'http-cache-semantics'],
    node: true,
    why: 'the data plane runs the saved configuration: no fastify, routes, hub or store implementations',
  },
  {
    scope: 'src/metrics/',
    code: ['src/metrics/', ...LEAVES, 'src/domain/'],
    packages: ['prom-client'],
    node: false,
    why: 'metrics read the domain; everything else reports to them',
  },
  {
    scope: 'src/cluster/',
    code: ['src/cluster/', ...LEAVES, 'src/domain/cluster-types.ts', 'src/relay/', 'src/hub/'],
    packages: ['@nats-io/'],
    node: true,
    why: 'the replica bus: presence, and relay frames between replicas',
  },
  {
    scope: 'src/hub/',
    code: ['src/hub/', ...LEAVES, 'src/domain/', 'src/relay/', 'src/http/schemas/'],
    packages: ['fastify', '@fastify/websocket', 'ws'],
    node: true,
    why: 'the hub adapts sockets to the relay peer and uses the domain, not routes or the store',
  },
  {
    scope: 'src/http/',
    code: [
      'src/http/',
      ...LEAVES,
      'src/app.ts',
      'src/config.ts',
      'src/domain/',
      'src/dataplane/',
      'src/metrics/',
      'src/relay/transport.ts',
      'src/relay/timing.ts',
      'src/storage/schema.ts',
    ],
    packages: ['fastify', '@fastify/', 'typebox', 'ajv', 'ajv-formats'],
    node: true,
    why: 'thin routes over the services: never a store implementation or the hub',
  },
  {
    scope: 'src/console/',
    code: ['src/console/', 'src/http/schemas/'],
    packages: ['preact', 'typebox'],
    node: false,
    typeOnly: ['src/http/schemas/', 'typebox'],
    why: 'the browser bundle: its own code and preact; API types from the schemas, as types only',
  },
  {
    scope: 'src/app.ts',
    code: [...LEAVES, 'src/config.ts', 'src/domain/', 'src/http/', 'src/metrics/'],
    packages: ['fastify'],
    node: false,
    why: 'buildApp assembles routes; it never listens',
  },
  { scope: 'src/config.ts', code: [...LEAVES, 'src/relay/'], packages: [], node: true, why: 'settings' },
  { scope: 'src/errors.ts', code: [], packages: [], node: false, why: 'the error table is a leaf' },
  { scope: 'src/logger.ts', code: ['src/config.ts'], packages: ['pino'], node: false, why: 'a leaf' },
  { scope: 'src/version.ts', code: [], packages: [], node: true, why: 'a leaf' },
  {
    scope: 'src/http-headers.ts',
    code: [],
    packages: [],
    node: false,
    why: 'header names shared by proxies: a leaf',
  },
  {
    scope: 'src/server.ts',
    code: ['*'],
    packages: ['*'],
    node: true,
    why: 'the composition root',
  },
  { scope: 'src/cli.ts', code: ['*'], packages: ['*'], node: true, why: 'the entry point' },
];

function sourceFiles(dir: string): string[] {
  const abs = path.join(ROOT, dir);
  return readdirSync(abs).flatMap((name) => {
    const rel = path.join(dir, name);
    if (statSync(path.join(ROOT, rel)).isDirectory()) return sourceFiles(rel);
    return /\.(ts|tsx|js)$/.test(name) && !name.endsWith('.d.ts') ? [rel] : [];
  });
}

interface Import {
  /** A repository path (`src/domain/ids.ts`) or a package specifier. */
  target: string;
  typeOnly: boolean;
}

/** The imports of a file; relative ones resolved to repository paths of their .ts source. */
function importsOf(file: string): Import[] {
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  const found = [
    ...text.matchAll(
      /(import|export)(\s+type)?\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)|^import\s+['"]([^'"]+)['"]/gm,
    ),
  ];
  return found.map((m) => {
    const spec = (m[3] ?? m[4] ?? m[5])!;
    const typeOnly = m[2] !== undefined;
    if (!spec.startsWith('.')) return { target: spec, typeOnly };
    let target = path.normalize(path.join(path.dirname(file), spec));
    target = target.replace(/\.js$/, '');
    for (const ext of ['.ts', '.tsx', '.js']) {
      try {
        if (statSync(path.join(ROOT, target + ext)).isFile()) return { target: target + ext, typeOnly };
      } catch {
        // try the next ending
      }
    }
    return { target, typeOnly };
  });
}

function scopeOf(file: string): Scope | undefined {
  return SCOPES.filter((s) => (s.scope.endsWith('/') ? file.startsWith(s.scope) : file === s.scope)).sort(
    (a, b) => b.scope.length - a.scope.length,
  )[0];
}

const matches = (target: string, allowed: string) =>
  allowed === '*' || (allowed.endsWith('/') ? target.startsWith(allowed) : target === allowed);

/** What is wrong with one import of a file in `scope`, or null. */
function offence(file: string, scope: Scope, imported: Import): string | null {
  const { target } = imported;
  const isCode = target.startsWith('src/') || target.startsWith('agent/');
  if (target.startsWith('node:')) return scope.node ? null : `${file} → ${target} (no Node built-ins here)`;
  const allowed = isCode
    ? scope.code.some((a) => matches(target, a)) || target.startsWith(scope.scope)
    : scope.packages.some(
        (p) =>
          p === '*' ||
          target === p ||
          (p.endsWith('/') && target.startsWith(p)) ||
          target.startsWith(`${p}/`),
      );
  if (!allowed) return `${file} → ${target}`;
  if (
    scope.typeOnly?.some((t) => matches(target, t) || target === t || target.startsWith(`${t}/`)) &&
    !imported.typeOnly
  )
    return `${file} → ${target} (must be \`import type\`)`;
  return null;
}

const FILES = [...sourceFiles('src'), ...sourceFiles('agent')].filter((f) => !f.endsWith('.css'));

describe('architecture', () => {
  it('places every source file in a scope', () => {
    expect(FILES.filter((file) => !scopeOf(file))).toEqual([]);
  });

  for (const scope of SCOPES) {
    it(`${scope.scope} imports only what it may (${scope.why})`, () => {
      const inScope = FILES.filter((file) => scopeOf(file) === scope);
      const offences = inScope.flatMap((file) =>
        importsOf(file)
          .map((imported) => offence(file, scope, imported))
          .filter((o): o is string => o !== null),
      );
      expect(offences).toEqual([]);
    });
  }

  it('finds the imports it checks, and refuses a wrong-way import', () => {
    expect(importsOf('src/domain/token-service.ts').map((i) => i.target)).toContain('src/storage/store.ts');
    const domain = scopeOf('src/domain/token-service.ts')!;
    expect(
      offence('src/domain/x.ts', domain, { target: 'src/storage/lowdb-store.ts', typeOnly: false }),
    ).toBe('src/domain/x.ts → src/storage/lowdb-store.ts');
    expect(offence('src/domain/x.ts', domain, { target: 'fastify', typeOnly: false })).not.toBeNull();
    const console = scopeOf('src/console/types.ts')!;
    expect(offence('src/console/a.ts', console, { target: 'typebox', typeOnly: false })).toMatch(
      /import type/,
    );
    expect(offence('src/console/a.ts', console, { target: 'typebox', typeOnly: true })).toBeNull();
    const codec = scopeOf('src/relay/codec.ts')!;
    expect(
      offence('src/relay/codec.ts', codec, { target: 'src/relay/relay-peer.ts', typeOnly: false }),
    ).not.toBeNull();
  });
});
