/**
 * Keeps the dependencies pointing one way (STYLE.md): http/hub → domain →
 * storage interface; transports → executor → codec; the agent uses only the
 * relay and a few leaf helpers.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const ROOT = path.resolve(import.meta.dirname, '../..');

function sourceFiles(dir: string): string[] {
  const abs = path.join(ROOT, dir);
  let entries: string[];
  try {
    entries = readdirSync(abs);
  } catch {
    return [];
  }
  return entries.flatMap((name) => {
    const rel = path.join(dir, name);
    if (statSync(path.join(ROOT, rel)).isDirectory()) return sourceFiles(rel);
    return /\.(ts|tsx)$/.test(name) && !name.endsWith('.d.ts') ? [rel] : [];
  });
}

/** Import specifiers of a file, resolved to repo-relative paths for relative ones. */
function importsOf(file: string): string[] {
  const text = readFileSync(path.join(ROOT, file), 'utf8');
  const specs = [
    ...text.matchAll(/(?:import|export)\s[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g),
  ].map((m) => (m[1] ?? m[2])!);
  return specs.map((spec) =>
    spec.startsWith('.') ? path.normalize(path.join(path.dirname(file), spec)) : spec,
  );
}

interface Rule {
  from: string;
  forbidden: RegExp;
  why: string;
}

const RULES: Rule[] = [
  {
    from: 'src/domain',
    forbidden:
      /^(fastify|@fastify\/|ws$|lowdb|undici|pg$|@nats-io\/)|^src\/(http|hub|dataplane|relay\/direct|storage\/(lowdb|postgres|open-store))/,
    why: 'domain is pure services over the Store interface',
  },
  {
    from: 'src/storage',
    forbidden: /^(fastify|@fastify\/|ws$)|^src\/(domain|http|hub|dataplane|relay)/,
    why: 'storage knows nothing above it',
  },
  {
    from: 'src/relay',
    forbidden: /^(fastify|@fastify\/|lowdb)|^src\/(domain|http|hub|storage|dataplane)/,
    why: 'the relay knows no environments or routes',
  },
  {
    from: 'src/hub',
    forbidden: /^src\/(http\/routes|dataplane|cluster|storage\/(lowdb|postgres|open-store))|^@nats-io\//,
    why: 'the hub uses the domain, not routes or the store file',
  },
  {
    from: 'src/http',
    forbidden: /^src\/storage\/(lowdb|postgres|open-store)|^lowdb|^pg$/,
    why: 'routes go through services',
  },
  {
    from: 'agent',
    forbidden: /^(fastify|@fastify\/|lowdb)|^src\/(domain|http|hub|storage|dataplane|app|server)/,
    why: 'the agent runs only the relay',
  },
];

describe('architecture', () => {
  for (const rule of RULES) {
    it(`${rule.from} imports nothing it must not (${rule.why})`, () => {
      const offences = sourceFiles(rule.from).flatMap((file) =>
        importsOf(file)
          .filter((spec) => rule.forbidden.test(spec))
          .map((spec) => `${file} → ${spec}`),
      );
      expect(offences).toEqual([]);
    });
  }

  it('finds the source files it checks', () => {
    expect(sourceFiles('src/domain').length).toBeGreaterThan(3);
    expect(importsOf('src/domain/token-service.ts')).toContain('src/storage/store.js');
  });
});
