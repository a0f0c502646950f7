/**
 * Live traffic of the selected environment: newest first, status colours,
 * filters, pause, tracing settings and a requests-per-second sparkline.
 * A request to a backend shows the backend, the member that served it and,
 * for an agent member, the agent that carried it, by name (the environment's
 * backends and agents, loaded again when an event names one not known yet).
 * The page is remounted on environment switch, which closes the old stream
 * and clears everything shown.
 */
import { useEffect, useMemo, useRef, useState } from 'preact/hooks';
import { ApiError, type Client, clientFor, messageOf } from '../api';
import { formatNumber, Sparkline } from '../components/charts';
import { DataTable } from '../components/data-table';
import { Form } from '../components/form-dialog';
import { ErrorMessage, SectionHead } from '../components/ui';
import { type StreamState, TrafficStream } from '../traffic-stream';
import type { Agent, Backend, TraceEvent, TrafficSettings } from '../types';

/** Events kept on screen (older ones fall off the bottom). */
export const MAX_EVENTS = 500;
const INITIAL_EVENTS = 100;
const SPARK_SECONDS = 60;
/** At most this often, the backends and agents are loaded again for an id not known yet. */
const NAMES_RELOAD_MS = 5000;

type StatusFilter = 'all' | '2xx' | '3xx' | '4xx' | '5xx' | 'error';

/** True when an event passes the status and path filters. */
export function matchesFilter(event: TraceEvent, status: StatusFilter, path: string): boolean {
  if (path && !`${event.host ?? ''}${event.path}`.toLowerCase().includes(path.toLowerCase())) return false;
  if (status === 'all') return true;
  if (status === 'error') return Boolean(event.error) || event.status === null;
  return event.status !== null && String(event.status)[0] === status[0];
}

function statusTone(event: TraceEvent): string {
  if (event.error || event.status === null) return 'bad';
  if (event.status >= 500) return 'bad';
  if (event.status >= 400) return 'warn';
  if (event.status >= 300) return 'info';
  return 'ok';
}

/** The environment's backends and agents, for naming the ones trace events refer to. */
interface Names {
  backends: readonly Backend[];
  agents: readonly Agent[];
}

/** `b:ID` for a backend, `a:ID` for an agent: what an event refers to. */
function namedIn(key: string, names: Names): boolean {
  const id = key.slice(2);
  return key.startsWith('b:')
    ? names.backends.some((b) => b.id === id)
    : names.agents.some((a) => a.id === id);
}

/**
 * Loads the backends and agents of the environment, and again (at most every
 * {@link NAMES_RELOAD_MS}) while an event names a backend or agent not among
 * them; one still missing after a load (deleted since) is not asked for again.
 */
function useNames(api: Client, events: readonly TraceEvent[]): Names {
  const [names, setNames] = useState<Names>({ backends: [], agents: [] });
  const [loads, setLoads] = useState(0);
  const lastLoad = useRef(0);
  const missing = useRef(new Set<string>());
  const refs = new Set<string>();
  for (const e of events) {
    if (!e.backend) continue;
    refs.add(`b:${e.backend.backendId}`);
    if (e.backend.agentId !== undefined) refs.add(`a:${e.backend.agentId}`);
  }
  const wanted = [...refs]
    .filter((key) => !namedIn(key, names) && !missing.current.has(key))
    .sort()
    .join(' ');
  useEffect(() => {
    if (loads > 0 && wanted === '') return;
    let live = true;
    const timer = window.setTimeout(
      () => {
        lastLoad.current = Date.now();
        Promise.all([
          api.get<{ backends: Backend[] }>('/api/v1/proxy/backends').catch(() => ({ backends: [] })),
          api.get<{ agents: Agent[] }>('/api/v1/agents').catch(() => ({ agents: [] })),
        ]).then(([b, a]) => {
          if (!live) return;
          const loaded = { backends: b.backends ?? [], agents: a.agents ?? [] };
          for (const key of wanted.split(' ')) if (key && !namedIn(key, loaded)) missing.current.add(key);
          setNames(loaded);
          setLoads((n) => n + 1);
        });
      },
      loads === 0 ? 0 : Math.max(0, lastLoad.current + NAMES_RELOAD_MS - Date.now()),
    );
    return () => {
      live = false;
      window.clearTimeout(timer);
    };
  }, [api, wanted, loads]);
  return names;
}

/** The backend, member and agent of an event, named; the route's target otherwise. */
function TargetCell(props: { event: TraceEvent; names: Names }) {
  const { event, names } = props;
  const via = event.backend;
  if (!via) return <>{event.target ?? '—'}</>;
  const backend = names.backends.find((b) => b.id === via.backendId);
  const member = backend?.members.find((m) => m.id === via.memberId);
  const agent = via.agentId ? names.agents.find((a) => a.id === via.agentId) : undefined;
  return (
    <div data-testid="trace-backend">
      backend <strong>{backend?.name ?? via.backendId}</strong>
      <div class="small">
        {via.memberId === null ? (
          <span class="bad-text">no usable member</span>
        ) : (
          <>
            member{' '}
            <span class="mono">
              {member ? (member.type === 'upstream' ? member.url : member.upstreamUrl) : via.memberId}
            </span>
          </>
        )}
      </div>
      {via.agentId ? (
        <div class="small" data-testid="trace-agent">
          through agent <strong>{agent?.name ?? via.agentId}</strong>
        </div>
      ) : null}
    </div>
  );
}

function formatBytes(n: number | undefined): string {
  if (n === undefined || n === null) return '—';
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export function TrafficPage(props: { environment: string }) {
  const api = useMemo(() => clientFor(props.environment), [props.environment]);
  const [events, setEvents] = useState<TraceEvent[]>([]);
  const [paused, setPaused] = useState(false);
  const [held, setHeld] = useState<TraceEvent[]>([]);
  const [state, setState] = useState<StreamState>({ kind: 'connecting' });
  const [dropped, setDropped] = useState(0);
  const [error, setError] = useState<unknown>(null);
  const [statusFilter, setStatusFilter] = useState<StatusFilter>('all');
  const [pathFilter, setPathFilter] = useState('');
  const [now, setNow] = useState(() => Date.now());
  const arrivals = useRef<number[]>([]);
  const pausedRef = useRef(paused);
  pausedRef.current = paused;

  useEffect(() => {
    let stream: TrafficStream | null = null;
    let cancelled = false;
    const add = (event: TraceEvent) => {
      arrivals.current.push(Date.now());
      if (pausedRef.current) setHeld((h) => [event, ...h].slice(0, MAX_EVENTS));
      else setEvents((list) => [event, ...list].slice(0, MAX_EVENTS));
    };
    (async () => {
      let after: number | null = null;
      try {
        const recent = await api.get<{ events: TraceEvent[] }>(
          `/api/v1/traffic/recent?limit=${INITIAL_EVENTS}`,
        );
        if (cancelled) return;
        const list = recent.events ?? [];
        after = list.length ? list[list.length - 1]!.seq : 0;
        for (const e of list) {
          const t = Date.parse(e.time);
          if (!Number.isNaN(t)) arrivals.current.push(t);
        }
        setEvents([...list].reverse().slice(0, MAX_EVENTS));
      } catch (err) {
        if (cancelled) return;
        setError(err);
        if (err instanceof ApiError && err.status === 401) return;
      }
      stream = new TrafficStream({
        environment: props.environment,
        after,
        onEvent: add,
        onState: (s) => {
          setState(s);
          if (s.kind === 'live') setError(null);
        },
        onDropped: (count) => setDropped((d) => d + count),
        probe: async () => {
          try {
            const newest = await api.get<{ events: TraceEvent[] }>('/api/v1/traffic/recent?limit=1');
            return newest.events?.at(-1)?.seq ?? null;
          } catch (err) {
            throw new Error(messageOf(err));
          }
        },
      });
      stream.start();
    })();
    const tick = window.setInterval(() => {
      const t = Date.now();
      arrivals.current = arrivals.current.filter((a) => a > t - SPARK_SECONDS * 1000);
      setNow(t);
    }, 1000);
    return () => {
      cancelled = true;
      stream?.stop();
      window.clearInterval(tick);
    };
  }, [api, props.environment]);

  const resume = () => {
    setEvents((list) => [...held, ...list].slice(0, MAX_EVENTS));
    setHeld([]);
    setPaused(false);
  };

  // Recomputed on every render (each event, and the one-second tick), so a request counts at once.
  const perSecond = new Array<number>(SPARK_SECONDS).fill(0);
  const end = Math.floor(Math.max(now, Date.now()) / 1000);
  for (const t of arrivals.current) {
    const index = SPARK_SECONDS - 1 - (end - Math.floor(t / 1000));
    if (index >= 0 && index < SPARK_SECONDS) perSecond[index]! += 1;
  }
  const shown = events.filter((e) => matchesFilter(e, statusFilter, pathFilter));
  const names = useNames(api, events);

  return (
    <section>
      <SectionHead title="Traffic">
        <StreamStatus state={state} paused={paused} />
        {paused ? (
          <button type="button" class="primary" onClick={resume}>
            Resume{held.length ? ` (${held.length} new)` : ''}
          </button>
        ) : (
          <button type="button" class="secondary" onClick={() => setPaused(true)}>
            Pause
          </button>
        )}
        <button
          type="button"
          class="secondary"
          onClick={() => {
            setEvents([]);
            setHeld([]);
          }}
        >
          Clear
        </button>
      </SectionHead>
      <ErrorMessage error={error} />
      <div class="traffic-top">
        <div class="card spark-card">
          <div class="muted small">Requests per second, last {SPARK_SECONDS} s</div>
          <Sparkline values={perSecond} label="Requests per second over the last minute" />
          <div class="small">
            now {perSecond[SPARK_SECONDS - 1] ?? 0}/s · peak {Math.max(...perSecond)}/s
          </div>
        </div>
        <TraceSettings environment={props.environment} dropped={dropped} live={state.kind === 'live'} />
      </div>
      <div class="filters">
        <label class="inline">
          Status{' '}
          <select
            value={statusFilter}
            onChange={(e) => setStatusFilter(e.currentTarget.value as StatusFilter)}
          >
            <option value="all">All</option>
            <option value="2xx">2xx</option>
            <option value="3xx">3xx</option>
            <option value="4xx">4xx</option>
            <option value="5xx">5xx</option>
            <option value="error">Errors</option>
          </select>
        </label>
        <label class="inline">
          Path contains{' '}
          <input type="search" value={pathFilter} onInput={(e) => setPathFilter(e.currentTarget.value)} />
        </label>
        <span class="muted small">
          {shown.length} of {events.length} shown
        </span>
      </div>
      <DataTable
        testId="traffic-table"
        tableClass="traffic"
        what="requests"
        rows={shown}
        rowKey={(event) => String(event.seq)}
        rowAttributes={(event) => ({ 'data-seq': String(event.seq) })}
        emptyRow={events.length === 0 ? 'Waiting for requests…' : 'No request matches the filters.'}
        columns={[
          { header: 'Time', class: 'nowrap', cell: (event) => new Date(event.time).toLocaleTimeString() },
          { header: 'Method', cell: (event) => event.method },
          { header: 'Host', class: 'mono', cell: (event) => event.host ?? '—' },
          { header: 'Path', class: 'mono break', cell: (event) => event.path },
          { header: 'Status', cell: (event) => <StatusCell event={event} /> },
          {
            header: 'Duration',
            class: 'nowrap',
            cell: (event) => (event.durationMs === null ? '—' : `${formatNumber(event.durationMs)} ms`),
          },
          {
            header: 'In / out',
            class: 'nowrap',
            cell: (event) => `${formatBytes(event.bytesIn)} / ${formatBytes(event.bytesOut)}`,
          },
          {
            header: 'Target',
            class: 'break',
            cell: (event) =>
              event.backend ? (
                <TargetCell event={event} names={names} />
              ) : (
                <span class="mono">{event.target ?? '—'}</span>
              ),
          },
          { header: 'Client', class: 'mono', cell: (event) => event.clientIp ?? '—' },
        ]}
      />
    </section>
  );
}

function StatusCell(props: { event: TraceEvent }) {
  const { event } = props;
  return (
    <>
      <span class={`status ${statusTone(event)}`} title={event.error ?? undefined}>
        {event.status ?? 'ERR'}
      </span>
      {event.error ? <small class="bad-text"> {event.error}</small> : null}
      {event.policy?.length ? (
        <ul class="policy-decisions" data-testid="policy-decisions">
          {event.policy.map((d, i) => (
            <li key={`${i}-${d.stage}`}>
              <small class="mono">
                {d.stage} · {d.rule} → {d.action}
              </small>
            </li>
          ))}
        </ul>
      ) : null}
    </>
  );
}

function StreamStatus(props: { state: StreamState; paused: boolean }) {
  const { state } = props;
  const text = props.paused
    ? 'Paused'
    : state.kind === 'live'
      ? 'Live'
      : state.kind === 'connecting'
        ? 'Connecting…'
        : `Reconnecting in ${Math.ceil(state.inMs / 1000)} s${state.reason ? `: ${state.reason}` : ''}`;
  const tone = props.paused
    ? 'muted'
    : state.kind === 'live'
      ? 'ok'
      : state.kind === 'connecting'
        ? 'info'
        : 'warn';
  return (
    <span
      class={`badge ${tone}`}
      role="status"
      data-testid="stream-status"
      data-state={state.kind}
      data-attempt={state.kind === 'retrying' ? state.attempt : undefined}
      data-retry-ms={state.kind === 'retrying' ? state.inMs : undefined}
    >
      {text}
    </span>
  );
}

function TraceSettings(props: { environment: string; dropped: number; live: boolean }) {
  const api = useMemo(() => clientFor(props.environment), [props.environment]);
  const [settings, setSettings] = useState<TrafficSettings | null>(null);
  const [error, setError] = useState<unknown>(null);
  const load = () =>
    api.get<TrafficSettings>('/api/v1/traffic/settings').then(
      (s) => {
        setSettings(s);
        setError(null);
      },
      (err: unknown) => setError(err),
    );
  // Loaded again when the stream (re)connects, so the subscriber count includes this view.
  useEffect(() => {
    load();
    const timer = window.setInterval(load, 10_000);
    return () => window.clearInterval(timer);
  }, [props.live]);
  // The controls apply as they are chosen: what they show is read from the form.
  const save = async (form: HTMLFormElement) => {
    const control = (name: string) => form.elements.namedItem(name) as HTMLInputElement | HTMLSelectElement;
    const next = await api.put<TrafficSettings>('/api/v1/traffic/settings', {
      enabled: (control('tracingEnabled') as HTMLInputElement).checked,
      level: control('level').value,
    });
    setSettings((s) => ({ ...s, ...next }));
  };
  return (
    <Form class="card settings-card" onSubmit={save} fields={[]} repeatable submitOnChange>
      <div class="muted small">Tracing</div>
      {settings ? (
        <>
          <label class="inline">
            <input type="checkbox" name="tracingEnabled" checked={settings.enabled} /> Enabled
          </label>
          <label class="inline">
            Level{' '}
            <select name="level" value={settings.level}>
              <option value="basic">basic</option>
              <option value="detailed">detailed</option>
              <option value="headers">headers (redacted)</option>
            </select>
          </label>
          <div class="small muted">
            {settings.subscribers ?? '?'} subscribers · {formatNumber(settings.emittedEvents ?? 0)} emitted ·{' '}
            {formatNumber(settings.droppedEvents ?? 0)} dropped
            {props.dropped ? ` · ${props.dropped} lost by this view` : ''}
          </div>
        </>
      ) : error ? null : (
        <span class="muted small">Loading…</span>
      )}
      <ErrorMessage error={error} />
    </Form>
  );
}
