/**
 * Serves the built web console (dist/console, made by scripts/build-console.mjs)
 * at `/`: hashed assets cached for a year, index.html revalidated every time,
 * every client route (`/traffic`, `/settings/…`) answered with index.html —
 * except under `/api/`, which keeps answering JSON 404 NOT_FOUND. Console
 * responses carry a CSP without inline scripts or styles, frame-ancestors
 * 'none' / X-Frame-Options DENY and nosniff. Files are read once at start-up
 * and kept in memory (with a gzip copy): the console is small.
 */
import { createHash } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { gzipSync } from 'node:zlib';
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify';
import { Type } from 'typebox';
import { AppError } from '../../errors.js';
import { errorResponses, NoContent } from '../schemas/common.js';

/** The Content-Security-Policy of console pages: same-origin everything, nothing inline, no framing. */
export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "font-src 'self'",
  "connect-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CONSOLE_CSP,
  'x-frame-options': 'DENY',
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'camera=(), microphone=(), geolocation=(), payment=()',
};

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
  '.json': 'application/json; charset=utf-8',
  '.woff2': 'font/woff2',
  '.txt': 'text/plain; charset=utf-8',
};

/** Hashed assets never change under the same name. */
const ASSET_CACHE = 'public, max-age=31536000, immutable';
/** index.html must be revalidated so a new build is picked up at once. */
const INDEX_CACHE = 'no-cache';

export interface ConsolePluginOptions {
  /** The built console; default: dist/console of this checkout or package (see {@link defaultConsoleDirectory}). */
  directory?: string | null;
}

interface StaticFile {
  body: Buffer;
  gzip: Buffer | null;
  type: string;
  etag: string;
}

/**
 * Where the built console is: `dist/console` next to the running code, whether
 * it runs from sources (src/http/routes) or from the build (dist/src/http/routes).
 * Null when it has not been built.
 */
export function defaultConsoleDirectory(moduleUrl: string = import.meta.url): string | null {
  const here = path.dirname(fileURLToPath(moduleUrl));
  const candidates = [path.resolve(here, '../../../console'), path.resolve(here, '../../../dist/console')];
  return candidates.find((dir) => existsSync(path.join(dir, 'index.html'))) ?? null;
}

function loadFile(file: string): StaticFile {
  const body = readFileSync(file);
  const type = CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream';
  const compressible = /^(text\/|application\/json|image\/svg)/.test(type) && body.length > 512;
  return {
    body,
    gzip: compressible ? gzipSync(body, { level: 9 }) : null,
    type,
    etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`,
  };
}

function loadConsole(directory: string | null): {
  index: StaticFile | null;
  assets: Map<string, StaticFile>;
} {
  const assets = new Map<string, StaticFile>();
  if (directory === null || !existsSync(path.join(directory, 'index.html'))) return { index: null, assets };
  const assetDir = path.join(directory, 'assets');
  if (existsSync(assetDir)) {
    for (const name of readdirSync(assetDir)) {
      if (name.endsWith('.tmp')) continue;
      const file = path.join(assetDir, name);
      try {
        if (statSync(file).isFile()) assets.set(name, loadFile(file));
      } catch {
        // Removed by a concurrent build between listing and reading: not part of the current one.
      }
    }
  }
  return { index: loadFile(path.join(directory, 'index.html')), assets };
}

function acceptsGzip(request: FastifyRequest): boolean {
  const header = request.headers['accept-encoding'];
  if (typeof header !== 'string') return false;
  return header.split(',').some((part) => {
    const [coding, ...params] = part.trim().toLowerCase().split(';');
    if (coding !== 'gzip' && coding !== '*') return false;
    return !params.some((p) => /^\s*q=0(\.0*)?\s*$/.test(p));
  });
}

function send(request: FastifyRequest, reply: FastifyReply, file: StaticFile, cacheControl: string) {
  reply.headers(SECURITY_HEADERS);
  reply.header('cache-control', cacheControl);
  reply.header('etag', file.etag);
  reply.header('vary', 'accept-encoding');
  if (request.headers['if-none-match'] === file.etag) return reply.code(304).send();
  reply.type(file.type);
  if (file.gzip && acceptsGzip(request)) {
    reply.header('content-encoding', 'gzip');
    return reply.send(file.gzip);
  }
  return reply.send(file.body);
}

// The console's files are not part of the API description.
const CONSOLE_PAGE = {
  hide: true,
  response: { 200: Type.String({ description: 'The console (HTML)' }), 304: NoContent, ...errorResponses },
};
const CONSOLE_ASSET = {
  ...CONSOLE_PAGE,
  params: Type.Object({ '*': Type.String() }),
  response: { 200: Type.String({ description: 'A console asset' }), 304: NoContent, ...errorResponses },
};

/** A local plugin serving the console (register it at the root, outside the operational scope). */
export function createConsolePlugin(options: ConsolePluginOptions = {}): FastifyPluginAsync {
  return async (app) => {
    const directory = options.directory === undefined ? defaultConsoleDirectory() : options.directory;
    const { index, assets } = loadConsole(directory);
    if (!index) app.log.warn('the web console is not built (npm run build): / answers 404');

    const sendIndex = (request: FastifyRequest, reply: FastifyReply) => {
      if (!index) throw new AppError('NOT_FOUND', 'the web console is not built: run npm run build');
      return send(request, reply, index, INDEX_CACHE);
    };

    app.get('/', { schema: CONSOLE_PAGE }, sendIndex);
    app.get<{ Params: { '*': string } }>('/assets/*', { schema: CONSOLE_ASSET }, (request, reply) => {
      const file = assets.get(request.params['*']);
      if (!file) throw new AppError('NOT_FOUND', 'no such console asset');
      return send(request, reply, file, ASSET_CACHE);
    });
    // Client routes: anything else a browser may open or reload, but never the API.
    app.get('/*', { schema: CONSOLE_PAGE }, (request, reply) => {
      const pathname = request.url.split('?')[0] ?? '';
      if (pathname === '/api' || pathname.startsWith('/api/'))
        throw new AppError('NOT_FOUND', 'no such route');
      return sendIndex(request, reply);
    });
  };
}
