/**
 * Process wiring of `repctl drill` around executeDrill (drill.ts): SIGINT/SIGTERM
 * become an abort (the drill then tears the view down; a second Ctrl-C has no
 * handler of ours left and ends the process at once), the report is written
 * as JSON + HTML, a summary is printed, and the outcome becomes the exit
 * status: passed -> 0, failed check -> 1, aborted -> 130/143, error -> the
 * ReplError is re-thrown for run.ts's toExitCode. A view that could not be
 * discarded is reported loudly and makes the exit status non-zero.
 */
import { ErrorCode, ReplError } from '../../common/errors';
import { formatBytes } from '../../common/size';
import { ReportPaths, reportPaths, writeReport } from '../report/files';
import { CommandRunner, ViewVerifier, nbdVerifier, shellRunner } from './drill-check';
import { DrillOptions, DrillReport, executeDrill } from './drill';
import { HubApi } from './recovery-api';

export interface TextOut {
  write(text: string): unknown;
}

export interface SignalSource {
  once(event: 'SIGINT' | 'SIGTERM', listener: () => void): unknown;
  removeListener(event: 'SIGINT' | 'SIGTERM', listener: () => void): unknown;
}

export interface DrillCommandOptions extends DrillOptions {
  /** --report PATH (stem, or a .json/.html path). */
  report?: string;
  json: boolean;
}

export interface DrillCommandDeps {
  client: HubApi;
  out: TextOut;
  err: TextOut;
  setExitCode: (code: number) => void;
  /** Directory the default report path is relative to. */
  cwd: string;
  signals?: SignalSource;
  runCommand?: CommandRunner;
  verify?: ViewVerifier;
  now?: () => number;
}

const ms = (v: number | null): string => (v === null ? '-' : v < 10000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(1)} s`);

export function formatDrillSummary(r: DrillReport, paths: ReportPaths): string {
  const lines = [`drill of ${r.volume}: ${r.result.toUpperCase()}`];
  if (r.view) lines.push(`  point     epoch ${r.view.point.epoch}, seq ${r.view.point.seq}, ${r.view.point.time}`);
  lines.push(
    `  RTO       export ready ${ms(r.rto.exportReadyMs)} (hub ${ms(r.rto.hubReadyMs)}), check passed ${ms(r.rto.checkPassedMs)}`,
    `  RPO       ${r.rpo.seconds === null ? 'unknown' : `${r.rpo.seconds.toFixed(3)} s`}${r.rpo.note ? ` (${r.rpo.note})` : ''}`,
  );
  const c = r.check;
  if (c?.kind === 'command') lines.push(`  check     \`${c.command}\` exit ${c.exitCode ?? `signal ${c.signal}`} in ${ms(c.durationMs)}`);
  if (c?.kind === 'checksum') {
    const what = c.passed ? 'all match' : (c.detail ?? `${c.mismatchCount} differ`);
    lines.push(`  check     ${c.regions} regions x ${formatBytes(c.regionSize)} read over NBD: ${what} (${ms(c.durationMs)})`);
  }
  if (r.error) lines.push(`  error     ${r.error.message}`);
  if (r.view) {
    const fate = r.teardown.kept ? 'kept (--keep)' : r.teardown.discarded ? 'discarded' : `NOT discarded: ${r.teardown.error}`;
    lines.push(`  view      ${r.view.id} ${fate}`);
  }
  lines.push(`  report    ${paths.html}`, `            ${paths.json}`);
  return `${lines.join('\n')}\n`;
}

export async function runDrillCommand(options: DrillCommandOptions, deps: DrillCommandDeps): Promise<DrillReport> {
  const signals = deps.signals ?? process;
  const controller = new AbortController();
  let caught: 'SIGINT' | 'SIGTERM' | null = null;
  const onSignal = (sig: 'SIGINT' | 'SIGTERM'): void => {
    caught = sig;
    deps.err.write(`\n${sig}: stopping the drill and discarding its view (repeat to exit without cleanup)\n`);
    controller.abort();
  };
  const onInt = (): void => onSignal('SIGINT');
  const onTerm = (): void => onSignal('SIGTERM');
  signals.once('SIGINT', onInt);
  signals.once('SIGTERM', onTerm);
  let report: DrillReport;
  try {
    report = await executeDrill(options, {
      client: deps.client,
      runCommand: deps.runCommand ?? shellRunner((chunk) => deps.err.write(chunk.toString('utf8'))),
      verify:
        deps.verify ??
        nbdVerifier(undefined, options.json ? undefined : (done, total) => deps.err.write(`drill: read ${formatBytes(done)} of ${formatBytes(total)}\n`)),
      signal: controller.signal,
      now: deps.now,
      progress: options.json ? undefined : (line) => deps.err.write(`drill: ${line}\n`),
    });
  } finally {
    signals.removeListener('SIGINT', onInt);
    signals.removeListener('SIGTERM', onTerm);
  }
  const paths = reportPaths(options.report, options.volume, new Date(report.startedAt), deps.cwd);
  await writeReport(paths, report);
  deps.out.write(options.json ? `${JSON.stringify({ files: paths, report }, null, 2)}\n` : formatDrillSummary(report, paths));
  if (report.view && !report.teardown.kept && !report.teardown.discarded) {
    deps.err.write(`repctl: view ${report.view.id} is still exported; discard it with: repctl discard ${report.view.id} --hub ...\n`);
  }
  switch (report.result) {
    case 'passed':
      if (report.view && !report.teardown.kept && !report.teardown.discarded) deps.setExitCode(1);
      break;
    case 'failed':
      deps.setExitCode(1);
      break;
    case 'aborted':
      deps.setExitCode(caught === 'SIGTERM' ? 143 : 130);
      break;
    case 'error': {
      const e = report.error ?? { code: 'E_INTERNAL', message: 'drill failed without an error' };
      throw new ReplError(e.code as ErrorCode, `drill of ${options.volume}: ${e.message}`);
    }
  }
  return report;
}
