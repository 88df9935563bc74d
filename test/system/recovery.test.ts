/**
 * Recovery views against real NBD clients (QEMU's block layer): an in-process
 * hub fed by a fake agent; qemu-io writes into a writable test view and reads
 * back from a new connection while the replica stays untouched; qemu-img
 * compare checks a read-only view at an older point byte for byte against an
 * expected image built in the test. Tools run as child processes (the hub
 * shares this event loop) and are killed by PID if still running.
 */
import { ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { makeTmpDir, removeTmpDir } from '../helpers/tmpdir';
import { requireTool } from '../helpers/tools';
import { MiB, Running, api, fill, pairAgent, startHub, stopAll, writeAndSeal } from '../integration/hub/recovery-harness';

const SIZE = 16 * MiB;
const children = new Set<ChildProcess>();

interface RunResult {
  code: number | null;
  out: string;
}

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.pid && process.kill(child.pid, 'SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, out });
    });
  });
}

function expectOk(r: RunResult): void {
  if (r.code !== 0) throw new Error(`exit ${r.code}: ${r.out}`);
}

const describeWith = requireTool('qemu-io', 'qemu-img') ? describe : describe.skip;

describeWith('recovery views with qemu-io and qemu-img', () => {
  let dir: string;
  let r: Running;

  beforeEach(() => {
    dir = makeTmpDir('recovery-sys-');
  });

  afterEach(async () => {
    for (const c of children) if (c.pid && c.exitCode === null) process.kill(c.pid, 'SIGKILL');
    children.clear();
    await stopAll();
    removeTmpDir(dir);
  });

  const uriOf = (view: { nbd: { uri: string } }): string => view.nbd.uri;

  it('qemu-io writes into a test view and reads back; the replica keeps its data', async () => {
    r = await startHub(path.join(dir, 'hub'));
    const a = await pairAgent(r, { volumeSize: SIZE });
    await writeAndSeal(a, [{ offset: MiB, data: fill(MiB, 0x11) }]);
    const view = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: 'latest' })).body;
    const uri = uriOf(view);
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x11 1M 1M', uri]));
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1M 512k', '-c', 'write -z 3M 64k', '-c', 'flush', uri]));
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 1M 512k', '-c', 'read -P 0x11 1536k 512k', '-c', 'read -P 0 3M 64k', uri]));
    const replicaUri = `nbd://127.0.0.1:${r.ports.nbdPort}/vol1`;
    expectOk(await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x11 1M 1M', replicaUri]));
    const wrong = await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xab 1M 4k', replicaUri]);
    expect(wrong.code).toBe(1);
    expect((await api(r.ports.httpPort, 'GET', `/v1/views/${view.id}`)).body.overlayBytes).toBe(512 * 1024 + 64 * 1024);
  });

  it('qemu-img compare: a read-only view at an older point equals the expected image', async () => {
    r = await startHub(path.join(dir, 'hub'));
    const a = await pairAgent(r, { volumeSize: SIZE });
    const expected = Buffer.alloc(SIZE);
    const pieces = Array.from({ length: 24 }, (_, i) => ({ offset: ((i * 7919) % 256) * 64 * 1024, data: randomBytes(64 * 1024) }));
    for (const p of pieces) p.data.copy(expected, p.offset);
    const epoch = await writeAndSeal(a, pieces);
    await writeAndSeal(a, [{ offset: 5 * MiB, data: fill(MiB, 0x77) }]); // after the point
    const ref = path.join(dir, 'expected.img');
    fs.writeFileSync(ref, expected);

    const old = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: String(epoch), readOnly: true })).body;
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uriOf(old)]);
    expectOk(same);
    expect(same.out).toMatch(/identical/);
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 4k', uriOf(old)]);
    expect(w.code).not.toBe(0);

    const latest = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: 'latest', readOnly: true })).body;
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uriOf(latest)]);
    expect(diff.code).toBe(1);
    expect(diff.out).toMatch(/Content mismatch/);
  });
});
