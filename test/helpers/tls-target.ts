/**
 * A real HTTPS target on 127.0.0.1 (port 0) with a given certificate, for
 * relay and environment tests. It records every byte of application data it
 * receives (so a test can prove that a failed verification sent nothing),
 * counts connections, handshakes and open sockets, and its close() waits
 * until every socket is closed: a client that leaks a connection fails the
 * test instead of hanging it.
 *
 * startSilentTarget() is the other kind of target: it accepts TCP and never
 * answers the TLS handshake (for timeouts).
 */
import { once } from 'node:events';
import type http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { TrustMetadata } from '../../src/relay/transport.js';
import type { GeneratedCertificate } from '../../src/tls/certificates.js';

export interface TlsTargetOptions {
  /** PEM certificate (or chain, leaf first) and key the target presents. */
  cert: string;
  key: string;
  /** Answers each request; default 200 `ok` as text/plain. */
  handler?: http.RequestListener;
}

export interface TlsTarget {
  host: string;
  port: number;
  /** `https://127.0.0.1:PORT` */
  url: string;
  /** Application bytes received, over all connections (after TLS decryption). */
  readonly receivedBytes: number;
  /** The application bytes received, concatenated. */
  received(): Buffer;
  /** TCP connections accepted. */
  readonly connections: number;
  /** TLS handshakes completed. */
  readonly handshakes: number;
  /** SNI names the clients sent, one per handshake that sent one (seen even when the client then refuses the certificate). */
  readonly servernames: string[];
  /** TCP sockets currently open. */
  readonly openSockets: number;
  /** Resolves once at most `count` sockets are open; rejects after `timeoutMs` (default 5 s). */
  waitForOpenSockets(count: number, timeoutMs?: number): Promise<void>;
  /**
   * Stops listening and waits for every socket to be closed by its client.
   * After `graceMs` (default 5 s) it destroys the rest and rejects, naming them.
   */
  close(graceMs?: number): Promise<void>;
}

interface SocketTracker {
  sockets: Set<net.Socket>;
  connections: number;
  changed: Set<() => void>;
}

function track(server: net.Server): SocketTracker {
  const tracker: SocketTracker = { sockets: new Set(), connections: 0, changed: new Set() };
  server.on('connection', (socket: net.Socket) => {
    tracker.connections++;
    tracker.sockets.add(socket);
    socket.on('close', () => {
      tracker.sockets.delete(socket);
      for (const notify of tracker.changed) notify();
    });
  });
  return tracker;
}

function waitForOpen(tracker: SocketTracker, count: number, timeoutMs: number): Promise<void> {
  if (tracker.sockets.size <= count) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const check = () => {
      if (tracker.sockets.size > count) return;
      clearTimeout(timer);
      tracker.changed.delete(check);
      resolve();
    };
    const timer = setTimeout(() => {
      tracker.changed.delete(check);
      reject(new Error(`${tracker.sockets.size} sockets still open, expected at most ${count}`));
    }, timeoutMs);
    tracker.changed.add(check);
  });
}

async function closeTracked(server: net.Server, tracker: SocketTracker, graceMs: number): Promise<void> {
  const closed = once(server, 'close');
  // The plain net close: an HTTP server's own close() would also cut idle keep-alive
  // connections, hiding a client that never closes its pooled sockets.
  net.Server.prototype.close.call(server);
  try {
    await waitForOpen(tracker, 0, graceMs);
  } catch {
    const open = tracker.sockets.size;
    for (const socket of tracker.sockets) socket.destroy();
    await closed;
    throw new Error(`the target still had ${open} open socket(s) ${graceMs} ms after close()`);
  }
  await closed;
}

/** The trust of a relayed request pinned to `certificate` (what a trusted environment holds). */
export function pinTo(certificate: GeneratedCertificate, expectedHostname = '127.0.0.1'): TrustMetadata {
  return {
    fingerprintSha256: certificate.fingerprintSha256,
    expectedHostname,
    certificateDer: certificate.der,
  };
}

/** Starts an HTTPS target; see {@link TlsTarget}. */
export async function startTlsTarget(options: TlsTargetOptions): Promise<TlsTarget> {
  const handler: http.RequestListener =
    options.handler ??
    ((_req, res) => {
      res.writeHead(200, { 'content-type': 'text/plain' });
      res.end('ok');
    });
  const servernames: string[] = [];
  const server = https.createServer(
    {
      cert: options.cert,
      key: options.key,
      SNICallback: (servername, callback) => {
        servernames.push(servername);
        // No context of its own: the server's certificate is used.
        callback(null, undefined);
      },
    },
    handler,
  );
  // Keep-alive sockets stay open until the client closes them: that is what close() checks.
  server.keepAliveTimeout = 60_000;
  const tracker = track(server);
  const chunks: Buffer[] = [];
  let receivedBytes = 0;
  let handshakes = 0;
  server.on('secureConnection', (socket: TLSSocket) => {
    handshakes++;
    // Added after the HTTP server's own listener, so both see every byte.
    socket.on('data', (data: Buffer) => {
      receivedBytes += data.length;
      chunks.push(data);
    });
  });
  server.on('tlsClientError', () => {
    // Failed handshakes (a client refusing the certificate) are expected in these tests.
  });
  server.on('clientError', (_err, socket) => socket.destroy());
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    host: '127.0.0.1',
    port,
    url: `https://127.0.0.1:${port}`,
    get receivedBytes() {
      return receivedBytes;
    },
    received: () => Buffer.concat(chunks),
    get connections() {
      return tracker.connections;
    },
    get handshakes() {
      return handshakes;
    },
    servernames,
    get openSockets() {
      return tracker.sockets.size;
    },
    waitForOpenSockets: (count, timeoutMs = 5000) => waitForOpen(tracker, count, timeoutMs),
    close(graceMs = 5000) {
      closing ??= closeTracked(server, tracker, graceMs);
      return closing;
    },
  };
}

export interface SilentTarget {
  port: number;
  url: string;
  readonly connections: number;
  readonly openSockets: number;
  waitForOpenSockets(count: number, timeoutMs?: number): Promise<void>;
  close(graceMs?: number): Promise<void>;
}

/** A target that accepts TCP connections and never says a word (no TLS server hello). */
export async function startSilentTarget(): Promise<SilentTarget> {
  const server = net.createServer((socket) => {
    // Silence: the client waits for a server hello that never comes. Reading (and dropping)
    // what it sends lets the socket see the client's close.
    socket.resume();
  });
  const tracker = track(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  let closing: Promise<void> | undefined;
  return {
    port,
    url: `https://127.0.0.1:${port}`,
    get connections() {
      return tracker.connections;
    },
    get openSockets() {
      return tracker.sockets.size;
    },
    waitForOpenSockets: (count, timeoutMs = 5000) => waitForOpen(tracker, count, timeoutMs),
    close(graceMs = 5000) {
      closing ??= closeTracked(server, tracker, graceMs);
      return closing;
    },
  };
}

/** A port on 127.0.0.1 that nothing listens on (bound, then released). */
export async function closedPort(): Promise<number> {
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  server.close();
  await once(server, 'close');
  return port;
}
