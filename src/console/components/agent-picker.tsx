/**
 * Choosing agents: the picker's order (connected agents first, offline and
 * disabled ones after, marked), the `<option>`s of an agent `<select>`, and
 * label selectors typed as `key=value` lines with the agents they match now.
 * Used by the environment form (transport agent) and by backend members.
 */
import type { Agent } from '../types';

/** Enabled and connected: it can carry requests now. */
export function isAgentOnline(agent: Agent): boolean {
  return agent.enabled && agent.status === 'connected';
}

/** The agent picker's order: connected agents first, then offline (and disabled) ones, each by name. */
export function groupAgentsForPicker(agents: readonly Agent[]): { label: string; agents: Agent[] }[] {
  const byName = (a: Agent, b: Agent) => a.name.localeCompare(b.name);
  return [
    { label: 'Connected', agents: agents.filter(isAgentOnline).sort(byName) },
    { label: 'Offline', agents: agents.filter((a) => !isAgentOnline(a)).sort(byName) },
  ];
}

/** The agent a picker shows until one is chosen: the first listed (a connected one when there is one). */
export function defaultAgentId(agents: readonly Agent[]): string {
  return groupAgentsForPicker(agents).find((g) => g.agents.length > 0)?.agents[0]?.id ?? '';
}

/**
 * The options of an agent `<select>`, grouped Connected / Offline, offline and
 * disabled ones marked; `missing` keeps a chosen id no agent has any more
 * selectable (shown as "unknown agent").
 */
export function AgentOptions(props: { agents: readonly Agent[]; missing?: string | null }) {
  const missing = props.missing && !props.agents.some((a) => a.id === props.missing) ? props.missing : null;
  return (
    <>
      {props.agents.length === 0 && !missing ? <option value="">No agents</option> : null}
      {missing ? <option value={missing}>unknown agent {missing}</option> : null}
      {groupAgentsForPicker(props.agents).map((group) =>
        group.agents.length === 0 ? null : (
          <optgroup key={group.label} label={group.label}>
            {group.agents.map((agent) => (
              <option key={agent.id} value={agent.id}>
                {agent.name}
                {isAgentOnline(agent) ? '' : ` (${agent.enabled ? 'offline' : 'disabled'})`}
              </option>
            ))}
          </optgroup>
        ),
      )}
    </>
  );
}

/**
 * Labels typed one `key=value` a line (or between `separator`s); throws an
 * Error naming the entry that is not one. Keys and values are trimmed; the
 * server checks the rest.
 */
export function parseLabels(text: string, separator: RegExp = /\n/): Record<string, string> {
  const labels: Record<string, string> = {};
  for (const entry of text.split(separator)) {
    const trimmed = entry.trim();
    if (!trimmed) continue;
    const eq = trimmed.indexOf('=');
    if (eq <= 0) throw new Error(`Labels: “${trimmed}” is not key=value`);
    labels[trimmed.slice(0, eq).trim()] = trimmed.slice(eq + 1).trim();
  }
  return labels;
}

/** `a=b, c=d`: labels as one line. */
export function formatLabels(labels: Readonly<Record<string, string>> | null | undefined): string {
  return Object.entries(labels ?? {})
    .map(([k, v]) => `${k}=${v}`)
    .join(', ');
}

/** The agents carrying every one of `labels` (as the data plane picks among them), connected first. */
export function agentsWithLabels(
  agents: readonly Agent[],
  labels: Readonly<Record<string, string>>,
): Agent[] {
  const matching = agents.filter((agent) =>
    Object.entries(labels).every(
      ([key, value]) => Object.hasOwn(agent.labels ?? {}, key) && agent.labels[key] === value,
    ),
  );
  return groupAgentsForPicker(matching).flatMap((g) => g.agents);
}
