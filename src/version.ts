/** p2pstream's version, read once from package.json. */
import { readFileSync } from 'node:fs';

function readVersion(): string {
  // Works from src/ (tests) and from dist/src/ (the built bin).
  for (const candidate of ['../package.json', '../../package.json']) {
    try {
      const pkg = JSON.parse(readFileSync(new URL(candidate, import.meta.url), 'utf8')) as {
        name?: string;
        version?: string;
      };
      if (pkg.name === 'p2pstream' && typeof pkg.version === 'string') return pkg.version;
    } catch {
      // try the next location
    }
  }
  return '0.0.0';
}

export const VERSION = readVersion();
