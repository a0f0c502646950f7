/** `GET /api/v1/system/info`: what this instance is. */
import type { Store } from '../storage/store.js';
import { VERSION } from '../version.js';

export interface SystemInfo {
  version: string;
  instanceId: string;
  uptimeSeconds: number;
}

export function createSystemService(options: { store: Store; startedAt?: number; now?: () => number }) {
  const startedAt = options.startedAt ?? Date.now();
  const now = options.now ?? Date.now;
  return {
    info(): SystemInfo {
      return {
        version: VERSION,
        instanceId: options.store.read().instance.id,
        uptimeSeconds: Math.floor((now() - startedAt) / 1000),
      };
    },
  };
}

export type SystemService = ReturnType<typeof createSystemService>;
