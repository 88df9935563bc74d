/**
 * The recovery path with a real client: the Linux NVMe/TCP host in QEMU
 * (test/helpers/vm.ts) connects to a test view that rephub exports over
 * NVMe/TCP and reads back data written earlier on the protected side.
 *
 * Real processes: rephub (NBD + NVMe/TCP listeners, advertising 10.0.2.2, the
 * address the guest reaches the host by) and repagent replicating to it. The
 * protected volume gets a known image through the agent's NBD export
 * (qemu-img convert), `repctl wait-synced` waits for the hub, and POST /v1/views
 * makes a writable test view at the latest point. The guest
 * (test/system/vm/guest/view.sh) reads the whole namespace and some ranges
 * (sha256), then writes slices of a pattern into the view and reads them back.
 * The guest first finds the view in the hub's discovery log (advertised at
 * 10.0.2.2). When it has disconnected, the host checks the view over NBD
 * equals the source image plus the guest's writes and deletes the view; the
 * guest must then see the entry leave the discovery log and a Connect refused. Finally neither the replica (the hub's
 * latest NBD export) nor the agent's volume may hold any of the view's writes.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DIST, run, startBin, Started } from '../../cli/procs';
import { describeRun, runGuest, skipVm, useVmSuite } from '../helpers/vm';

const KiB = 1024;
const MiB = 1024 * KiB;
const DEV_SIZE = 64 * MiB;
const PATTERN_SIZE = 4 * MiB;
const VM_TIMEOUT_MS = 120_000;
const TEST_TIMEOUT_MS = 240_000;
const GUEST_PATTERN = '/etc/rep/pattern.bin';

/** Protected-side data (the rest of the volume is zeroes). */
const SOURCE_RANGES: readonly { off: number; len: number }[] = [
  { off: 0, len: MiB },
  { off: 5 * MiB + 512, len: 3 * MiB },
  { off: 31 * MiB, len: 2 * MiB + 4096 },
  { off: DEV_SIZE - MiB, len: MiB },
];

/** Ranges the guest sums before writing (the source ranges plus a zero range). */
const CHECKS: readonly { name: string; off: number; len: number }[] = [
  ...SOURCE_RANGES.map((r, i) => ({ name: `src${i}`, ...r })),
  { name: 'zero', off: 40 * MiB, len: MiB },
];

/** Guest writes into the view: over source data, across its edges, into zeroes, the last LBA. */
const WRITES: readonly { name: string; devOff: number; patOff: number; len: number; bs: number }[] = [
  { name: 'w4k', devOff: 0, patOff: 0, len: 4096, bs: 4096 },
  { name: 'wedge', devOff: 8 * MiB - 64 * KiB, patOff: 4096, len: 256 * KiB, bs: 64 * KiB },
  { name: 'wzero', devOff: 40 * MiB + 512, patOff: 300 * KiB, len: MiB, bs: 128 * KiB },
  { name: 'wlast', devOff: DEV_SIZE - 512, patOff: 2 * MiB + 512, len: 512, bs: 512 },
];

function keystream(key: number, size: number): Buffer {
  const cipher = crypto.createCipheriv('aes-128-ctr', Buffer.alloc(16, key), Buffer.alloc(16, 0));
  return Buffer.concat([cipher.update(Buffer.alloc(size)), cipher.final()]);
}

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

function sourceImage(): Buffer {
  const image = Buffer.alloc(DEV_SIZE);
  const data = keystream(0x61, 4 * MiB);
  SOURCE_RANGES.forEach((r, i) => data.copy(image, r.off, (i * 64 * KiB) % MiB, (i * 64 * KiB) % MiB + r.len));
  return image;
}

async function api<T>(port: number, method: string, route: string, body?: unknown): Promise<T> {
  const res = await fetch(`http://127.0.0.1:${port}${route}`, {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${route}: HTTP ${res.status} ${text}`);
  return JSON.parse(text) as T;
}

interface ViewJson {
  id: string;
  readOnly: boolean;
  nbd: { port: number; export: string } | null;
  nvme: { traddr: string; trsvcid: string; nqn: string } | null;
}

async function expectSameImage(file: string, uri: string, what: string): Promise<void> {
  const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, uri], 60_000);
  expect({ what, code: cmp.code, out: cmp.out.trim(), err: cmp.err.trim() }).toEqual({
    what,
    code: 0,
    out: 'Images are identical.',
    err: '',
  });
}

describe('Linux kernel NVMe/TCP host on a hub test view', () => {
  const suite = useVmSuite('blockrep-nvme-view-', 'rephub');

  it(
    'reads protected data through the view, writes into it; the replica and the volume stay unchanged',
    async () => {
      const { image, tools, dir, track, kill: killChild } = suite;
      if (!image || !tools) return skipVm();
      const source = sourceImage();
      const sourceFile = path.join(dir, 'source.img');
      fs.writeFileSync(sourceFile, source);
      const pattern = keystream(0x17, PATTERN_SIZE);
      const patternFile = path.join(dir, 'pattern.bin');
      fs.writeFileSync(patternFile, pattern);

      const hub = track(
        await startBin('rephub', [
          '--listen', '127.0.0.1:0',
          '--data-dir', path.join(dir, 'hub'),
          '--nbd-listen', '127.0.0.1:0',
          '--nvme-listen', '127.0.0.1:0',
          '--advertise-address', '10.0.2.2',
        ]),
      );
      const hubReady = hub.ready as unknown as { http: { port: number }; nbd: { port: number } };
      const hubUrl = `ws://127.0.0.1:${hubReady.http.port}`;
      const volumeFile = path.join(dir, 'v1.img');
      const agent = track(
        await startBin('repagent', [
          '--volume', `v1=${volumeFile}:64M`,
          '--nvme-listen', 'off',
          '--nbd-listen', '127.0.0.1:0',
          '--state-dir', path.join(dir, 'agent-state'),
          '--hub', hubUrl,
        ]),
      );
      const agentNbd = (agent.ready as unknown as { nbd: { port: number } }).nbd.port;

      // the protected side gets the source image, through the agent's NBD export
      const put = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', sourceFile, `nbd://127.0.0.1:${agentNbd}/v1`], 60_000);
      expect({ code: put.code, err: put.err }).toEqual({ code: 0, err: '' });
      const synced = await run(process.execPath, [
        path.join(DIST, 'cli', 'repctl.js'), 'wait-synced', '--hub', hubUrl, '--volume', 'v1', '--timeout', '60s',
      ], 90_000);
      expect({ code: synced.code, err: synced.err }).toEqual({ code: 0, err: '' });
      const replicaUri = `nbd://127.0.0.1:${hubReady.nbd.port}/v1`;
      await expectSameImage(sourceFile, replicaUri, 'replica before the view');

      const view = await api<ViewJson>(hubReady.http.port, 'POST', '/v1/views', { volume: 'v1', at: 'latest', kind: 'test' });
      expect(view.readOnly).toBe(false);
      expect(view.nvme).not.toBeNull();
      expect(view.nbd).not.toBeNull();
      const nvme = view.nvme!;
      expect(nvme.traddr).toBe('10.0.2.2');

      // what the view must hold once the guest has written into it
      const after = Buffer.from(source);
      for (const w of WRITES) pattern.copy(after, w.devOff, w.patOff, w.patOff + w.len);
      const afterFile = path.join(dir, 'after.img');
      fs.writeFileSync(afterFile, after);
      const viewNbd = view.nbd!;

      // once the guest has disconnected: check the view over NBD, then delete it
      // (the guest then expects its reconnects to be refused)
      const released: { done: Promise<void> | null } = { done: null };
      const onReport = (line: string): void => {
        if (line !== 'REP-MARK released' || released.done) return;
        released.done = (async () => {
          await expectSameImage(afterFile, `nbd://127.0.0.1:${viewNbd.port}/${viewNbd.export}`, 'view after the guest');
          await api(hubReady.http.port, 'DELETE', `/v1/views/${encodeURIComponent(view.id)}`);
        })();
        released.done.catch(() => undefined); // awaited below
      };
      const guest = await runGuest({
        script: fs.readFileSync(path.join(__dirname, 'vm', 'guest', 'view.sh'), 'utf8'),
        env: {
          ADDR: nvme.traddr,
          PORT: nvme.trsvcid,
          NQN: nvme.nqn,
          OPTS: 'nr_io_queues=2',
          PATTERN: GUEST_PATTERN,
          CHECKS: CHECKS.map((c) => `${c.name}:${c.off}:${c.len}`).join(' '),
          WRITES: WRITES.map((w) => `${w.name}:${w.devOff}:${w.patOff}:${w.len}:${w.bs}`).join(' '),
          GONE_WAIT: '30',
        },
        files: [{ src: patternFile, dst: GUEST_PATTERN }],
        timeoutMs: VM_TIMEOUT_MS,
        onReport,
      });
      if (released.done) await released.done; // the NBD check and the delete, before judging the guest
      if (!guest.ok) throw new Error(`${describeRun(guest)}\n--- rephub stderr ---\n${hub.stderr().slice(-3000)}`);
      const res = guest.results;

      // the hub's discovery log lists the view at the address the guest can reach
      expect({ listed: res.LISTED, traddr: res.DISC_TRADDR, trsvcid: res.DISC_TRSVCID }).toEqual({
        listed: '1',
        traddr: '10.0.2.2',
        trsvcid: nvme.trsvcid,
      });
      // what the kernel saw: the view's subsystem, a writable 64 MiB namespace of 512 B blocks
      expect(res.CTRL_subsysnqn).toBe(nvme.nqn);
      expect(res.CTRL_transport).toBe('tcp');
      expect({ size: res.DEV_SIZE, lba: res.LBA_SIZE, ro: res.RO }).toEqual({ size: String(DEV_SIZE), lba: '512', ro: '0' });

      // reads: the protected side's data, exactly
      expect(res.FULL_BEFORE).toBe(sha256(source));
      for (const c of CHECKS) {
        expect({ range: c.name, sum: res[`S_${c.name}`] }).toEqual({ range: c.name, sum: sha256(source.subarray(c.off, c.off + c.len)) });
      }

      // writes: read back at once and after a flush with the caches dropped
      for (const w of WRITES) {
        const want = sha256(pattern.subarray(w.patOff, w.patOff + w.len));
        expect({ write: w.name, sums: [res[`W_${w.name}`], res[`R_${w.name}`], res[`RR_${w.name}`]] }).toEqual({
          write: w.name,
          sums: [want, want, want],
        });
      }
      expect(res.FULL_AFTER).toBe(sha256(after));
      expect(res.IO_ERRORS).toBe('0');

      // the deleted view is gone for the kernel host and the API; the replica and the
      // protected volume never saw its writes
      expect({ unlisted: res.UNLISTED, refused: res.GONE }).toEqual({ unlisted: '1', refused: '1' });
      const left = await api<{ views: { id: string }[] }>(hubReady.http.port, 'GET', '/v1/views?volume=v1');
      expect(left.views.map((v) => v.id)).not.toContain(view.id);
      await expectSameImage(sourceFile, replicaUri, 'replica after the view');
      await expectSameImage(sourceFile, volumeFile, 'protected volume');
    },
    TEST_TIMEOUT_MS,
  );
});
