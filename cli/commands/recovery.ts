/**
 * repctl recovery commands: views, points, failover (--test for a test view),
 * discard, failback, drill. Each is a thin adapter: parse options, call the
 * hub's recovery API (recovery-api.ts), print a human summary or --json.
 * Errors are ReplErrors (the hub client maps HTTP answers to codes); run.ts
 * turns them into exit codes. Nothing here exits the process.
 */
import type { Argv } from 'yargs';
import { ReplError } from '../../common/errors';
import { formatBytes } from '../../common/size';
import { parseDuration } from '../args';
import { HubClient } from '../hub-client';
import { runDrillCommand, TextOut } from './drill-command';
import {
  FailbackJson,
  HubApi,
  PointJson,
  ViewJson,
  createTestView,
  discardView,
  failover,
  getFailback,
  listPoints,
  listViews,
  parseAt,
  startFailback,
} from './recovery-api';

export interface CliIo {
  out: TextOut;
  err: TextOut;
  /** Directory default drill reports go to. */
  cwd: string;
}

const defaultIo = (): CliIo => ({ out: process.stdout, err: process.stderr, cwd: process.cwd() });

const json = (v: unknown): string => `${JSON.stringify(v, null, 2)}\n`;

export function formatView(v: ViewJson): string {
  const mode = v.readOnly ? 'read-only' : 'writable';
  const lines = [
    `view ${v.id}  (volume ${v.volume}, ${v.kind}, ${mode})`,
    `  point    epoch ${v.point.epoch}, seq ${v.point.seq}, ${v.point.time}`,
    `  created  ${v.createdAt} (ready in ${v.readyMs} ms); overlay ${formatBytes(v.overlayBytes)} written`,
    `  nbd      ${v.nbd ? v.nbd.uri : '-'}`,
  ];
  if (v.nvme) {
    lines.push(
      `  nvme     traddr ${v.nvme.traddr}  trsvcid ${v.nvme.trsvcid}  nqn ${v.nvme.nqn}`,
      `           nvme connect -t tcp -a ${v.nvme.traddr} -s ${v.nvme.trsvcid} -n ${v.nvme.nqn}`,
    );
  } else lines.push('  nvme     -');
  return `${lines.join('\n')}\n`;
}

export function formatViews(views: ViewJson[]): string {
  if (views.length === 0) return 'no views\n';
  return views.map(formatView).join('\n');
}

export function formatPoints(volume: string, points: PointJson[], limit: number): string {
  if (points.length === 0) return `volume ${volume} has no recovery points yet\n`;
  const sorted = [...points].sort((a, b) => a.epoch - b.epoch);
  const shown = limit > 0 ? sorted.slice(-limit) : sorted;
  const head = `volume ${volume}: ${points.length} recovery point(s) from ${sorted[0]!.time} to ${sorted[sorted.length - 1]!.time}`;
  const w = Math.max(5, ...shown.map((p) => String(p.epoch).length));
  const sw = Math.max(3, ...shown.map((p) => String(p.seq).length));
  const rows = shown.map((p) => `${String(p.epoch).padStart(w)}  ${String(p.seq).padStart(sw)}  ${p.time}`);
  const more = shown.length < sorted.length ? [`(${sorted.length - shown.length} older points not shown; --limit 0 shows all)`] : [];
  return `${[head, `${'EPOCH'.padStart(w)}  ${'SEQ'.padStart(sw)}  TIME`, ...rows, ...more].join('\n')}\n`;
}

export function formatFailback(f: FailbackJson): string {
  const pct = f.volumeSize > 0 ? ((100 * f.shippedBytes) / f.volumeSize).toFixed(2) : '0';
  const lines = [
    `failback of ${f.volume}: ${f.state}`,
    `  shipped   ${formatBytes(f.shippedBytes)} of a ${formatBytes(f.volumeSize)} volume (${pct} %)`,
    `  delta     ${formatBytes(f.changedBytes)} changed on the recovery side + ${formatBytes(f.agentDirtyBytes)} the protected side never replicated` +
      (f.hubAheadBytes > 0 ? ` + ${formatBytes(f.hubAheadBytes)} replicated after the failover point` : ''),
    `  started   ${f.startedAt}${f.finishedAt ? `, finished ${f.finishedAt}` : ''}`,
  ];
  if (f.error) lines.push(`  error     ${f.error}`);
  return `${lines.join('\n')}\n`;
}

export interface FailbackWaitDeps {
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
  pollMs?: number;
  onUpdate?: (f: FailbackJson) => void;
}

/** Starts (or joins) the failback and polls until it is done; failed -> E_IO, too slow -> E_TIMEOUT. */
export async function runFailback(client: HubApi, volume: string, timeoutMs: number, deps: FailbackWaitDeps = {}): Promise<FailbackJson> {
  const now = deps.now ?? Date.now;
  const sleep = deps.sleep ?? ((t: number) => new Promise<void>((r) => setTimeout(r, t)));
  const deadline = now() + timeoutMs;
  let f = await startFailback(client, volume);
  for (;;) {
    deps.onUpdate?.(f);
    if (f.state === 'done') return f;
    if (f.state === 'failed') throw new ReplError('E_IO', `failback of ${volume} failed: ${f.error ?? 'no reason given'}`);
    if (now() >= deadline) {
      throw new ReplError(
        'E_TIMEOUT',
        `failback of ${volume} not done after ${Math.round(timeoutMs / 1000)} s (state ${f.state}, shipped ${formatBytes(f.shippedBytes)}); it continues on the hub`,
      );
    }
    await sleep(deps.pollMs ?? 500);
    f = await getFailback(client, volume);
  }
}

function progressPrinter(err: TextOut): (f: FailbackJson) => void {
  let last = '';
  return (f) => {
    const hint = f.state === 'waiting-for-agent' ? ' (start repagent for this volume with its state dir; the hub ships the delta to it)' : '';
    const line = `failback: ${f.state}, shipped ${formatBytes(f.shippedBytes)} of ${formatBytes(f.changedBytes + f.agentDirtyBytes + f.hubAheadBytes)}${hint}`;
    if (line !== last) err.write(`${line}\n`);
    last = line;
  };
}

/** Registers views, points, failover, discard, failback and drill on repctl's yargs instance. */
export function registerRecoveryCommands(
  cli: Argv<any>, // eslint-disable-line @typescript-eslint/no-explicit-any
  clientFor: (hub: string) => HubClient,
  setExitCode: (code: number) => void,
  io: CliIo = defaultIo(),
): void {
  const hub = { type: 'string', demandOption: true, describe: 'hub URL (ws://, wss://, http:// or https://)' } as const;
  const asJson = { type: 'boolean', default: false, describe: 'machine-readable output' } as const;
  const at = { type: 'string', default: 'latest', describe: "recovery point: 'latest', an epoch number, or an ISO time (newest point at or before it)" } as const;
  const volume = { type: 'string', demandOption: true, describe: 'volume name' } as const;
  cli
    .command(
      'views',
      'list recovery views (test and failover) with their NBD and NVMe/TCP coordinates',
      (y) => y.option('hub', hub).option('volume', { type: 'string', describe: 'only views of this volume' }).option('json', asJson),
      async (a) => {
        const views = await listViews(clientFor(a.hub), a.volume);
        io.out.write(a.json ? json({ views }) : formatViews(views));
      },
    )
    .command(
      'points',
      'list the recovery points of a volume',
      (y) =>
        y.option('hub', hub).option('volume', volume).option('json', asJson)
          .option('limit', { type: 'number', default: 20, describe: 'newest N points in the table (0: all; --json always lists all)' }),
      async (a) => {
        const points = await listPoints(clientFor(a.hub), a.volume);
        io.out.write(a.json ? json({ volume: a.volume, points }) : formatPoints(a.volume, points, a.limit));
      },
    )
    .command(
      'failover',
      'open a volume at a recovery point: --test for a disposable test view, otherwise a real failover (fences the agent)',
      (y) =>
        y.option('hub', hub).option('volume', volume).option('at', at).option('json', asJson)
          .option('test', { type: 'boolean', default: false, describe: 'test view: replication keeps running, writes go to a scratch overlay' })
          .option('read-only', { type: 'boolean', default: false, describe: 'with --test: export the view read-only' }),
      async (a) => {
        const point = parseAt(a.at);
        const client = clientFor(a.hub);
        if (a.test) {
          const view = await createTestView(client, a.volume, point, a['read-only']);
          io.out.write(a.json ? json({ view }) : `${formatView(view)}discard it with: repctl discard ${view.id} --hub ${a.hub}\n`);
          return;
        }
        if (a['read-only']) throw new ReplError('E_USAGE', '--read-only applies to --test views only');
        const r = await failover(client, a.volume, point);
        io.out.write(
          a.json
            ? json(r)
            : `volume ${a.volume} FAILED OVER to epoch ${r.view.point.epoch} (${r.view.point.time}); its agent is fenced until failback\n` +
                `${formatView(r.view)}when the protected site is back: repctl failback --volume ${a.volume} --hub ${a.hub}\n`,
        );
      },
    )
    .command(
      'discard <view>',
      'close a view: stop its exports and delete its overlay',
      (y) => y.positional('view', { type: 'string', demandOption: true, describe: 'view id (see repctl views)' }).option('hub', hub).option('json', asJson),
      async (a) => {
        const r = await discardView(clientFor(a.hub), String(a.view));
        io.out.write(a.json ? json(r) : `discarded view ${r.discarded} (${formatBytes(r.overlayBytes)} of overlay dropped)\n`);
      },
    )
    .command(
      'failback',
      'ship what changed on the recovery side back to the protected volume, then resume replication',
      (y) =>
        y.option('hub', hub).option('volume', volume).option('json', asJson)
          .option('timeout', { type: 'string', default: '30m', describe: 'stop waiting after this long (the hub carries on)' }),
      async (a) => {
        const timeoutMs = parseDuration(a.timeout, '--timeout');
        const f = await runFailback(clientFor(a.hub), a.volume, timeoutMs, { onUpdate: a.json ? undefined : progressPrinter(io.err) });
        io.out.write(a.json ? json(f) : formatFailback(f));
      },
    )
    .command(
      'drill',
      'rehearse a recovery: open a test view, check it, measure RTO/RPO, tear it down, write a JSON + HTML report',
      (y) =>
        y.option('hub', hub).option('volume', volume).option('at', at).option('json', asJson)
          .option('check', { type: 'string', describe: 'shell command run against the view (env REP_NBD_URI, REP_NVME_TRADDR, REP_NVME_TRSVCID, REP_NVME_NQN, REP_VIEW_ID, REP_VOLUME); default: read the view over NBD and compare checksums with the hub' })
          .option('report', { type: 'string', describe: 'report path stem (PATH.json + PATH.html); default ./drill-<volume>-<time>' })
          .option('keep', { type: 'boolean', default: false, describe: 'keep the view afterwards (discard it later with repctl discard)' }),
      async (a) => {
        await runDrillCommand(
          { volume: a.volume, at: parseAt(a.at), check: a.check, keep: a.keep, hub: a.hub, report: a.report, json: a.json },
          { client: clientFor(a.hub), out: io.out, err: io.err, setExitCode, cwd: io.cwd },
        );
      },
    );
}
