/**
 * Process and port helpers for tests that run real servers, and a TCP relay
 * a test can cut (a link failing).
 */
import net from 'node:net';

export {
  expectPortClosed,
  freePort,
  portAccepts,
  stopChild,
  waitForOutput,
} from '../../scripts/local-services.js';

/** A TCP relay on 127.0.0.1 in front of another port, which a test can cut and restore (a link failing). */
export interface TcpRelay {
  port: number;
  /** Closes every relayed connection and refuses new ones. */
  cut(): Promise<void>;
  /** Accepts again on the same port. */
  restore(): Promise<void>;
  close(): Promise<void>;
}

export interface TcpBalancer {
  readonly port: number;
  /** Connections handed to each upstream port so far. */
  readonly handed: Map<number, number>;
  close(): Promise<void>;
}

/**
 * A TCP load balancer on loopback, as one in front of replicas would be:
 * each new connection goes to the upstream port `order` names next (cyclic,
 * indexes into `ports`; default round robin), or, when that one refuses, to
 * the following ports in turn (a health-checked pool's failover).
 */
export async function startTcpBalancer(ports: number[], order?: number[]): Promise<TcpBalancer> {
  const sockets = new Set<net.Socket>();
  const handed = new Map<number, number>();
  const schedule = order ?? ports.map((_, i) => i);
  let next = 0;
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => client.destroy());
    const first = schedule[next++ % schedule.length]!;
    const attempt = (tried: number): void => {
      if (tried >= ports.length) {
        client.destroy();
        return;
      }
      const port = ports[(first + tried) % ports.length]!;
      const upstream = net.connect({ host: '127.0.0.1', port });
      upstream.once('error', () => attempt(tried + 1));
      upstream.once('connect', () => {
        handed.set(port, (handed.get(port) ?? 0) + 1);
        sockets.add(upstream);
        upstream.removeAllListeners('error');
        upstream.on('error', () => client.destroy());
        upstream.on('close', () => {
          sockets.delete(upstream);
          client.destroy();
        });
        client.on('close', () => upstream.destroy());
        client.pipe(upstream).pipe(client);
      });
    };
    attempt(0);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return {
    port: (server.address() as net.AddressInfo).port,
    handed,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export async function startTcpRelay(targetPort: number): Promise<TcpRelay> {
  const sockets = new Set<net.Socket>();
  let server: net.Server | null = null;
  let port = 0;
  const listen = () =>
    new Promise<void>((resolve, reject) => {
      const s = net.createServer((client) => {
        const upstream = net.connect({ host: '127.0.0.1', port: targetPort });
        sockets.add(client);
        sockets.add(upstream);
        const drop = () => {
          client.destroy();
          upstream.destroy();
          sockets.delete(client);
          sockets.delete(upstream);
        };
        client.on('error', drop).on('close', drop);
        upstream.on('error', drop).on('close', drop);
        client.pipe(upstream).pipe(client);
      });
      s.once('error', reject);
      s.listen(port, '127.0.0.1', () => {
        port = (s.address() as net.AddressInfo).port;
        server = s;
        resolve();
      });
    });
  await listen();
  const cut = async () => {
    const s = server;
    server = null;
    for (const socket of sockets) socket.destroy();
    sockets.clear();
    if (s) await new Promise<void>((resolve) => s.close(() => resolve()));
  };
  return {
    get port() {
      return port;
    },
    cut,
    async restore() {
      if (!server) await listen();
    },
    close: cut,
  };
}
