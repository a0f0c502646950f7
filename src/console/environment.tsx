/**
 * The selected environment: Local plus every registered environment, with the
 * reason each blocked one cannot be used. The choice is kept in localStorage;
 * a stored choice that became unusable falls back to Local with a notice, so
 * the console never silently operates somewhere the user did not pick.
 */
import { type ComponentChildren, createContext } from 'preact';
import { useCallback, useContext, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, LOCAL, local } from './api';
import type { Agent, Environment } from './types';

const STORAGE_KEY = 'p2pstream.environment';
/** How often the switcher refreshes trust states and agent status. */
export const ENVIRONMENT_REFRESH_MS = 15_000;

export const LOCAL_ENVIRONMENT: Environment = { id: LOCAL, name: 'Local', virtual: true };

/** One switcher entry: the environment, its agent (agent transport) and why it is blocked, if it is. */
export interface EnvironmentEntry {
  environment: Environment;
  agent: Agent | null;
  blocked: string | null;
}

export interface EnvironmentState {
  /** Local first, then the registered ones. */
  entries: EnvironmentEntry[];
  /** The local agents (for pickers and names). */
  agents: Agent[];
  selected: Environment;
  /** True once the first list has loaded. */
  loaded: boolean;
  /** Why a stored choice was replaced by Local, until dismissed. */
  notice: string | null;
  select(id: string): void;
  dismissNotice(): void;
  refresh(): Promise<void>;
}

/**
 * Why an environment cannot be selected, or null when it can: disabled,
 * certificate not trusted yet / changed / expired (also when the trusted one
 * ran out since the list was loaded), agent missing / disabled / offline.
 */
export function blockedReason(
  environment: Environment,
  agent: Agent | null,
  now = Date.now(),
): string | null {
  if (environment.virtual) return null;
  if (environment.enabled === false) return 'disabled';
  switch (environment.trustState) {
    case 'UNTRUSTED':
      return 'certificate not trusted yet';
    case 'CHANGED':
      return 'certificate changed';
    case 'EXPIRED':
      return 'certificate expired';
    default:
  }
  const validTo = environment.certificate ? Date.parse(environment.certificate.validTo) : Number.NaN;
  if (validTo < now) return 'certificate expired';
  if (environment.transport === 'agent') {
    if (!agent) return 'agent missing';
    if (!agent.enabled) return 'agent disabled';
    if (agent.status !== 'connected') return 'agent offline';
  }
  return null;
}

function readStored(): string {
  try {
    return window.localStorage.getItem(STORAGE_KEY) || LOCAL;
  } catch {
    return LOCAL;
  }
}

function store(id: string): void {
  try {
    window.localStorage.setItem(STORAGE_KEY, id);
  } catch {
    // Private modes may refuse storage: the choice then lasts for this page only.
  }
}

const Context = createContext<EnvironmentState | null>(null);

/** Provides the environment state to the signed-in shell. */
export function EnvironmentProvider(props: { children: ComponentChildren }) {
  const [environments, setEnvironments] = useState<Environment[]>([LOCAL_ENVIRONMENT]);
  const [agents, setAgents] = useState<Agent[]>([]);
  const [selectedId, setSelectedId] = useState(readStored);
  const [loaded, setLoaded] = useState(false);
  const [notice, setNotice] = useState<string | null>(null);
  const selectedRef = useRef(selectedId);
  selectedRef.current = selectedId;
  const knownRef = useRef(environments);
  knownRef.current = environments;

  const refresh = useCallback(async () => {
    const [envs, agentList] = await Promise.all([
      local.get<{ environments: Environment[] }>('/api/v1/environments').then(
        (r) => r.environments,
        (err: unknown) => {
          if (err instanceof ApiError && err.status === 404) return [LOCAL_ENVIRONMENT];
          throw err;
        },
      ),
      local.get<{ agents: Agent[] }>('/api/v1/agents').then(
        (r) => r.agents,
        () => [] as Agent[],
      ),
    ]);
    const list = envs.some((e) => e.id === LOCAL) ? envs : [LOCAL_ENVIRONMENT, ...envs];
    setEnvironments(list);
    setAgents(agentList);
    const current = selectedRef.current;
    if (current !== LOCAL) {
      const env = list.find((e) => e.id === current);
      const agent = env?.agentId ? (agentList.find((a) => a.id === env.agentId) ?? null) : null;
      const reason = env ? blockedReason(env, agent) : 'no longer registered';
      if (reason) {
        // A deleted one is named from the list shown until now.
        const name = env?.name ?? knownRef.current.find((e) => e.id === current)?.name;
        setNotice(`${name ?? 'The selected environment'} is unavailable (${reason}); showing Local.`);
        setSelectedId(LOCAL);
        store(LOCAL);
      }
    }
    setLoaded(true);
  }, []);

  useEffect(() => {
    refresh().catch(() => setLoaded(true));
    const timer = window.setInterval(() => {
      refresh().catch(() => undefined);
    }, ENVIRONMENT_REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [refresh]);

  const state = useMemo<EnvironmentState>(() => {
    const entries = environments.map((environment) => {
      const agent = environment.agentId ? (agents.find((a) => a.id === environment.agentId) ?? null) : null;
      return { environment, agent, blocked: blockedReason(environment, agent) };
    });
    const selected = environments.find((e) => e.id === selectedId) ?? LOCAL_ENVIRONMENT;
    return {
      entries,
      agents,
      selected,
      loaded,
      notice,
      select(id: string) {
        const entry = entries.find((e) => e.environment.id === id);
        if (!entry || entry.blocked) return;
        setSelectedId(id);
        setNotice(null);
        store(id);
      },
      dismissNotice: () => setNotice(null),
      refresh,
    };
  }, [environments, agents, selectedId, loaded, notice, refresh]);

  return <Context.Provider value={state}>{props.children}</Context.Provider>;
}

/** The environment state; only inside {@link EnvironmentProvider}. */
export function useEnvironments(): EnvironmentState {
  const state = useContext(Context);
  if (!state) throw new Error('useEnvironments outside EnvironmentProvider');
  return state;
}
