import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ReplError } from '../../../common/errors';
import { CommandRunner, ViewVerifier, checkEnv } from '../../../cli/commands/drill-check';
import { computeRpo, executeDrill, DrillReport } from '../../../cli/commands/drill';
import { runDrillCommand } from '../../../cli/commands/drill-command';
import { reportPaths } from '../../../cli/report/files';
import { useTmpDir } from '../../helpers/tmpdir';
import { FakeHubApi, viewJson, volumeStatus } from './fake-hub-api';

/** A clock that advances 10 ms per reading: durations are deterministic. */
function tickingClock(start = Date.parse('2024-05-01T10:00:05.000Z')): () => number {
  let t = start;
  return () => (t += 10);
}

const passVerify: ViewVerifier = async (_v, sums) => ({
  regionSize: sums.regionSize, regions: sums.regions.length, bytes: sums.size, mismatches: [], mismatchCount: 0, detail: null,
});
const exitWith = (code: number): CommandRunner => async () => ({ exitCode: code, signal: null, outputTail: `exit ${code}\n` });

class Out {
  text = '';
  write(s: string): boolean {
    this.text += s;
    return true;
  }
}

function commandDeps(client: FakeHubApi, cwd: string, extra: Partial<Parameters<typeof runDrillCommand>[1]> = {}) {
  const codes: number[] = [];
  const out = new Out();
  const err = new Out();
  const signals = new EventEmitter();
  return {
    codes, out, err, signals,
    deps: { client, out, err, cwd, signals, setExitCode: (c: number) => codes.push(c), verify: passVerify, now: tickingClock(), ...extra },
  };
}

const baseOptions = { volume: 'vol1', at: 'latest', keep: false, hub: 'ws://hub:7400', json: false };

describe('executeDrill', () => {
  test('success path: view created at the selector, checked over NBD checksums, measured, discarded', async () => {
    const client = new FakeHubApi();
    const r = await executeDrill(
      { volume: 'vol1', at: '2024-05-01T10:00:00.000Z', keep: false },
      { client, runCommand: exitWith(99), verify: passVerify, signal: new AbortController().signal, now: tickingClock() },
    );
    expect(r.result).toBe('passed');
    expect(client.calls.find((c) => c.method === 'POST')?.body).toEqual({
      volume: 'vol1', at: '2024-05-01T10:00:00.000Z', readOnly: false, kind: 'test',
    });
    expect(r.check).toMatchObject({ kind: 'checksum', passed: true, regions: 16 });
    expect(r.rto.exportReadyMs).toBeGreaterThan(0);
    expect(r.rto.checkPassedMs).toBeGreaterThan(r.rto.exportReadyMs!);
    expect(r.rto.hubReadyMs).toBe(12);
    expect(r.rpo.seconds).toBeCloseTo(0.75);
    expect(r.teardown).toEqual({ kept: false, discarded: true, overlayBytes: 8192, error: null });
    expect(r.steps.map((s) => s.name)).toEqual(['status', 'create-view', 'check', 'teardown']);
    expect(r.steps.every((s) => s.ok && s.endMs >= s.startMs)).toBe(true);
    expect(r.lagHistory).toHaveLength(2);
    expect(client.count('DELETE', '/v1/views/vol1-test-3f9a')).toBe(1);
  });

  test('a --check command gets the view coordinates in its environment', async () => {
    const client = new FakeHubApi();
    let seen: Record<string, string> = {};
    const runner: CommandRunner = async (cmd, env) => {
      seen = env;
      expect(cmd).toBe('fsck -n "$REP_NBD_URI"');
      return { exitCode: 0, signal: null, outputTail: 'clean' };
    };
    const r = await executeDrill(
      { volume: 'vol1', at: 'latest', check: 'fsck -n "$REP_NBD_URI"', keep: false },
      { client, runCommand: runner, verify: passVerify, signal: new AbortController().signal },
    );
    expect(r.result).toBe('passed');
    expect(seen).toMatchObject({
      REP_NBD_URI: 'nbd://127.0.0.1:10810/vol1-test-3f9a', REP_NVME_TRADDR: '127.0.0.1', REP_NVME_TRSVCID: '4430',
      REP_NVME_NQN: 'nqn.2024-05.io.blockrep:vol1-test-3f9a', REP_VIEW_ID: 'vol1-test-3f9a', REP_VOLUME: 'vol1',
    });
    expect(client.count('GET', '/v1/views/vol1-test-3f9a/checksums')).toBe(0);
  });

  test('an unknown volume throws before anything is created', async () => {
    const client = new FakeHubApi();
    client.routes.delete('GET /v1/volumes/vol1');
    await expect(
      executeDrill({ volume: 'vol1', at: 'latest', keep: false }, { client, runCommand: exitWith(0), verify: passVerify, signal: new AbortController().signal }),
    ).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
    expect(client.calls.some((c) => c.method === 'POST')).toBe(false);
  });

  test('a checksum mismatch fails the drill and the view is still discarded', async () => {
    const client = new FakeHubApi();
    const verify: ViewVerifier = async () => ({ regionSize: 65536, regions: 16, bytes: 1 << 20, mismatches: [3], mismatchCount: 1, detail: '1 of 16 regions differ' });
    const r = await executeDrill({ volume: 'vol1', at: 'latest', keep: false }, { client, runCommand: exitWith(0), verify, signal: new AbortController().signal });
    expect(r.result).toBe('failed');
    expect(r.rto.checkPassedMs).toBeNull();
    expect(r.teardown.discarded).toBe(true);
  });
});

describe('runDrillCommand', () => {
  const tmp = useTmpDir('drill-');

  test('passed: exit status untouched, summary printed, JSON + HTML report written', async () => {
    const client = new FakeHubApi();
    const h = commandDeps(client, tmp.path);
    const r = await runDrillCommand({ ...baseOptions, report: 'out/my-drill.html' }, h.deps);
    expect(r.result).toBe('passed');
    expect(h.codes).toEqual([]);
    expect(h.out.text).toContain('drill of vol1: PASSED');
    const saved = JSON.parse(fs.readFileSync(path.join(tmp.path, 'out/my-drill.json'), 'utf8')) as DrillReport;
    expect(saved.result).toBe('passed');
    expect(fs.readFileSync(path.join(tmp.path, 'out/my-drill.html'), 'utf8')).toContain('<svg');
    expect(h.signals.listenerCount('SIGINT')).toBe(0);
  });

  test('failed check: exit status 1 and the view is still deleted', async () => {
    const client = new FakeHubApi();
    const h = commandDeps(client, tmp.path, { runCommand: exitWith(3) });
    const r = await runDrillCommand({ ...baseOptions, check: 'false' }, h.deps);
    expect(r.result).toBe('failed');
    expect(h.codes).toEqual([1]);
    expect(client.count('DELETE', '/v1/views/vol1-test-3f9a')).toBe(1);
    expect(fs.readdirSync(tmp.path).sort()).toEqual([
      expect.stringMatching(/^drill-vol1-\d{8}T\d{6}Z\.html$/),
      expect.stringMatching(/^drill-vol1-\d{8}T\d{6}Z\.json$/),
    ]);
  });

  test('Ctrl-C while the check runs: the check is aborted, the view deleted, exit status 130', async () => {
    const client = new FakeHubApi();
    let h: ReturnType<typeof commandDeps>;
    const hanging: CommandRunner = (_cmd, _env, signal) =>
      new Promise((resolve) => {
        signal.addEventListener('abort', () => resolve({ exitCode: null, signal: 'SIGTERM', outputTail: '' }));
        setImmediate(() => h.signals.emit('SIGINT'));
      });
    h = commandDeps(client, tmp.path, { runCommand: hanging });
    const r = await runDrillCommand({ ...baseOptions, check: 'sleep 1000' }, h.deps);
    expect(r.result).toBe('aborted');
    expect(h.codes).toEqual([130]);
    expect(client.count('DELETE', '/v1/views/vol1-test-3f9a')).toBe(1);
    expect(h.err.text).toContain('SIGINT: stopping the drill');
  });

  test('SIGTERM while the view is being created: the view is deleted once it exists', async () => {
    const client = new FakeHubApi();
    const h = commandDeps(client, tmp.path);
    client.on('POST', '/v1/views', () => {
      h.signals.emit('SIGTERM');
      return viewJson();
    });
    const r = await runDrillCommand(baseOptions, h.deps);
    expect(r.result).toBe('aborted');
    expect(r.check).toBeNull();
    expect(h.codes).toEqual([143]);
    expect(client.count('DELETE', '/v1/views/vol1-test-3f9a')).toBe(1);
  });

  test('--keep keeps the view and says how to discard it', async () => {
    const client = new FakeHubApi();
    const h = commandDeps(client, tmp.path);
    const r = await runDrillCommand({ ...baseOptions, keep: true, json: true }, h.deps);
    expect(r.teardown).toMatchObject({ kept: true, discarded: false });
    expect(client.count('DELETE', '/v1/views/vol1-test-3f9a')).toBe(0);
    expect(h.codes).toEqual([]);
    const printed = JSON.parse(h.out.text) as { files: { json: string; html: string }; report: DrillReport };
    expect(printed.report.result).toBe('passed');
    expect(fs.existsSync(printed.files.html)).toBe(true);
  });

  test('hub error after the volume was found: report written, ReplError re-thrown with its code', async () => {
    const client = new FakeHubApi();
    client.on('POST', '/v1/views', () => {
      throw new ReplError('E_RANGE', 'point outside retention');
    });
    const h = commandDeps(client, tmp.path);
    await expect(runDrillCommand({ ...baseOptions, report: 'r' }, h.deps)).rejects.toMatchObject({
      code: 'E_RANGE',
      message: expect.stringContaining('point outside retention'),
    });
    const saved = JSON.parse(fs.readFileSync(path.join(tmp.path, 'r.json'), 'utf8')) as DrillReport;
    expect(saved.result).toBe('error');
    expect(saved.error?.code).toBe('E_RANGE');
    expect(client.calls.some((c) => c.method === 'DELETE')).toBe(false);
  });

  test('a view that cannot be discarded makes a passed drill exit non-zero', async () => {
    const client = new FakeHubApi();
    client.routes.delete('DELETE /v1/views/vol1-test-3f9a');
    const h = commandDeps(client, tmp.path);
    const r = await runDrillCommand(baseOptions, h.deps);
    expect(r.result).toBe('passed');
    expect(r.teardown.error).toContain('no route');
    expect(h.codes).toEqual([1]);
    expect(h.err.text).toContain('repctl discard vol1-test-3f9a');
  });
});

describe('RPO and report paths', () => {
  test('computeRpo follows its definition', () => {
    const view = viewJson();
    expect(computeRpo(view, volumeStatus()).seconds).toBeCloseTo(0.75);
    const covered = volumeStatus({ agent: { ackedSeq: 1000, ackedTime: '2024-05-01T10:00:09.000Z', dirtyBytes: 0, queueBytes: 0, ahead: false } });
    expect(computeRpo(view, covered)).toMatchObject({ seconds: 0, note: expect.stringContaining('every acknowledged') });
    expect(computeRpo(view, volumeStatus({ agent: null })).seconds).toBeNull();
    expect(computeRpo(null, volumeStatus()).seconds).toBeNull();
  });

  test('reportPaths: default stem, explicit stem, and .json/.html suffixes', () => {
    const at = new Date('2024-05-01T10:02:03.456Z');
    expect(reportPaths(undefined, 'vol/1', at, '/w')).toEqual({ json: '/w/drill-vol_1-20240501T100203Z.json', html: '/w/drill-vol_1-20240501T100203Z.html' });
    expect(reportPaths('r/x', 'v', at, '/w')).toEqual({ json: '/w/r/x.json', html: '/w/r/x.html' });
    expect(reportPaths('/abs/x.json', 'v', at, '/w')).toEqual({ json: '/abs/x.json', html: '/abs/x.html' });
    expect(reportPaths('x.HTML', 'v', at, '/w').json).toBe('/w/x.json');
  });

  test('checkEnv leaves missing exports empty', () => {
    expect(checkEnv(viewJson({ nbd: null, nvme: null }))).toMatchObject({ REP_NBD_URI: '', REP_NVME_NQN: '', REP_VIEW_ID: 'vol1-test-3f9a' });
  });
});
