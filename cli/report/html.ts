/**
 * Drill report as one self-contained HTML page: a pure function from the
 * report JSON to a string (no I/O, no external assets: inline CSS, inline SVG).
 * Every string taken from the report goes through esc(); numbers are
 * formatted by us. Sections: verdict, RTO/RPO summary, the view's
 * coordinates, the check, a timeline of the drill's steps, and the
 * replication lag over the last hour as an SVG line chart.
 */
import { formatBytes } from '../../common/size';
import type { DrillReport, DrillStep } from '../commands/drill';
import type { LagSampleJson } from '../commands/recovery-api';

export function esc(value: unknown): string {
  return String(value)
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/"/g, '&quot;')
    .replace(/'/g, '&#39;');
}

function ms(v: number | null): string {
  if (v === null) return '—';
  return v < 10000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`;
}

function seconds(v: number | null): string {
  return v === null ? 'unknown' : `${v.toFixed(3)} s`;
}

const CSS = `
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem auto;max-width:60rem;color:#1d2330;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .3rem}h2{font-size:1.1rem;margin:1.8rem 0 .5rem;border-bottom:1px solid #dde2ea;padding-bottom:.2rem}
.badge{display:inline-block;padding:.15rem .6rem;border-radius:.3rem;color:#fff;font-weight:600;letter-spacing:.03em}
.passed{background:#1f8a4c}.failed{background:#c0392b}.error{background:#8e44ad}.aborted{background:#7f8c8d}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25rem .5rem;border-bottom:1px solid #eef1f5;vertical-align:top}
th{width:14rem;color:#556070;font-weight:500}code,pre{font:12px/1.4 ui-monospace,Menlo,Consolas,monospace}
pre{background:#f5f7fa;padding:.6rem;overflow:auto;max-height:20rem;border-radius:.3rem}
.cards{display:flex;gap:1rem;flex-wrap:wrap}.card{flex:1;min-width:11rem;border:1px solid #dde2ea;border-radius:.4rem;padding:.6rem .8rem}
.card .v{font-size:1.4rem;font-weight:600}.card .k{color:#556070;font-size:.85rem}.muted{color:#7a8494;font-size:.85rem}
svg text{font:11px system-ui,sans-serif;fill:#556070}`;

function row(key: string, value: string): string {
  return `<tr><th>${esc(key)}</th><td>${value}</td></tr>`;
}

function card(key: string, value: string, note: string): string {
  return `<div class="card"><div class="k">${esc(key)}</div><div class="v">${esc(value)}</div><div class="muted">${esc(note)}</div></div>`;
}

function viewSection(r: DrillReport): string {
  const v = r.view;
  if (!v) return '<p class="muted">No view was created.</p>';
  const rows = [
    row('view', `<code>${esc(v.id)}</code> (${esc(v.kind)}, ${v.readOnly ? 'read-only' : 'writable'})`),
    row('recovery point', `epoch ${esc(v.point.epoch)}, seq ${esc(v.point.seq)}, ${esc(v.point.time)}`),
    row('NBD', v.nbd ? `<code>${esc(v.nbd.uri)}</code>` : 'none'),
    row(
      'NVMe/TCP',
      v.nvme ? `traddr <code>${esc(v.nvme.traddr)}</code> trsvcid <code>${esc(v.nvme.trsvcid)}</code> nqn <code>${esc(v.nvme.nqn)}</code>` : 'none',
    ),
    row(
      'teardown',
      r.teardown.kept
        ? 'kept (--keep)'
        : r.teardown.discarded
          ? `discarded (${esc(formatBytes(r.teardown.overlayBytes ?? 0))} overlay dropped)`
          : `<strong>not discarded</strong>: ${esc(r.teardown.error ?? 'unknown')}`,
    ),
  ];
  return `<table>${rows.join('')}</table>`;
}

function checkSection(r: DrillReport): string {
  const c = r.check;
  if (!c) return `<p class="muted">The check did not run${r.error ? `: ${esc(r.error.message)}` : ''}.</p>`;
  if (c.kind === 'command') {
    return `<table>${[
      row('command', `<code>${esc(c.command)}</code>`),
      row('result', `${c.passed ? 'passed' : 'FAILED'} (exit ${esc(c.exitCode ?? `signal ${c.signal ?? '?'}`)}) in ${esc(ms(c.durationMs))}`),
    ].join('')}</table><pre>${esc(c.outputTail || '(no output)')}</pre>`;
  }
  return `<table>${[
    row('method', 'whole view read over NBD, sha256 per region compared with the hub'),
    row('regions', `${esc(c.regions)} × ${esc(formatBytes(c.regionSize))}, ${esc(formatBytes(c.bytes))} read in ${esc(ms(c.durationMs))}`),
    row('result', c.passed ? 'all regions match' : esc(c.detail ?? `${c.mismatchCount} regions differ`)),
    ...(c.mismatches.length > 0 ? [row('mismatching regions', esc(c.mismatches.join(', ')))] : []),
  ].join('')}</table>`;
}

/** Horizontal bars, one per step, on a shared time axis. */
export function timelineSvg(steps: DrillStep[], totalMs: number): string {
  const width = 760;
  const label = 110;
  const barH = 18;
  const height = steps.length * (barH + 8) + 24;
  const span = Math.max(totalMs, ...steps.map((s) => s.endMs), 1);
  const x = (t: number): number => label + (t / span) * (width - label - 10);
  const bars = steps.map((s, i) => {
    const y = 4 + i * (barH + 8);
    const w = Math.max(2, x(s.endMs) - x(s.startMs));
    const color = s.ok ? '#2e86de' : '#c0392b';
    return (
      `<text x="0" y="${y + 13}">${esc(s.name)}</text>` +
      `<rect x="${x(s.startMs).toFixed(1)}" y="${y}" width="${w.toFixed(1)}" height="${barH}" rx="3" fill="${color}">` +
      `<title>${esc(`${s.name}: ${ms(s.startMs)} → ${ms(s.endMs)}${s.detail ? ` (${s.detail})` : ''}`)}</title></rect>` +
      `<text x="${(x(s.startMs) + w + 4).toFixed(1)}" y="${y + 13}">${esc(ms(s.endMs - s.startMs))}</text>`
    );
  });
  const axisY = height - 6;
  return (
    `<svg class="timeline" xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">` +
    bars.join('') +
    `<text x="${label}" y="${axisY}">0</text><text x="${width - 60}" y="${axisY}">${esc(ms(span))}</text></svg>`
  );
}

/** Replication lag (seconds) over time as a polyline with one vertex per sample. */
export function lagChartSvg(samples: LagSampleJson[]): string {
  const pts = samples
    .map((s) => ({ t: Date.parse(s.time), lag: Number(s.lagSeconds) }))
    .filter((p) => Number.isFinite(p.t) && Number.isFinite(p.lag));
  if (pts.length === 0) return '<p class="muted">The hub reported no lag samples.</p>';
  const [W, H, left, bottom, top] = [760, 220, 56, 24, 10];
  const t0 = Math.min(...pts.map((p) => p.t));
  const t1 = Math.max(...pts.map((p) => p.t), t0 + 1);
  const maxLag = Math.max(...pts.map((p) => p.lag), 0.001);
  const x = (t: number): number => left + ((t - t0) / (t1 - t0)) * (W - left - 10);
  const y = (v: number): number => top + (1 - v / maxLag) * (H - top - bottom);
  const poly = pts.map((p) => `${x(p.t).toFixed(1)},${y(Math.max(0, p.lag)).toFixed(1)}`).join(' ');
  const maxBytes = Math.max(...samples.map((s) => Number(s.lagBytes) || 0));
  return (
    `<svg class="lag" xmlns="http://www.w3.org/2000/svg" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}">` +
    `<line x1="${left}" y1="${top}" x2="${left}" y2="${H - bottom}" stroke="#aab2bf"/>` +
    `<line x1="${left}" y1="${H - bottom}" x2="${W - 10}" y2="${H - bottom}" stroke="#aab2bf"/>` +
    `<text x="4" y="${top + 10}">${esc(maxLag.toFixed(3))} s</text><text x="4" y="${H - bottom}">0 s</text>` +
    `<text x="${left}" y="${H - 6}">${esc(new Date(t0).toISOString())}</text>` +
    `<text x="${W - 200}" y="${H - 6}">${esc(new Date(t1).toISOString())}</text>` +
    `<polyline fill="none" stroke="#2e86de" stroke-width="1.5" points="${poly}"/></svg>` +
    `<p class="muted">${pts.length} samples; peak lag ${esc(maxLag.toFixed(3))} s, peak unreplicated ${esc(formatBytes(maxBytes))}.</p>`
  );
}

export function renderDrillHtml(r: DrillReport): string {
  const verdict = r.result === 'passed' ? 'PASSED' : r.result.toUpperCase();
  const rpoNote = r.rpo.note ?? (r.rpo.ackedTime ? `newest acknowledged write ${r.rpo.ackedTime}` : '');
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>Recovery drill ${esc(r.volume)} ${esc(verdict)}</title><style>${CSS}</style></head>
<body>
<h1>Recovery drill of <code>${esc(r.volume)}</code> <span class="badge ${esc(r.result)}">${esc(verdict)}</span></h1>
<p class="muted">hub ${esc(r.hub ?? 'unknown')} · point selector ${esc(r.at)} · started ${esc(r.startedAt)} · took ${esc(ms(r.durationMs))}</p>
${r.error ? `<p><strong>Error ${esc(r.error.code)}:</strong> ${esc(r.error.message)}</p>` : ''}
<div class="cards">
${card('RTO (export ready)', ms(r.rto.exportReadyMs), `hub-side ${ms(r.rto.hubReadyMs)}`)}
${card('RTO (check passed)', ms(r.rto.checkPassedMs), r.check ? `check took ${ms(r.check.durationMs)}` : 'check did not pass')}
${card('RPO', seconds(r.rpo.seconds), rpoNote)}
</div>
<h2>Recovery view</h2>${viewSection(r)}
<h2>Check</h2>${checkSection(r)}
<h2>Timeline</h2>${timelineSvg(r.steps, r.durationMs)}
<h2>Replication lag, last hour</h2>${lagChartSvg(r.lagHistory)}
<h2>Definitions</h2><table>${row('RTO (export ready)', esc(r.definitions.rtoExport))}${row('RTO (check passed)', esc(r.definitions.rtoCheck))}${row('RPO', esc(r.definitions.rpo))}</table>
</body></html>
`;
}
