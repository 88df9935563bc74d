/**
 * Interop with real NBD clients (QEMU's block layer and libnbd tools) against
 * an in-process NbdServer over a FileDevice in a temp dir. Tools run as child
 * processes (async: the server shares this event loop) and are killed by PID
 * if still running after each test.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FileDevice } from '../../common/block/file-device';
import { MemoryDevice } from '../../common/block/memory-device';
import { NbdServer } from '../../common/nbd/server';
import { testLogger } from '../../common/log';
import { makeTmpDir, removeTmpDir } from '../helpers/tmpdir';
import { requireTool } from '../helpers/tools';

const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

const children = new Set<ChildProcess>();

function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    children.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      if (child.pid) process.kill(child.pid, 'SIGKILL');
    }, timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      children.delete(child);
      resolve({ code, stdout, stderr });
    });
  });
}

function expectOk(r: RunResult): void {
  if (r.code !== 0) throw new Error(`exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
}

const itWith = (...tools: string[]): jest.It => (requireTool(...tools) ? it : it.skip);

describe('NBD interop with qemu and libnbd tools', () => {
  let dir: string;
  let server: NbdServer;
  let device: FileDevice;
  let backing: string;
  let uri: string;
  let base: string;

  beforeEach(async () => {
    dir = makeTmpDir('nbd-sys-');
    backing = path.join(dir, 'backing.img');
    device = await FileDevice.open(backing, { createSize: SIZE });
    server = new NbdServer({ logger: testLogger('nbd-sys') });
    server.addExport({ name: 'disk', device, description: 'system test disk' });
    const { port } = await server.listen('127.0.0.1', 0);
    base = `nbd://127.0.0.1:${port}`;
    uri = `${base}/disk`;
  });

  afterEach(async () => {
    for (const c of children) if (c.pid && c.exitCode === null) process.kill(c.pid, 'SIGKILL');
    children.clear();
    await server.close();
    await device.close();
    removeTmpDir(dir);
  });

  itWith('qemu-io')('qemu-io writes patterns and verifies them from a new connection', async () => {
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 1M', uri]));
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 0 1M', uri]));
    const wrong = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xcd 0 1M', uri]);
    expect(wrong.code).toBe(1);
    expect(wrong.stdout + wrong.stderr).toMatch(/Pattern verification failed/);
    // the bytes really are in the backing file
    const fd = fs.openSync(backing, 'r');
    const b = Buffer.alloc(MiB);
    fs.readSync(fd, b, 0, MiB, 0);
    fs.closeSync(fd);
    expect(b.equals(Buffer.alloc(MiB, 0xab))).toBe(true);
    // zeroes, discard, flush, in-flight aio, map (base:allocation) and the default export ""
    expectOk(
      await run('qemu-io', [
        '-f', 'raw', '-t', 'none',
        '-c', 'write -P 0x11 4M 1M', '-c', 'write -z 4M 64k', '-c', 'discard 4608k 64k', '-c', 'flush',
        '-c', 'read -P 0 4M 64k', '-c', 'read -P 0x11 4160k 64k',
        '-c', 'aio_write -P 0x22 8M 64k', '-c', 'aio_write -P 0x33 9M 64k', '-c', 'aio_flush',
        '-c', 'read -P 0x22 8M 64k', '-c', 'read -P 0x33 9M 64k', '-c', 'map',
        `${base}/`,
      ]),
    );
  });

  itWith('qemu-io')('read-only exports refuse writes', async () => {
    server.addExport({ name: 'ro', device: new MemoryDevice(MiB), readOnly: true });
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x1 0 4k', `${base}/ro`]);
    expect(w.code).not.toBe(0);
    expectOk(await run('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0 0 4k', `${base}/ro`]));
  });

  itWith('qemu-img')('qemu-img compare sees identical data and detects a direct file change', async () => {
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 1M 3M', uri]));
    const ref = path.join(dir, 'ref.img');
    fs.copyFileSync(backing, ref);
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri]);
    expectOk(same);
    expect(same.stdout).toMatch(/identical/);
    const fd = fs.openSync(backing, 'r+');
    fs.writeSync(fd, Buffer.from([0x01]), 0, 1, 2 * MiB + 7);
    fs.closeSync(fd);
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, uri]);
    expect(diff.code).toBe(1);
    expect(diff.stdout).toMatch(/Content mismatch at offset 2097152/);
  });

  itWith('qemu-img', 'qemu-io')('qemu-img bench: pipelined 4 KiB writes at depth 32', async () => {
    const args = ['bench', '-f', 'raw', '-w', '-t', 'none', '-c', '2000', '-d', '32', '-s', '4096', '--pattern=165', uri];
    const r = await run('qemu-img', args);
    expectOk(r);
    expect(r.stdout).toMatch(/Run completed/);
    expectOk(await run('qemu-io', ['-f', 'raw', '-c', `read -P 0xa5 0 ${2000 * 4096}`, uri]));
    expectOk(await run('qemu-img', ['bench', '-f', 'raw', '-c', '2000', '-d', '32', '-s', '4096', uri]));
  });

  itWith('nbdinfo')('nbdinfo reports size, lists exports and maps base:allocation', async () => {
    const size = await run('nbdinfo', ['--size', uri]);
    expectOk(size);
    expect(size.stdout.trim()).toBe(String(SIZE));
    const info = await run('nbdinfo', ['--json', uri]);
    expectOk(info);
    const parsed = JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> };
    expect(parsed.exports[0]).toMatchObject({ 'export-name': 'disk', 'export-size': SIZE, can_multi_conn: true });

    const sparse = new MemoryDevice(4 * MiB);
    await sparse.write(MiB, Buffer.alloc(MiB, 7));
    server.addExport({ name: 'sparse', device: sparse, description: 'sparse view' });
    const list = await run('nbdinfo', ['--list', base]);
    expectOk(list);
    expect(list.stdout).toMatch(/export="disk"/);
    expect(list.stdout).toMatch(/export="sparse"/);
    expect(list.stdout).toMatch(/sparse view/);

    const map = await run('nbdinfo', ['--map', `${base}/sparse`]);
    expectOk(map);
    const rows = map.stdout
      .trim()
      .split('\n')
      .map((l) => l.trim().split(/\s+/).slice(0, 3).map(Number));
    expect(rows).toEqual([
      [0, MiB, 3],
      [MiB, MiB, 0],
      [2 * MiB, 2 * MiB, 3],
    ]);
    // FileDevice has no allocation map: one data extent
    const fileMap = await run('nbdinfo', ['--map', uri]);
    expectOk(fileMap);
    expect(fileMap.stdout.trim().split(/\s+/).slice(0, 3).map(Number)).toEqual([0, SIZE, 0]);
  });

  itWith('nbdcopy')('nbdcopy uploads and downloads byte-exact copies', async () => {
    const src = path.join(dir, 'src.img');
    const data = Buffer.alloc(8 * MiB);
    for (let i = 0; i < data.length; i += 4) data.writeUInt32LE((i * 2654435761) >>> 0, i);
    data.fill(0, 3 * MiB, 5 * MiB); // a zero stretch, so sparse paths are exercised
    fs.writeFileSync(src, data);
    expectOk(await run('nbdcopy', ['--flush', src, uri]));
    const back = path.join(dir, 'back.img');
    expectOk(await run('nbdcopy', [uri, back]));
    const got = fs.readFileSync(back);
    expect(got.length).toBe(SIZE);
    expect(got.subarray(0, data.length).equals(data)).toBe(true);
    const fromFile = Buffer.alloc(data.length);
    const fd = fs.openSync(backing, 'r');
    fs.readSync(fd, fromFile, 0, data.length, 0);
    fs.closeSync(fd);
    expect(fromFile.equals(data)).toBe(true);
  });
});
