/**
 * `repctl drill` while writes continue through the agent (issue 4): the drill
 * passes with the default checksum check and with a --check command that
 * writes into the test view with qemu-io; the view is gone afterwards, the
 * view's writes never reach the replica, and after wait-synced the replica
 * equals the source volume (qemu-img compare). Real rephub/repagent/repctl.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../../common/nbd/client';
import { DIST, Started, startBin, stop } from '../../cli/procs';
import { makeTmpDir, removeTmpDir } from '../helpers/tmpdir';
import { describeWithTools } from '../helpers/tools';

jest.setTimeout(240_000);
const MiB = 1024 * 1024;
const SIZE = 64 * MiB;

function repctl(args: string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(DIST, 'cli', 'repctl.js'), ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), 180_000);
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code, out, err });
    });
  });
}

function run(cmd: string, args: string[]): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', (code) => resolve({ code, out }));
  });
}

describeWithTools(['qemu-img', 'qemu-io'])('repctl drill while the agent keeps writing', () => {
  let dir: string;
  const procs: Started[] = [];

  beforeEach(() => {
    dir = makeTmpDir('drill-');
  });
  afterEach(async () => {
    for (const p of procs.splice(0)) await stop(p.child, 'SIGKILL');
    removeTmpDir(dir);
  });

  test('drills pass, clean up, and leave the replica equal to the source', async () => {
    const hub = await startBin('rephub', [
      '--listen', '127.0.0.1:0', '--data-dir', path.join(dir, 'hub'),
      '--nbd-listen', '127.0.0.1:0', '--nvme-listen', '127.0.0.1:0', '--log-level', 'warn',
    ]);
    procs.push(hub);
    const h = hub.ready as { http: { port: number }; nbd: { port: number } };
    const hubUrl = `ws://127.0.0.1:${h.http.port}`;
    const volFile = path.join(dir, 'v1.img');
    const agent = await startBin('repagent', [
      '--volume', `v1=${volFile}:${SIZE}`, '--nvme-listen', 'off', '--nbd-listen', '127.0.0.1:0',
      '--state-dir', path.join(dir, 'agent'), '--hub', hubUrl, '--log-level', 'warn',
    ]);
    procs.push(agent);
    const a = agent.ready as { nbd: { port: number } };
    const client = await NbdClient.connect({ host: '127.0.0.1', port: a.nbd.port, exportName: 'v1' });
    for (let off = 0; off < 8 * MiB; off += MiB) await client.write(off, Buffer.alloc(MiB, 0x11 + off / MiB));
    await client.flush();
    expect((await repctl(['wait-synced', '--hub', hubUrl, '--volume', 'v1', '--timeout', '60s'])).code).toBe(0);

    // a writer keeps going through the agent for the whole drill
    let writing = true;
    let writes = 0;
    const writer = (async () => {
      while (writing) {
        const off = 8 * MiB + ((writes * 7919 * 4096) % (SIZE - 8 * MiB));
        await client.write(off, Buffer.alloc(4096, writes & 0xff));
        writes++;
        await new Promise((r) => setTimeout(r, 2));
      }
    })();

    try {
      const report = path.join(dir, 'drill-default');
      const d1 = await repctl(['drill', '--hub', hubUrl, '--volume', 'v1', '--report', report, '--json']);
      expect({ code: d1.code, err: d1.err.slice(-2000) }).toMatchObject({ code: 0 });
      const r1 = JSON.parse(fs.readFileSync(`${report}.json`, 'utf8')) as {
        result: string;
        check: { kind: string; passed: boolean };
        teardown: { discarded: boolean };
        rto: { exportReadyMs: number };
      };
      expect(r1).toMatchObject({ result: 'passed', check: { kind: 'checksum', passed: true }, teardown: { discarded: true } });
      expect(r1.rto.exportReadyMs).toBeGreaterThan(0);
      expect(fs.readFileSync(`${report}.html`, 'utf8')).toMatch(/<svg/);

      // the check writes into the view through its NBD export, then reads it back
      const check = 'qemu-io -f raw -c "write -P 0xee 0 1M" "$REP_NBD_URI" && qemu-io -f raw -c "read -P 0xee 0 1M" "$REP_NBD_URI" && test -n "$REP_NVME_NQN"';
      const report2 = path.join(dir, 'drill-check');
      const d2 = await repctl(['drill', '--hub', hubUrl, '--volume', 'v1', '--check', check, '--report', report2]);
      expect({ code: d2.code, out: d2.out.slice(-2000), err: d2.err.slice(-2000) }).toMatchObject({ code: 0 });

      // a failing check fails the drill (exit 1) and still cleans up
      const d3 = await repctl(['drill', '--hub', hubUrl, '--volume', 'v1', '--check', 'exit 3', '--report', path.join(dir, 'drill-fail')]);
      expect(d3.code).toBe(1);
    } finally {
      writing = false;
      await writer;
    }
    expect(writes).toBeGreaterThan(10);
    await client.flush();
    await client.close();

    const views = await run('node', [path.join(DIST, 'cli', 'repctl.js'), 'views', '--hub', hubUrl, '--json']);
    expect(JSON.parse(views.out)).toMatchObject({ views: [] });
    expect((await repctl(['wait-synced', '--hub', hubUrl, '--volume', 'v1', '--timeout', '60s'])).code).toBe(0);
    // the view's 0xee writes never reached the replica
    const replica = `nbd://127.0.0.1:${h.nbd.port}/v1`;
    expect((await run('qemu-io', ['-f', 'raw', '-r', '-c', 'read -P 0x11 0 1M', replica])).out).not.toMatch(/Pattern verification failed/);
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', volFile, replica]);
    expect(cmp).toMatchObject({ code: 0 });
  });
});
