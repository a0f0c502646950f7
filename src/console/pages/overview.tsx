/** Overview of the selected environment: the numbers of `GET /api/v1/overview` and a chart of them. */
import { useEffect } from 'preact/hooks';
import { clientFor } from '../api';
import { BarChart, formatNumber } from '../components/charts';
import { ErrorMessage, SectionHead, useResource } from '../components/ui';

const REFRESH_MS = 5000;

/** `requests.last5m` → "Requests · last 5m"; `p95LatencyMs` → "P95 latency ms". */
export function humanize(path: string[]): string {
  return path
    .map((part) => {
      const words = part
        .replace(/([a-z])([A-Z0-9])/g, '$1 $2')
        .replace(/_/g, ' ')
        .toLowerCase();
      return words.charAt(0).toUpperCase() + words.slice(1);
    })
    .join(' · ');
}

/** Every finite number of a JSON value with its path, in document order. */
export function numbersOf(value: unknown, path: string[] = []): { path: string[]; value: number }[] {
  if (typeof value === 'number' && Number.isFinite(value)) return [{ path, value }];
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    return Object.entries(value as Record<string, unknown>).flatMap(([k, v]) => numbersOf(v, [...path, k]));
  }
  return [];
}

export function OverviewPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const overview = useResource(() => api.get<Record<string, unknown>>('/api/v1/overview'), []);
  const info = useResource(
    () => api.get<{ version: string; instanceId: string; uptimeSeconds: number }>('/api/v1/system/info'),
    [],
  );
  const reload = overview.reload;
  useEffect(() => {
    const timer = window.setInterval(reload, REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [reload]);

  const numbers = numbersOf(overview.data ?? {});
  const bars = numbers
    .filter((n) => !/latency|ms$|rate|percent|ratio/i.test(n.path.join('.')))
    .map((n) => ({
      label: humanize(n.path),
      value: n.value,
      tone: /error/i.test(n.path.join('.')) ? 'bad' : '',
    }));

  return (
    <section>
      <SectionHead title="Overview" />
      {info.data ? (
        <p class="muted" data-testid="instance-info">
          p2pstream {info.data.version} · instance <span class="mono">{info.data.instanceId}</span> · up{' '}
          {formatUptime(info.data.uptimeSeconds)}
        </p>
      ) : null}
      <ErrorMessage error={overview.error ?? info.error} />
      {overview.loading && !overview.data ? <p class="muted">Loading…</p> : null}
      {numbers.length > 0 ? (
        <>
          <div class="cards" data-testid="overview-cards">
            {numbers.map((n) => (
              <div class="card stat" key={n.path.join('.')}>
                <div class="stat-value">{formatNumber(n.value)}</div>
                <div class="stat-label">{humanize(n.path)}</div>
              </div>
            ))}
          </div>
          {bars.length > 0 ? (
            <div class="card chart-card">
              <h2>Counts</h2>
              <BarChart bars={bars} label="Overview counts" />
            </div>
          ) : null}
        </>
      ) : null}
    </section>
  );
}

function formatUptime(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}
