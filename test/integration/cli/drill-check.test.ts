/**
 * The drill's check runners with real processes and sockets, and Ctrl-C on a
 * real `repctl drill` process (cli/repctl.ts run through ts-register).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { nbdVerifier, shellRunner } from '../../../cli/commands/drill-check';
import { ViewJson } from '../../../cli/commands/recovery-api';
import { MemoryDevice } from '../../../common/block/memory-device';
import { NbdServer } from '../../../common/nbd/server';
import { killHard, spawnTs } from '../../helpers/run-ts';
import { useTmpDir } from '../../helpers/tmpdir';
import { waitFor } from '../../helpers/wait-for';
import { FakeRecoveryHub } from './fake-recovery-hub';

const ROOT = path.join(__dirname, '..', '..', '..');

/** Running (a zombie counts as dead: its reaper may be a PID 1 that never reaps). */
function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('shellRunner', () => {
  const tmp = useTmpDir('drill-check-');

  test('passes the environment, returns the exit status and the output tail', async () => {
    const chunks: string[] = [];
    const r = await shellRunner((c) => chunks.push(c.toString()))(
      'echo "view=$REP_VIEW_ID"; echo oops >&2; exit 3',
      { REP_VIEW_ID: 'v-1' },
      new AbortController().signal,
    );
    expect(r).toEqual({ exitCode: 3, signal: null, outputTail: expect.stringContaining('view=v-1') });
    expect(r.outputTail).toContain('oops');
    expect(chunks.join('')).toContain('view=v-1');
  });

  test('keeps only the tail of long output', async () => {
    const r = await shellRunner()('head -c 100000 /dev/zero | tr "\\0" a; echo END', {}, new AbortController().signal);
    expect(r.exitCode).toBe(0);
    expect(r.outputTail.length).toBeLessThanOrEqual(8192);
    expect(r.outputTail.endsWith('END\n')).toBe(true);
  });

  test('abort kills the whole process group, background children included', async () => {
    const pidFile = path.join(tmp.path, 'bg.pid');
    const controller = new AbortController();
    const started = Date.now();
    const done = shellRunner()(`sleep 30 & echo $! > ${pidFile}; wait`, {}, controller.signal);
    const bg = Number(await waitFor(() => fs.existsSync(pidFile) && fs.readFileSync(pidFile, 'utf8').trim()));
    controller.abort();
    const r = await done;
    expect(r.exitCode === null || r.exitCode > 128).toBe(true);
    expect(Date.now() - started).toBeLessThan(5000);
    await waitFor(() => !alive(bg), { what: 'background sleep to die' });
  });
});

describe('nbdVerifier', () => {
  let server: NbdServer;
  let port: number;
  const device = new MemoryDevice(256 * 1024);

  beforeAll(async () => {
    server = new NbdServer();
    port = (await server.listen('127.0.0.1', 0)).port;
    server.addExport({ name: 'v', device, readOnly: true });
  });
  afterAll(async () => {
    await server.close();
  });

  const view = (): ViewJson => ({
    id: 'v', volume: 'vol1', kind: 'test', readOnly: true, point: { epoch: 1, seq: 1, time: '2024-05-01T10:00:00.000Z' },
    createdAt: '2024-05-01T10:00:00.000Z', readyMs: 1, nbd: { uri: `nbd://127.0.0.1:${port}/v`, host: '127.0.0.1', port, export: 'v' },
    nvme: null, overlayBytes: 0,
  });

  test('a size mismatch fails the check without reading', async () => {
    const r = await nbdVerifier()(view(), { id: 'v', regionSize: 65536, size: 512 * 1024, algorithm: 'sha256', regions: new Array(8).fill('') }, new AbortController().signal);
    expect(r.detail).toBe('NBD export is 262144 bytes, the hub\'s view is 524288');
    expect(r.bytes).toBe(0);
  });

  test('matching content passes and progress is reported', async () => {
    const { createHash } = await import('node:crypto');
    await device.write(65536, Buffer.alloc(65536, 0x5a));
    const regions: string[] = [];
    for (let off = 0; off < 256 * 1024; off += 65536) regions.push(createHash('sha256').update(await device.read(off, 65536)).digest('hex'));
    const seen: number[] = [];
    const verify = nbdVerifier(undefined, (done) => seen.push(done), 0);
    const r = await verify(view(), { id: 'v', regionSize: 65536, size: 256 * 1024, algorithm: 'sha256', regions }, new AbortController().signal);
    expect(r).toMatchObject({ mismatchCount: 0, detail: null, bytes: 256 * 1024, regions: 4 });
    expect(seen.length).toBeGreaterThan(0);
    regions[2] = regions[1]!;
    const bad = await verify(view(), { id: 'v', regionSize: 65536, size: 256 * 1024, algorithm: 'sha256', regions }, new AbortController().signal);
    expect(bad).toMatchObject({ mismatchCount: 1, mismatches: [2] });
  });

  test('a view without an NBD export is E_INVALID', async () => {
    await expect(
      nbdVerifier()({ ...view(), nbd: null }, { id: 'v', regionSize: 65536, size: 0, algorithm: 'sha256', regions: [] }, new AbortController().signal),
    ).rejects.toMatchObject({ code: 'E_INVALID' });
  });
});

describe('repctl drill as a process', () => {
  const tmp = useTmpDir('drill-proc-');
  let hub: FakeRecoveryHub;
  let child: ChildProcess | null = null;

  beforeEach(async () => {
    hub = new FakeRecoveryHub();
    await hub.start();
  });
  afterEach(async () => {
    if (child) await killHard(child);
    child = null;
    await hub.stop();
  });

  test('Ctrl-C during the check discards the view, writes the report and exits 130', async () => {
    const marker = path.join(tmp.path, 'check-started');
    child = spawnTs(path.join(ROOT, 'cli/repctl.ts'), [
      'drill', '--hub', hub.url, '--volume', 'vol1', '--report', path.join(tmp.path, 'r'), '--check', `touch ${marker}; sleep 30`,
    ]);
    let stderr = '';
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child!.once('exit', (code) => resolve(code)));
    await waitFor(() => fs.existsSync(marker), { timeoutMs: 20000, what: 'check command to start' });
    expect(hub.views.size).toBe(1);
    child.kill('SIGINT');
    expect(await exited).toBe(130);
    expect(hub.views.size).toBe(0);
    expect(stderr).toContain('SIGINT: stopping the drill');
    const report = JSON.parse(fs.readFileSync(path.join(tmp.path, 'r.json'), 'utf8')) as { result: string; teardown: { discarded: boolean } };
    expect(report).toMatchObject({ result: 'aborted', teardown: { discarded: true } });
  });
});
