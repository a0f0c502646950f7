import { once } from 'node:events';
import { createServer, type Socket } from 'node:net';
import { connect } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { parseClientHello } from '../../src/tls/client-hello.js';
import { SniIndex } from '../../src/tls/sni-index.js';

/** The first bytes a real Node TLS client sends. */
async function captureHello(options: { servername?: string; ALPNProtocols?: string[] }): Promise<Buffer> {
  const server = createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect({ host: '127.0.0.1', port, ...options });
  client.on('error', () => {});
  const [socket] = await accepted;
  const [chunk] = (await once(socket, 'data')) as [Buffer];
  client.destroy();
  socket.destroy();
  server.close();
  return chunk;
}

/** Re-frames one handshake record as two records (a ClientHello split across records). */
function splitRecord(record: Buffer, at: number): Buffer {
  const body = record.subarray(5);
  const frame = (part: Buffer) =>
    Buffer.concat([Buffer.from([0x16, 0x03, 0x01, part.length >> 8, part.length & 0xff]), part]);
  return Buffer.concat([frame(body.subarray(0, at)), frame(body.subarray(at))]);
}

describe('ClientHello parsing', () => {
  it('reads the server name and ALPN list of a real ClientHello', async () => {
    const hello = await captureHello({ servername: 'Www.Example.Test', ALPNProtocols: ['h2', 'http/1.1'] });
    expect(parseClientHello(hello)).toEqual({
      kind: 'hello',
      hello: { serverName: 'www.example.test', alpn: ['h2', 'http/1.1'] },
    });
  });

  it('answers incomplete until the whole message arrived, also across records', async () => {
    const hello = await captureHello({ servername: 'a.test', ALPNProtocols: ['acme-tls/1'] });
    expect(parseClientHello(hello.subarray(0, 3))).toEqual({ kind: 'incomplete' });
    expect(parseClientHello(hello.subarray(0, hello.length - 1))).toEqual({ kind: 'incomplete' });
    const split = splitRecord(hello, 40);
    expect(parseClientHello(split.subarray(0, 50))).toEqual({ kind: 'incomplete' });
    expect(parseClientHello(split)).toEqual({
      kind: 'hello',
      hello: { serverName: 'a.test', alpn: ['acme-tls/1'] },
    });
  });

  it('reports no name for a hello without SNI, and invalid for what is not TLS', async () => {
    const hello = await captureHello({});
    expect(parseClientHello(hello)).toMatchObject({ kind: 'hello', hello: { serverName: null } });
    expect(parseClientHello(Buffer.from('GET / HTTP/1.1\r\nHost: a\r\n\r\n'))).toEqual({ kind: 'invalid' });
    const broken = Buffer.from(hello);
    broken[5] = 0x02; // not a ClientHello
    expect(parseClientHello(broken)).toEqual({ kind: 'invalid' });
  });
});

describe('SNI index', () => {
  it('prefers the exact name, then the longest wildcard suffix; the first claim of a host wins', () => {
    const index = new SniIndex([
      { hosts: ['www.example.test'], value: 'exact' },
      { hosts: ['*.example.test'], value: 'wide' },
      { hosts: ['*.b.example.test', 'www.example.test'], value: 'narrow' },
    ]);
    expect(index.lookup('www.example.test')).toBe('exact');
    expect(index.lookup('a.b.example.test')).toBe('narrow');
    expect(index.lookup('x.y.b.example.test')).toBe('narrow');
    expect(index.lookup('c.example.test')).toBe('wide');
    expect(index.lookup('example.test')).toBeUndefined();
    expect(index.lookup('other.test')).toBeUndefined();
  });
});
