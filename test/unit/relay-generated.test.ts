import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const GENERATED = path.resolve('src/relay/generated');

describe('generated relay protobuf code', () => {
  it('matches what gen:proto produces from the committed schema', async () => {
    const out = await mkdtemp(path.join(os.tmpdir(), 'p2pstream-proto-drift-'));
    try {
      await run(process.execPath, ['scripts/gen-proto.mjs', '--out', out]);
      for (const file of ['relay.gen.js', 'relay.gen.d.ts']) {
        const committed = await readFile(path.join(GENERATED, file), 'utf8');
        const fresh = await readFile(path.join(out, file), 'utf8');
        expect(fresh, `${file} is stale: run npm run gen:proto`).toBe(committed);
      }
    } finally {
      await rm(out, { recursive: true, force: true });
    }
  });

  it('loads under plain Node ESM, without a loader', async () => {
    const script = [
      `const m = await import(${JSON.stringify(path.join(GENERATED, 'relay.gen.js'))});`,
      'const E = m.p2pstream.relay.v1.Envelope;',
      'const bytes = E.encode({ streamId: 3, end: {} }).finish();',
      'const back = E.decode(bytes);',
      'process.stdout.write(back.payload + ":" + back.streamId);',
    ].join('\n');
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script]);
    expect(stdout).toBe('end:3');
  });
});
