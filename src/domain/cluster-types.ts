/**
 * What the control plane's own views say about its replicas (several
 * `p2pstream server` processes sharing one database and a NATS server).
 */

/** One replica, as system info and the overview list it. */
export interface ReplicaSummary {
  id: string;
  version: string;
  startedAt: string;
  uptimeSeconds: number;
  /** Agents held by that replica. */
  agentsConnected: number;
  /** When its last heartbeat was stored (this replica: now). */
  lastHeartbeatAt: string;
  /** The replica answering this request. */
  self: boolean;
}

/** This replica's state: its store, its link to the cluster bus, whether it takes agents. */
export interface ReplicaStatus {
  id: string;
  /** `lowdb` (one process, a file) or `postgres` (shared by replicas). */
  store: 'lowdb' | 'postgres';
  databaseConnected: boolean;
  /** `off` without P2PSTREAM_NATS_URL. */
  bus: 'off' | 'connected' | 'disconnected';
  /** False while the bus is lost or the replica is stopping: agents are sent elsewhere. */
  acceptingAgents: boolean;
  agentsConnected: number;
}

/** Where an agent is connected, as far as the cluster knows. */
export interface AgentPresence {
  /** The live replica holding the agent, or null. */
  holderOf(agentId: string): { replicaId: string; connectedAt: string } | null;
}
