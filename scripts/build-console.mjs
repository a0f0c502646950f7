#!/usr/bin/env node
/**
 * Builds the web console into dist/console/: one minified ES module and one
 * stylesheet under assets/ with content hashes in their names, and an
 * index.html that loads them (no inline script or style, so the console runs
 * under a strict CSP). Deterministic: the same sources give the same bytes.
 *
 * Usage: node scripts/build-console.mjs [--out DIR]
 */
import { mkdir, readdir, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
/** Above this (gzipped, JS + CSS) the build fails: the console must stay small. */
const MAX_GZIP_BYTES = 150 * 1024;

function outDirFromArgs(argv) {
  const index = argv.indexOf('--out');
  return index >= 0 && argv[index + 1] ? path.resolve(argv[index + 1]) : path.join(ROOT, 'dist', 'console');
}

function indexHtml(script, stylesheet) {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>p2pstream console</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/assets/${stylesheet}">
<script type="module" src="/assets/${script}"></script>
</head>
<body>
<div id="app"><p class="center muted">Loading the p2pstream console…</p></div>
<noscript>The p2pstream console needs JavaScript. The management API is documented in the README.</noscript>
</body>
</html>
`;
}

/** Builds the console into `outDir`; returns the written files with their raw and gzipped sizes. */
export async function buildConsole(outDir = path.join(ROOT, 'dist', 'console')) {
  const result = await build({
    absWorkingDir: ROOT,
    entryPoints: { app: 'src/console/main.tsx' },
    bundle: true,
    minify: true,
    format: 'esm',
    target: ['es2022', 'chrome110', 'firefox115', 'safari16'],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    tsconfig: 'src/console/tsconfig.json',
    outdir: path.join(outDir, 'assets'),
    entryNames: '[name]-[hash]',
    assetNames: '[name]-[hash]',
    legalComments: 'none',
    charset: 'utf8',
    sourcemap: false,
    define: { 'process.env.NODE_ENV': '"production"' },
    write: false,
    logLevel: 'warning',
  });
  const script = result.outputFiles.find((f) => f.path.endsWith('.js'));
  const stylesheet = result.outputFiles.find((f) => f.path.endsWith('.css'));
  if (!script || !stylesheet) throw new Error('esbuild produced no script or no stylesheet');

  await mkdir(path.join(outDir, 'assets'), { recursive: true });
  const files = [
    ...result.outputFiles.map((f) => ({ path: f.path, contents: Buffer.from(f.contents) })),
    {
      path: path.join(outDir, 'index.html'),
      contents: Buffer.from(indexHtml(path.basename(script.path), path.basename(stylesheet.path))),
    },
  ];
  // Each file is replaced atomically (index.html last), so a server reading the
  // directory while another build runs never sees a half-written file.
  for (const file of files) {
    const temporary = `${file.path}.${process.pid}.tmp`;
    await writeFile(temporary, file.contents);
    await rename(temporary, file.path);
  }
  const current = new Set(files.map((f) => path.basename(f.path)));
  for (const name of await readdir(path.join(outDir, 'assets'))) {
    if (!current.has(name) && !name.endsWith('.tmp'))
      await rm(path.join(outDir, 'assets', name), { force: true });
  }
  return files.map((f) => ({
    file: path.relative(outDir, f.path),
    bytes: f.contents.length,
    gzipBytes: gzipSync(f.contents, { level: 9 }).length,
  }));
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const outDir = outDirFromArgs(process.argv.slice(2));
  const files = await buildConsole(outDir);
  let total = 0;
  for (const f of files) {
    total += f.gzipBytes;
    console.log(
      `console: ${f.file.padEnd(28)} ${String(f.bytes).padStart(8)} B  ${String(f.gzipBytes).padStart(7)} B gzip`,
    );
  }
  console.log(`console: ${'total'.padEnd(28)} ${' '.repeat(11)} ${String(total).padStart(7)} B gzip`);
  if (total > MAX_GZIP_BYTES) {
    console.error(`console: bundle is ${total} B gzipped, over the ${MAX_GZIP_BYTES} B budget`);
    process.exitCode = 1;
  }
}
