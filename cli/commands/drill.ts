/**
 * `repctl drill`: a recovery rehearsal that measures itself and cleans up.
 *
 *   t0 ─ status ─ create-view ─┬─ check ─ teardown (DELETE view; skipped with --keep)
 *        (RPO inputs,          │  (command or
 *         lag history)         │   NBD checksum check)
 *                              └─ export ready: RTO(export) = now - t0
 *
 * Teardown runs in `finally`: after a failed check, an error, or an abort
 * (Ctrl-C / SIGTERM arrive as an AbortSignal). A view created while an abort
 * was pending is still discarded: we wait for POST /v1/views to answer, so we
 * always learn the id. executeDrill touches no process state: the hub client,
 * the clock, the check runners and the signal are injected (unit-tested with
 * fakes). runDrill is the convenience form (default runners, report files);
 * drill-command.ts adds the CLI's process wiring (signals, exit status).
 *
 * Definitions (also written into every report):
 *  - RTO(export): t0 -> the hub answered POST /v1/views (NBD + NVMe exports live).
 *  - RTO(check):  t0 -> the check passed (a verified, usable recovery volume).
 *  - RPO: the write history the recovery point misses: agent.ackedTime (newest
 *    write the agent acknowledged to its initiators, read at t0) minus
 *    point.time; 0 when the point already holds that write (point.seq >=
 *    agent.ackedSeq); null when the agent never reported.
 */
import { ReplError, asReplError } from '../../common/errors';
import { reportPaths, writeReport } from '../report/files';
import { VolumeStatusJson } from './status';
import { ChecksumResult, CommandResult, CommandRunner, ViewVerifier, checkEnv, nbdVerifier, shellRunner } from './drill-check';
import { HubApi, LagSampleJson, ViewJson, createTestView, discardView, getChecksums, getLagHistory, getVolume } from './recovery-api';

export const RTO_EXPORT_DEFINITION = 'drill start -> hub answered POST /v1/views with the NBD and NVMe/TCP exports serving';
export const RTO_CHECK_DEFINITION = 'drill start -> the check passed (a verified, usable recovery volume)';
export const RPO_DEFINITION =
  "agent.ackedTime (newest write the agent acknowledged to its initiators, read from the hub at drill start) minus " +
  'the recovery point time; 0 when the point already contains that write (point.seq >= agent.ackedSeq)';

export type DrillResult = 'passed' | 'failed' | 'error' | 'aborted';

export interface DrillStep {
  name: string;
  /** Milliseconds since drill start. */
  startMs: number;
  endMs: number;
  ok: boolean;
  detail: string | null;
}

export type CheckReport =
  | ({ kind: 'command'; command: string; passed: boolean; durationMs: number } & CommandResult)
  | ({ kind: 'checksum'; passed: boolean; durationMs: number } & ChecksumResult);

export interface RpoReport {
  seconds: number | null;
  pointTime: string | null;
  pointSeq: number | null;
  ackedTime: string | null;
  ackedSeq: number | null;
  note: string | null;
}

export interface DrillReport {
  kind: 'repctl-drill';
  version: 1;
  volume: string;
  hub: string | null;
  at: string;
  startedAt: string;
  finishedAt: string;
  durationMs: number;
  result: DrillResult;
  error: { code: string; message: string } | null;
  view: ViewJson | null;
  check: CheckReport | null;
  rto: { exportReadyMs: number | null; hubReadyMs: number | null; checkPassedMs: number | null };
  rpo: RpoReport;
  teardown: { kept: boolean; discarded: boolean; overlayBytes: number | null; error: string | null };
  steps: DrillStep[];
  volumeStatus: VolumeStatusJson | null;
  lagHistory: LagSampleJson[];
  definitions: { rtoExport: string; rtoCheck: string; rpo: string };
}

export interface DrillOptions {
  volume: string;
  /** Point selector, already validated (parseAt). */
  at: string;
  /** Shell command; without it the view is verified over NBD against the hub's checksums. */
  check?: string;
  keep: boolean;
  /** Hub URL, for the report only. */
  hub?: string;
}

export interface DrillDeps {
  client: HubApi;
  runCommand: CommandRunner;
  verify: ViewVerifier;
  signal: AbortSignal;
  now?: () => number;
  progress?: (line: string) => void;
}

class Aborted extends Error {}

/** RPO per the definition above. */
export function computeRpo(view: ViewJson | null, status: VolumeStatusJson | null): RpoReport {
  const point = view?.point ?? null;
  const agent = status?.agent ?? null;
  const base: RpoReport = {
    seconds: null,
    pointTime: point?.time ?? null,
    pointSeq: point?.seq ?? null,
    ackedTime: agent?.ackedTime ?? null,
    ackedSeq: agent?.ackedSeq ?? null,
    note: null,
  };
  if (!point) return { ...base, note: 'no recovery point was opened' };
  if (!agent || agent.ackedTime === null) return { ...base, note: 'the agent has not reported an acknowledged write' };
  if (point.seq >= agent.ackedSeq) return { ...base, seconds: 0, note: 'the point contains every acknowledged write' };
  const ms = Date.parse(agent.ackedTime) - Date.parse(point.time);
  if (Number.isNaN(ms)) return { ...base, note: 'unparseable time in hub status' };
  return { ...base, seconds: Math.max(0, ms) / 1000 };
}

/**
 * Runs one drill. Throws (ReplError) only when the volume cannot be read at
 * all (unknown volume, hub unreachable): then nothing was created and there
 * is nothing to report. Every later outcome is a report, `result` says which.
 */
export async function executeDrill(options: DrillOptions, deps: DrillDeps): Promise<DrillReport> {
  const now = deps.now ?? Date.now;
  const say = deps.progress ?? (() => undefined);
  const t0 = now();
  const steps: DrillStep[] = [];
  const step = async <T>(name: string, fn: () => Promise<T>, detail?: (v: T) => string | null): Promise<T> => {
    const s: DrillStep = { name, startMs: now() - t0, endMs: 0, ok: false, detail: null };
    steps.push(s);
    try {
      const v = await fn();
      s.ok = true;
      s.detail = detail ? detail(v) : null;
      return v;
    } catch (err) {
      s.detail = err instanceof Aborted ? 'aborted' : (err as Error).message;
      throw err;
    } finally {
      s.endMs = now() - t0;
    }
  };
  const report: DrillReport = {
    kind: 'repctl-drill', version: 1, volume: options.volume, hub: options.hub ?? null, at: options.at,
    startedAt: new Date(t0).toISOString(), finishedAt: '', durationMs: 0, result: 'error', error: null,
    view: null, check: null, rto: { exportReadyMs: null, hubReadyMs: null, checkPassedMs: null },
    rpo: computeRpo(null, null), teardown: { kept: options.keep, discarded: false, overlayBytes: null, error: null },
    steps, volumeStatus: null, lagHistory: [],
    definitions: { rtoExport: RTO_EXPORT_DEFINITION, rtoCheck: RTO_CHECK_DEFINITION, rpo: RPO_DEFINITION },
  };
  const { client, signal } = deps;
  const [status, lag] = await step('status', () =>
    Promise.all([getVolume(client, options.volume), getLagHistory(client, options.volume).catch(() => [])]),
  );
  report.volumeStatus = status;
  report.lagHistory = lag;
  const checkAbort = (): void => {
    if (signal.aborted) throw new Aborted('aborted');
  };
  try {
    checkAbort();
    say(`creating a test view of ${options.volume} at ${options.at}`);
    const view = await step('create-view', () => createTestView(client, options.volume, options.at), (v) => `${v.id} at epoch ${v.point.epoch}`);
    report.view = view;
    report.rto.exportReadyMs = now() - t0;
    report.rto.hubReadyMs = view.readyMs;
    report.rpo = computeRpo(view, status);
    say(`view ${view.id} ready after ${report.rto.exportReadyMs} ms (${view.nbd?.uri ?? 'no NBD export'})`);
    checkAbort();
    const check = await step('check', () => runCheck(options, deps, view, now), (c) => (c.passed ? 'passed' : 'FAILED'));
    checkAbort();
    report.check = check;
    report.result = check.passed ? 'passed' : 'failed';
    if (check.passed) report.rto.checkPassedMs = now() - t0;
    say(`check ${check.passed ? 'passed' : 'FAILED'}`);
  } catch (err) {
    if (err instanceof Aborted || signal.aborted) report.result = 'aborted';
    else {
      const e = asReplError(err);
      report.result = 'error';
      report.error = { code: e.code, message: e.message };
    }
  } finally {
    await teardown(report, options, deps, step, say);
    report.durationMs = now() - t0;
    report.finishedAt = new Date(t0 + report.durationMs).toISOString();
  }
  return report;
}

async function runCheck(options: DrillOptions, deps: DrillDeps, view: ViewJson, now: () => number): Promise<CheckReport> {
  const started = now();
  if (options.check !== undefined) {
    deps.progress?.(`running check: ${options.check}`);
    const r = await deps.runCommand(options.check, checkEnv(view), deps.signal);
    return { kind: 'command', command: options.check, ...r, passed: r.exitCode === 0, durationMs: now() - started };
  }
  deps.progress?.(`reading the whole view over NBD and comparing checksums`);
  const sums = await getChecksums(deps.client, view.id);
  const r = await deps.verify(view, sums, deps.signal);
  const passed = r.mismatchCount === 0 && r.detail === null;
  return { kind: 'checksum', ...r, passed, durationMs: now() - started };
}

async function teardown(
  report: DrillReport,
  options: DrillOptions,
  deps: DrillDeps,
  step: <T>(name: string, fn: () => Promise<T>) => Promise<T>,
  say: (line: string) => void,
): Promise<void> {
  const view = report.view;
  if (!view) return;
  if (options.keep) {
    say(`keeping view ${view.id} (--keep); discard it with: repctl discard ${view.id}`);
    return;
  }
  say(`discarding view ${view.id}`);
  try {
    const r = await step('teardown', () => discardView(deps.client, view.id));
    report.teardown.discarded = true;
    report.teardown.overlayBytes = r.overlayBytes;
  } catch (err) {
    report.teardown.error = err instanceof ReplError ? err.message : String(err);
  }
}

export interface RunDrillOptions {
  client: HubApi;
  volume: string;
  /** Point selector (default 'latest'), validated like --at. */
  at?: string;
  check?: string;
  keep?: boolean;
  hub?: string;
  /** Report stem (PATH.json + PATH.html; a .json/.html suffix is dropped); default drill-<volume>-<time> in cwd. */
  reportPath?: string;
  cwd?: string;
  signal?: AbortSignal;
  progress?: (line: string) => void;
}

export interface DrillOutcome extends DrillReport {
  passed: boolean;
  reportJson: string;
  reportHtml: string;
}

/**
 * Convenience form for programs (the demo): default runners (check output is
 * only kept in the report), report files written. Like executeDrill it throws
 * only when the volume cannot be read; `passed` says whether the check passed.
 */
export async function runDrill(o: RunDrillOptions): Promise<DrillOutcome> {
  const report = await executeDrill(
    { volume: o.volume, at: o.at ?? 'latest', check: o.check, keep: o.keep ?? false, hub: o.hub },
    {
      client: o.client,
      runCommand: shellRunner(),
      verify: nbdVerifier(),
      signal: o.signal ?? new AbortController().signal,
      progress: o.progress,
    },
  );
  const paths = reportPaths(o.reportPath, o.volume, new Date(report.startedAt), o.cwd ?? process.cwd());
  await writeReport(paths, report);
  return { ...report, passed: report.result === 'passed', reportJson: paths.json, reportHtml: paths.html };
}
