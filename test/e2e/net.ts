/**
 * Network helpers for the browser tests: a TCP link in front of a server that
 * a test can cut (a network drop the browser sees, with the server untouched)
 * and restore.
 */
import { once } from 'node:events';
import net from 'node:net';

export interface CuttableLink {
  /** `https://127.0.0.1:PORT`: the server, reached through the link. */
  url: string;
  /** Connections accepted while the link was up. */
  readonly connections: number;
  /** Resets every open connection and refuses new ones (reset at once) until {@link restore}. */
  cut(): void;
  restore(): void;
  /** Stops listening and destroys what is left. */
  close(): Promise<void>;
}

/** A plain TCP forwarder on 127.0.0.1 (port 0) to `targetPort`; TLS passes through it untouched. */
export async function startCuttableLink(targetPort: number): Promise<CuttableLink> {
  const sockets = new Set<net.Socket>();
  let down = false;
  let connections = 0;
  const drop = (socket: net.Socket) => {
    sockets.delete(socket);
    if (!socket.destroyed) socket.resetAndDestroy();
  };
  const server = net.createServer((client) => {
    if (down) {
      drop(client);
      return;
    }
    connections += 1;
    const upstream = net.connect(targetPort, '127.0.0.1');
    for (const [socket, other] of [
      [client, upstream],
      [upstream, client],
    ] as const) {
      sockets.add(socket);
      socket.on('error', () => other.destroy());
      socket.on('close', () => {
        sockets.delete(socket);
        other.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  return {
    url: `https://127.0.0.1:${port}`,
    get connections() {
      return connections;
    },
    cut() {
      down = true;
      for (const socket of [...sockets]) drop(socket);
    },
    restore() {
      down = false;
    },
    async close() {
      const closed = once(server, 'close');
      server.close();
      for (const socket of [...sockets]) socket.destroy();
      await closed;
    },
  };
}
