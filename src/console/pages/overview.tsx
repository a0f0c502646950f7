/**
 * Overview of the selected environment: the numbers of `GET /api/v1/overview`
 * (requests, errors, latency, listeners, agents, trace subscribers) with an
 * inline SVG chart, refreshed every few seconds.
 */
import { useEffect, useRef } from 'preact/hooks';
import { clientFor } from '../api';
import { BarChart, formatNumber, Sparkline } from '../components/charts';
import { DataTable } from '../components/data-table';
import { ErrorMessage, formatTime, SectionHead, useResource } from '../components/ui';
import type { Overview } from '../types';

const REFRESH_MS = 5000;
/** Refreshes kept for the trend line (10 minutes at 5 s). */
const HISTORY = 120;

function ms(value: number | null | undefined): string {
  return value === null || value === undefined ? '—' : `${formatNumber(Math.round(value * 10) / 10)} ms`;
}

function errorRate(errors: number, requests: number): string {
  return requests === 0 ? '—' : `${formatNumber(Math.round((errors / requests) * 1000) / 10)} %`;
}

export function OverviewPage(props: { environment: string }) {
  const api = clientFor(props.environment);
  const overview = useResource(() => api.get<Overview>('/api/v1/overview'), []);
  const info = useResource(
    () => api.get<{ version: string; instanceId: string; uptimeSeconds: number }>('/api/v1/system/info'),
    [],
  );
  const history = useRef<{ at: string; requests: number; errors: number }[]>([]);
  const reload = overview.reload;
  useEffect(() => {
    const timer = window.setInterval(reload, REFRESH_MS);
    return () => window.clearInterval(timer);
  }, [reload]);

  const data = overview.data;
  if (data && history.current.at(-1)?.at !== data.generatedAt) {
    history.current = [
      ...history.current,
      { at: data.generatedAt, requests: data.requests?.last5m ?? 0, errors: data.errors?.last5m ?? 0 },
    ].slice(-HISTORY);
  }

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
      {overview.loading && !data ? <p class="muted">Loading…</p> : null}
      {data ? (
        <>
          <div class="cards" data-testid="overview-cards">
            <Stat label="Requests, last 5 min" value={formatNumber(data.requests.last5m)} />
            <Stat label="Requests, last hour" value={formatNumber(data.requests.last1h)} />
            <Stat
              label="Errors, last 5 min"
              value={formatNumber(data.errors.last5m)}
              detail={errorRate(data.errors.last5m, data.requests.last5m)}
              tone={data.errors.last5m > 0 ? 'bad-text' : undefined}
            />
            <Stat
              label="Errors, last hour"
              value={formatNumber(data.errors.last1h)}
              detail={errorRate(data.errors.last1h, data.requests.last1h)}
            />
            <Stat
              label="Latency p50 / p95, 5 min"
              value={ms(data.latencyMs.last5m.p50)}
              detail={`p95 ${ms(data.latencyMs.last5m.p95)}`}
            />
            <Stat
              label="Latency p50 / p95, 1 h"
              value={ms(data.latencyMs.last1h.p50)}
              detail={`p95 ${ms(data.latencyMs.last1h.p95)}`}
            />
            <Stat
              label="Listeners running"
              value={`${data.listeners.running} / ${data.listeners.configured}`}
              tone={data.listeners.running < data.listeners.configured ? 'warn-text' : undefined}
            />
            <Stat label="Agents connected" value={formatNumber(data.agentsConnected)} />
            {data.tunnelled ? (
              <Stat
                label="Through agents, last 5 min"
                value={formatNumber(data.tunnelled.last5m)}
                detail={`${formatNumber(data.tunnelled.last1h)} in the last hour`}
              />
            ) : null}
            <Stat label="Trace subscribers" value={formatNumber(data.traceSubscribers)} />
            <Stat
              label="Cache hit ratio"
              value={
                data.cache.hits + data.cache.misses === 0
                  ? '—'
                  : `${(data.cache.hitRatio * 100).toFixed(1)} %`
              }
              detail={`${formatNumber(data.cache.hits)} hits · ${formatNumber(data.cache.misses)} misses · ${formatNumber(data.cache.entries)} entries`}
            />
          </div>
          {data.replicas.length > 1 ? (
            <div class="card" data-testid="replicas">
              <h2>Control-plane replicas</h2>
              <DataTable
                what="replicas"
                rows={data.replicas}
                rowKey={(replica) => replica.id}
                columns={[
                  {
                    header: 'Replica',
                    cell: (replica) => (
                      <>
                        <span class="mono">{replica.id}</span>
                        {replica.self ? <span class="muted small"> (this one)</span> : null}
                      </>
                    ),
                  },
                  { header: 'Up', cell: (replica) => formatUptime(replica.uptimeSeconds) },
                  { header: 'Agents', cell: (replica) => formatNumber(replica.agentsConnected) },
                  { header: 'Version', cell: (replica) => replica.version },
                ]}
              />
            </div>
          ) : null}
          <div class="chart-row">
            <div class="card chart-card">
              <h2>Requests and errors</h2>
              <BarChart
                label="Requests and errors over the last 5 minutes and the last hour"
                bars={[
                  { label: 'Requests, 5 min', value: data.requests.last5m },
                  { label: 'Errors, 5 min', value: data.errors.last5m, tone: 'bad' },
                  { label: 'Requests, 1 h', value: data.requests.last1h },
                  { label: 'Errors, 1 h', value: data.errors.last1h, tone: 'bad' },
                ]}
              />
            </div>
            <div class="card chart-card">
              <h2>Trend</h2>
              {history.current.length < 2 ? <p class="muted small">Collecting samples…</p> : null}
              <Sparkline
                values={history.current.map((h) => h.requests)}
                width={320}
                height={60}
                label="Requests in the last 5 minutes, sampled every 5 seconds while this page is open"
              />
              <div class="small muted">
                Requests in the last 5 min, sampled every {REFRESH_MS / 1000} s while this page is open ·
                updated {formatTime(data.generatedAt)}
              </div>
            </div>
          </div>
        </>
      ) : null}
    </section>
  );
}

function Stat(props: { label: string; value: string; detail?: string; tone?: string | undefined }) {
  return (
    <div class="card stat">
      <div class={props.tone ? `stat-value ${props.tone}` : 'stat-value'}>{props.value}</div>
      <div class="stat-label">{props.label}</div>
      {props.detail ? <div class="small muted">{props.detail}</div> : null}
    </div>
  );
}

function formatUptime(seconds: number): string {
  if (seconds < 60) return `${seconds} s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ${Math.floor((seconds % 3600) / 60)} min`;
  return `${Math.floor(seconds / 86400)} d ${Math.floor((seconds % 86400) / 3600)} h`;
}
