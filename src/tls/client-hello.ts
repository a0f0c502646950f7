/**
 * Reads the server name (SNI) and offered ALPN protocols out of the first
 * bytes of a TLS connection, before any TLS library sees them, so that an
 * https listener can refuse a name it has no certificate for with the
 * `unrecognized_name` alert, and hand TLS-ALPN-01 validation connections to
 * the challenge responder.
 *
 * The ClientHello may span several TLS records; {@link parseClientHello}
 * answers `incomplete` until it has all of it (up to
 * {@link MAX_CLIENT_HELLO_BYTES}).
 */

/** Largest ClientHello read before giving up (a real one is a few KiB at most). */
export const MAX_CLIENT_HELLO_BYTES = 64 * 1024;

export interface ClientHello {
  /** The host name sent as SNI, lower case without a trailing dot, or null. */
  serverName: string | null;
  /** ALPN protocols offered, in the client's order; empty when none. */
  alpn: string[];
}

export type ClientHelloResult =
  | { kind: 'hello'; hello: ClientHello }
  | { kind: 'incomplete' }
  /** Not a TLS ClientHello (plain HTTP on a TLS port, garbage): let the TLS stack fail it. */
  | { kind: 'invalid' };

const RECORD_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const EXTENSION_SERVER_NAME = 0x0000;
const EXTENSION_ALPN = 0x0010;

/** A fatal `unrecognized_name` (112) alert record. */
export const UNRECOGNIZED_NAME_ALERT = Buffer.from([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x70]);

/** Parses what has arrived so far. */
export function parseClientHello(data: Buffer): ClientHelloResult {
  // Reassemble the handshake message from consecutive handshake records.
  const fragments: Buffer[] = [];
  let have = 0;
  let need = -1;
  let offset = 0;
  while (need < 0 || have < need) {
    if (data.length < offset + 5) return data.length > MAX_CLIENT_HELLO_BYTES ? invalid : incomplete;
    if (data[offset] !== RECORD_HANDSHAKE || data[offset + 1] !== 0x03) return invalid;
    const length = data.readUInt16BE(offset + 3);
    if (length === 0 || length > 16_384 + 2048) return invalid;
    if (data.length < offset + 5 + length)
      return offset + 5 + length > MAX_CLIENT_HELLO_BYTES ? invalid : incomplete;
    const fragment = data.subarray(offset + 5, offset + 5 + length);
    fragments.push(fragment);
    have += fragment.length;
    offset += 5 + length;
    if (need < 0) {
      const head = fragments.length === 1 ? fragment : Buffer.concat(fragments);
      if (head.length < 4) continue;
      if (head[0] !== HANDSHAKE_CLIENT_HELLO) return invalid;
      need = 4 + head.readUIntBE(1, 3);
      if (need > MAX_CLIENT_HELLO_BYTES) return invalid;
    }
  }
  const message = fragments.length === 1 ? fragments[0]! : Buffer.concat(fragments);
  const hello = readHello(message.subarray(4, need));
  return hello === null ? invalid : { kind: 'hello', hello };
}

const invalid = { kind: 'invalid' } as const;
const incomplete = { kind: 'incomplete' } as const;

function readHello(body: Buffer): ClientHello | null {
  // client_version (2) + random (32)
  let p = 34;
  if (body.length < p + 1) return null;
  p += 1 + body[p]!; // session id
  if (body.length < p + 2) return null;
  p += 2 + body.readUInt16BE(p); // cipher suites
  if (body.length < p + 1) return null;
  p += 1 + body[p]!; // compression methods
  const hello: ClientHello = { serverName: null, alpn: [] };
  if (body.length < p + 2) return body.length === p ? hello : null; // no extensions at all
  const end = p + 2 + body.readUInt16BE(p);
  if (end > body.length) return null;
  p += 2;
  while (p + 4 <= end) {
    const type = body.readUInt16BE(p);
    const length = body.readUInt16BE(p + 2);
    const data = body.subarray(p + 4, p + 4 + length);
    if (data.length !== length) return null;
    p += 4 + length;
    if (type === EXTENSION_SERVER_NAME) hello.serverName = readServerName(data);
    else if (type === EXTENSION_ALPN) hello.alpn = readAlpn(data);
  }
  return hello;
}

function readServerName(data: Buffer): string | null {
  if (data.length < 2) return null;
  const end = Math.min(data.length, 2 + data.readUInt16BE(0));
  let p = 2;
  while (p + 3 <= end) {
    const type = data[p]!;
    const length = data.readUInt16BE(p + 1);
    if (p + 3 + length > end) return null;
    if (type === 0) {
      let name = data.toString('latin1', p + 3, p + 3 + length).toLowerCase();
      if (name.endsWith('.')) name = name.slice(0, -1);
      return name === '' ? null : name;
    }
    p += 3 + length;
  }
  return null;
}

function readAlpn(data: Buffer): string[] {
  if (data.length < 2) return [];
  const end = Math.min(data.length, 2 + data.readUInt16BE(0));
  const protocols: string[] = [];
  let p = 2;
  while (p + 1 <= end) {
    const length = data[p]!;
    if (p + 1 + length > end) break;
    protocols.push(data.toString('latin1', p + 1, p + 1 + length));
    p += 1 + length;
  }
  return protocols;
}
