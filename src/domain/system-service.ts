/** `GET /api/v1/system/info`: what this instance is. */
import type { Store } from '../storage/store.js';
import { VERSION } from '../version.js';
import type { ReplicaStatus, ReplicaSummary } from './cluster-types.js';

export interface SystemInfo {
  version: string;
  instanceId: string;
  uptimeSeconds: number;
  /** This control-plane replica: its store, bus link and whether it takes agents. */
  replica: ReplicaStatus;
  /** Every live replica sharing this instance's database (this one alone without a cluster). */
  replicas: ReplicaSummary[];
}

/** Where system info learns about replicas; without one, a single lowdb process. */
export interface SystemReplicaSource {
  status(): ReplicaStatus;
  replicas(): ReplicaSummary[];
}

export function createSystemService(options: {
  store: Store;
  startedAt?: number;
  now?: () => number;
  replica?: SystemReplicaSource;
}) {
  const startedAt = options.startedAt ?? Date.now();
  const now = options.now ?? Date.now;
  const single: SystemReplicaSource = {
    status: () => ({
      id: 'single',
      store: 'lowdb',
      databaseConnected: true,
      bus: 'off',
      acceptingAgents: true,
      agentsConnected: 0,
    }),
    replicas: () => [],
  };
  const replica = options.replica ?? single;
  return {
    info(): SystemInfo {
      return {
        version: VERSION,
        instanceId: options.store.read().instance.id,
        uptimeSeconds: Math.floor((now() - startedAt) / 1000),
        replica: replica.status(),
        replicas: replica.replicas(),
      };
    },
  };
}

export type SystemService = ReturnType<typeof createSystemService>;
