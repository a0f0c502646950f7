/**
 * The socket side of an https listener (docs/tls.md): a TCP server that
 * reads each connection's ClientHello before TLS does, then
 *
 * - hands a TLS-ALPN-01 validation (ALPN `acme-tls/1` for a name with a
 *   pending challenge) to a small TLS server that presents the challenge
 *   certificate and closes;
 * - refuses a name that neither a certificate nor the listener's default
 *   covers with the fatal `unrecognized_name` alert — never another site's
 *   certificate;
 * - gives everything else to one node:http2 secure server with `allowHTTP1`
 *   (ALPN `h2` and `http/1.1`), whose SNI callback picks the certificate at
 *   handshake time. Certificates are looked up per handshake, so a swapped
 *   certificate serves the next handshake while open connections keep the
 *   one they negotiated. An HTTP/1.1 upgrade request (WebSocket) goes to
 *   `onUpgrade`, and its connection leaves the HTTP/1 bookkeeping: from then
 *   on it is the handler's (a byte pipe), cut only by `close` after its grace.
 *
 * Slow or silent clients are cut: the ClientHello must arrive within
 * `helloTimeoutMs`, the rest of the handshake within `handshakeTimeoutMs`, a
 * complete first request (HTTP/1.1 head or HTTP/2 HEADERS) within
 * `firstRequestTimeoutMs` of the handshake — and, on an HTTP/1.1 keep-alive
 * connection, the next head within that time of the previous answer; an
 * HTTP/2 session without open streams for `h2IdleTimeoutMs` gets GOAWAY.
 *
 * `close(graceMs)` stops accepting at once, lets HTTP/2 sessions finish
 * their streams (GOAWAY) and HTTP/1 requests in flight complete, and cuts
 * whatever remains after the grace period.
 */
import type { IncomingMessage } from 'node:http';
import type { Http2SecureServer, Http2ServerRequest, Http2ServerResponse, Http2Session } from 'node:http2';
import { createSecureServer } from 'node:http2';
import { createServer as createNetServer, type Server, type Socket } from 'node:net';
import {
  createSecureContext,
  createServer as createTlsServer,
  type SecureContext,
  type TLSSocket,
} from 'node:tls';
import { type ClientHelloResult, parseClientHello, UNRECOGNIZED_NAME_ALERT } from '../tls/client-hello.js';

/** Time a client gets to send its ClientHello before the connection is cut. */
export const DEFAULT_HELLO_TIMEOUT_MS = 10_000;
/** Time a client gets to finish the TLS handshake once its ClientHello arrived. */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * Time from the end of the handshake to a complete first request (HTTP/1.1
 * head or HTTP/2 HEADERS), and on HTTP/1.1 from one answer to the next head.
 */
export const DEFAULT_FIRST_REQUEST_TIMEOUT_MS = 10_000;
/** An HTTP/2 session without open streams this long is closed (GOAWAY). */
export const DEFAULT_H2_IDLE_TIMEOUT_MS = 60_000;
/** Idle time after which an HTTP/1.1 keep-alive connection is closed. */
export const HTTPS_KEEP_ALIVE_TIMEOUT_MS = 5000;
/** A connection told to close that does not is cut after this. */
const CLOSE_LINGER_MS = 1000;
export const ACME_TLS_ALPN_PROTOCOL = 'acme-tls/1';

/** The certificate chain and key (PEM) a listener serves. */
export interface KeyPair {
  readonly cert: string;
  readonly key: string;
}

/** Where an https listener finds its certificates (read at every handshake). */
export interface HttpsCertificates {
  /** The context of the certificate whose hosts cover `serverName`, else undefined. */
  forName(serverName: string): SecureContext | undefined;
  /** The TLS-ALPN-01 challenge context for `serverName`, when a challenge is pending. */
  challengeFor(serverName: string): SecureContext | undefined;
}

export interface HttpsListenerOptions {
  certificates: HttpsCertificates;
  onRequest(req: Http2ServerRequest, res: Http2ServerResponse): void;
  /** An HTTP/1.1 request with `Upgrade` (the socket is the handler's); absent: such connections are closed. */
  onUpgrade?(req: IncomingMessage, socket: TLSSocket, head: Buffer): void;
  helloTimeoutMs?: number;
  handshakeTimeoutMs?: number;
  firstRequestTimeoutMs?: number;
  h2IdleTimeoutMs?: number;
}

/** The timeouts an https listener applies (see the module comment). */
export interface HttpsTimeouts {
  helloTimeoutMs: number;
  handshakeTimeoutMs: number;
  firstRequestTimeoutMs: number;
  h2IdleTimeoutMs: number;
}

export class HttpsListener {
  /** The listening TCP server (listen on it; its address is the listener's). */
  readonly server: Server;
  readonly #h2: Http2SecureServer;
  readonly #options: HttpsListenerOptions;
  readonly #sockets = new Set<Socket>();
  readonly #sessions = new Set<Http2Session>();
  /** HTTP/1 connections: their requests in flight and the timer waiting for the next head. */
  readonly #http1 = new Map<TLSSocket, Http1Connection>();
  readonly #timeouts: HttpsTimeouts;
  #challenge: ReturnType<typeof createTlsServer> | null = null;
  #default: KeyPair | null = null;
  #closing = false;

  constructor(options: HttpsListenerOptions) {
    this.#options = options;
    const timeouts: HttpsTimeouts = {
      helloTimeoutMs: options.helloTimeoutMs ?? DEFAULT_HELLO_TIMEOUT_MS,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      firstRequestTimeoutMs: options.firstRequestTimeoutMs ?? DEFAULT_FIRST_REQUEST_TIMEOUT_MS,
      h2IdleTimeoutMs: options.h2IdleTimeoutMs ?? DEFAULT_H2_IDLE_TIMEOUT_MS,
    };
    this.#timeouts = timeouts;
    this.#h2 = createSecureServer(
      {
        allowHTTP1: true,
        handshakeTimeout: timeouts.handshakeTimeoutMs,
        SNICallback: (name, callback) => callback(null, options.certificates.forName(name.toLowerCase())),
      },
      (req, res) => this.#onRequest(req, res),
    );
    // Read by node:http's connection handling for HTTP/1.1 on this server.
    (this.#h2 as unknown as { keepAliveTimeout: number }).keepAliveTimeout = HTTPS_KEEP_ALIVE_TIMEOUT_MS;
    this.#h2.on('tlsClientError', () => {});
    this.#h2.on('sessionError', () => {});
    this.#h2.on('session', (session: Http2Session) => this.#onSession(session));
    this.#h2.on('secureConnection', (socket: TLSSocket) => {
      if (socket.alpnProtocol === 'h2') return;
      const connection: Http1Connection = { active: 0, timer: null };
      this.#http1.set(socket, connection);
      this.#awaitHead(socket, connection);
      socket.once('close', () => {
        if (connection.timer) clearTimeout(connection.timer);
        this.#http1.delete(socket);
      });
    });
    // node:http's HTTP/1 handling on this server emits upgrades here.
    this.#h2.on('upgrade', (req: IncomingMessage, socket: TLSSocket, head: Buffer) =>
      this.#onUpgrade(req, socket, head),
    );
    this.server = createNetServer((socket) => this.#onConnection(socket));
  }

  #onUpgrade(req: IncomingMessage, socket: TLSSocket, head: Buffer): void {
    const connection = this.#http1.get(socket);
    if (connection?.timer) clearTimeout(connection.timer);
    this.#http1.delete(socket);
    const onUpgrade = this.#options.onUpgrade;
    if (onUpgrade === undefined || this.#closing) {
      socket.destroy();
      return;
    }
    onUpgrade(req, socket, head);
  }

  /** The certificate served when the name matches none (or no name was sent); null for none. */
  setDefault(pair: KeyPair | null): void {
    if (pair === this.#default || (pair && this.#default && pair.cert === this.#default.cert)) {
      this.#default = pair;
      return;
    }
    this.#default = pair;
    this.#h2.setSecureContext(pair === null ? {} : { cert: pair.cert, key: pair.key });
  }

  /**
   * Stops accepting now; HTTP/2 sessions get GOAWAY and finish their streams,
   * idle HTTP/1 connections close, busy ones when their request ends; after
   * `graceMs` every connection left is cut. Resolves once all are closed.
   */
  close(graceMs: number): Promise<void> {
    this.#closing = true;
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const session of this.#sessions) session.close();
    for (const [socket, connection] of this.#http1) if (connection.active === 0) socket.destroy();
    const timer = setTimeout(() => {
      for (const socket of this.#sockets) socket.destroy();
    }, graceMs);
    timer.unref();
    return closed.then(() => {
      clearTimeout(timer);
      this.#challenge?.close();
    });
  }

  #onRequest(req: Http2ServerRequest, res: Http2ServerResponse): void {
    if (req.httpVersionMajor === 1) {
      const socket = req.socket as unknown as TLSSocket;
      const connection = this.#http1.get(socket);
      if (connection !== undefined) {
        connection.active += 1;
        if (connection.timer) {
          clearTimeout(connection.timer);
          connection.timer = null;
        }
        res.once('close', () => {
          connection.active -= 1;
          if (connection.active > 0) return;
          if (this.#closing) socket.destroy();
          else this.#awaitHead(socket, connection);
        });
      }
    }
    this.#options.onRequest(req, res);
  }

  /** HTTP/1.1: the next request head must be complete within the first-request timeout. */
  #awaitHead(socket: TLSSocket, connection: Http1Connection): void {
    if (connection.timer) clearTimeout(connection.timer);
    connection.timer = setTimeout(() => {
      connection.timer = null;
      if (connection.active === 0) socket.destroy();
    }, this.#timeouts.firstRequestTimeoutMs);
    connection.timer.unref();
  }

  /**
   * HTTP/2: the first stream must open within the first-request timeout;
   * later, a session without open streams for the idle timeout is closed
   * (GOAWAY, then cut if the client keeps the connection).
   */
  #onSession(session: Http2Session): void {
    this.#sessions.add(session);
    if (this.#closing) session.close();
    let open = 0;
    let timer: ReturnType<typeof setTimeout> | null = null;
    const arm = (ms: number) => {
      timer = setTimeout(() => {
        timer = null;
        if (open > 0 || session.closed || session.destroyed) return;
        session.close();
        setTimeout(() => session.destroy(), CLOSE_LINGER_MS).unref();
      }, ms);
      timer.unref();
    };
    arm(this.#timeouts.firstRequestTimeoutMs);
    session.on('stream', (stream) => {
      open += 1;
      if (timer) {
        clearTimeout(timer);
        timer = null;
      }
      stream.once('close', () => {
        open -= 1;
        if (open === 0 && !session.closed && !session.destroyed) arm(this.#timeouts.h2IdleTimeoutMs);
      });
    });
    session.once('close', () => {
      if (timer) clearTimeout(timer);
      this.#sessions.delete(session);
    });
  }

  #onConnection(socket: Socket): void {
    if (this.#closing) {
      socket.destroy();
      return;
    }
    this.#sockets.add(socket);
    socket.once('close', () => this.#sockets.delete(socket));
    let buffered: Buffer | null = null;
    const timer = setTimeout(() => socket.destroy(), this.#timeouts.helloTimeoutMs);
    timer.unref();
    const onError = () => {
      clearTimeout(timer);
      socket.destroy();
    };
    const onData = (chunk: Buffer) => {
      buffered = buffered === null ? chunk : Buffer.concat([buffered, chunk]);
      const result = parseClientHello(buffered);
      if (result.kind === 'incomplete') return;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.pause();
      this.#dispatch(socket, buffered, result);
    };
    socket.on('data', onData);
    socket.on('error', onError);
  }

  #dispatch(socket: Socket, hello: Buffer, result: ClientHelloResult): void {
    if (result.kind === 'hello') {
      const name = result.hello.serverName;
      if (name !== null && result.hello.alpn.includes(ACME_TLS_ALPN_PROTOCOL)) {
        if (this.#options.certificates.challengeFor(name) !== undefined) {
          socket.unshift(hello);
          this.#challengeServer().emit('connection', socket);
          return;
        }
      }
      const covered = name !== null && this.#options.certificates.forName(name) !== undefined;
      if (!covered && this.#default === null) {
        socket.on('error', () => {});
        socket.end(UNRECOGNIZED_NAME_ALERT);
        setTimeout(() => socket.destroy(), 1000).unref();
        return;
      }
    }
    socket.unshift(hello);
    this.#h2.emit('connection', socket);
  }

  /** The TLS server answering TLS-ALPN-01 validations: the challenge certificate, then close. */
  #challengeServer(): ReturnType<typeof createTlsServer> {
    if (this.#challenge === null) {
      const certificates = this.#options.certificates;
      this.#challenge = createTlsServer({
        ALPNProtocols: [ACME_TLS_ALPN_PROTOCOL],
        SNICallback: (name, callback) => callback(null, certificates.challengeFor(name.toLowerCase())),
      });
      this.#challenge.on('tlsClientError', () => {});
      this.#challenge.on('secureConnection', (socket: TLSSocket) => {
        socket.on('error', () => {});
        socket.end();
      });
    }
    return this.#challenge;
  }
}

interface Http1Connection {
  /** Requests in flight (pipelining aside, 0 or 1). */
  active: number;
  /** Waits for the next request head while none is in flight. */
  timer: ReturnType<typeof setTimeout> | null;
}

/** A secure context for a certificate chain and key (PEM); throws when they do not load. */
export function secureContextOf(pair: KeyPair): SecureContext {
  return createSecureContext({ cert: pair.cert, key: pair.key });
}
