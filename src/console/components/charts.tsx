/** Inline SVG charts: no library, no canvas, readable in light and dark (they use currentColor). */

/** A small line chart of `values` (oldest first), scaled to its own maximum. */
export function Sparkline(props: { values: number[]; width?: number; height?: number; label: string }) {
  const width = props.width ?? 240;
  const height = props.height ?? 40;
  const max = Math.max(1, ...props.values);
  const n = props.values.length;
  const step = n > 1 ? width / (n - 1) : width;
  const points = props.values
    .map((v, i) => `${(i * step).toFixed(1)},${(height - 2 - (v / max) * (height - 4)).toFixed(1)}`)
    .join(' ');
  return (
    <svg
      class="sparkline"
      viewBox={`0 0 ${width} ${height}`}
      width={width}
      height={height}
      role="img"
      aria-label={props.label}
    >
      <line x1="0" y1={height - 1} x2={width} y2={height - 1} class="axis" />
      {n > 0 ? <polyline points={points} fill="none" stroke="currentColor" stroke-width="1.5" /> : null}
    </svg>
  );
}

/** Horizontal bars with labels and values: the overview's chart. */
export function BarChart(props: { bars: { label: string; value: number; tone?: string }[]; label: string }) {
  const max = Math.max(1, ...props.bars.map((b) => b.value));
  const rowHeight = 26;
  const labelWidth = 150;
  const barWidth = 300;
  const height = props.bars.length * rowHeight;
  return (
    <svg
      class="barchart"
      viewBox={`0 0 ${labelWidth + barWidth + 80} ${height}`}
      role="img"
      aria-label={props.label}
      preserveAspectRatio="xMinYMin meet"
    >
      {props.bars.map((bar, i) => {
        const y = i * rowHeight;
        const w = Math.max(bar.value > 0 ? 2 : 0, (bar.value / max) * barWidth);
        return (
          <g key={bar.label}>
            <text x="0" y={y + 17} class="bar-label">
              {bar.label}
            </text>
            <rect
              x={labelWidth}
              y={y + 4}
              width={w}
              height={rowHeight - 8}
              rx="3"
              class={`bar ${bar.tone ?? ''}`}
            />
            <text x={labelWidth + w + 6} y={y + 17} class="bar-value">
              {formatNumber(bar.value)}
            </text>
          </g>
        );
      })}
    </svg>
  );
}

/** 1234 → "1,234"; 0.1234 → "0.12". */
export function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return '—';
  return Number.isInteger(value)
    ? value.toLocaleString()
    : value.toLocaleString(undefined, { maximumFractionDigits: 2 });
}
