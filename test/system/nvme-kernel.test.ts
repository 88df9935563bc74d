/**
 * Interop with the real Linux NVMe/TCP host: Debian 12's kernel (6.1) runs in
 * QEMU (test/helpers/vm.ts) and talks to our NvmeTcpTarget, which serves a
 * sparse FileDevice from this jest process on 127.0.0.1 (the guest dials
 * 10.0.2.2, slirp forwards it to the host's loopback).
 *
 * The guest (test/system/vm/guest/interop.sh) reads the discovery log, connects
 * with 2 I/O queues, writes slices of a deterministic pattern (copied in from
 * the host) with O_DIRECT in sizes from 512 B to 4 MiB and through the page
 * cache, zeroes (Write Zeroes) and discards (DSM) parts of some, reads each
 * back, flushes, re-reads everything with the page cache dropped and reports
 * sha256 sums. The host then compares the whole backing file byte for byte with the
 * image it expects (zeroes plus the written slices), so a misplaced, dropped
 * or torn write fails the test even when the guest's read-back agreed.
 *
 * A control run does the same against the kernel's own target (nvmet) inside
 * the guest: if it fails, the harness is broken, not our target.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FileDevice } from '../../common/block/file-device';
import { testLogger } from '../../common/log';
import { NvmeTcpTarget } from '../../common/nvme-tcp/target';
import { makeTmpDir, removeTmpDir } from '../helpers/tmpdir';
import { waitFor } from '../helpers/wait-for';
import { describeRun, ensureVmImage, GuestRun, runGuest, skipVm, stopAllGuests } from '../helpers/vm';

const MiB = 1024 * 1024;
const DEV_SIZE = 64 * MiB;
const PATTERN_SIZE = 8 * MiB;
const VM_TIMEOUT_MS = 150_000;
const TEST_TIMEOUT_MS = 240_000;
const NQN = 'nqn.2024-01.io.blockrep:kernel-interop';
const SERIAL = 'BLOCKREP0001';
const MODEL = 'blockrep-interop';
const GUEST_PATTERN = '/etc/rep/pattern.bin';

type CaseKind = 'direct' | 'buffered' | 'zero' | 'trim';

interface Case {
  name: string;
  /** See guest/interop.sh: zero/trim write the pattern, then zero/deallocate the middle half. */
  kind: CaseKind;
  devOff: number;
  len: number;
  patOff: number;
  /** dd block size: one NVMe command per block (direct), up to the host's max transfer size. */
  bs: number;
}

// Non-overlapping device ranges (pattern slices may repeat at other offsets).
const CASES: readonly Case[] = [
  { name: 'a4k', kind: 'direct', devOff: 0, len: 4096, patOff: 0, bs: 4096 },
  { name: 'b64k', kind: 'direct', devOff: MiB + 4096, len: 64 * 1024, patOff: 4096, bs: 64 * 1024 },
  { name: 'c128k', kind: 'direct', devOff: 3 * MiB, len: 128 * 1024, patOff: 68 * 1024, bs: 128 * 1024 },
  { name: 'd1m', kind: 'direct', devOff: 8 * MiB, len: MiB, patOff: 196 * 1024, bs: MiB },
  { name: 'e4m', kind: 'direct', devOff: 20 * MiB, len: 4 * MiB, patOff: 2 * MiB, bs: MiB },
  { name: 'f3lba', kind: 'direct', devOff: 13 * 512, len: 3 * 512, patOff: 6 * MiB, bs: 512 },
  { name: 'g256k', kind: 'direct', devOff: 33 * MiB + 7 * 512, len: 256 * 1024, patOff: 6 * MiB + 4096, bs: 256 * 1024 },
  { name: 'hlast', kind: 'direct', devOff: DEV_SIZE - 4096, len: 4096, patOff: 7 * MiB, bs: 4096 },
  // page cache: read-modify-write of partial pages, then writeback in large merged writes
  { name: 'i1000b', kind: 'buffered', devOff: 5 * MiB + 123, len: 1000, patOff: 7 * MiB + 8192, bs: 1000 },
  { name: 'j3m', kind: 'buffered', devOff: 12 * MiB + 65536, len: 3 * MiB, patOff: 4 * MiB + 777, bs: MiB },
  { name: 'kzero', kind: 'zero', devOff: 44 * MiB, len: 256 * 1024, patOff: 1536 * 1024, bs: 256 * 1024 },
  { name: 'ltrim', kind: 'trim', devOff: 48 * MiB, len: MiB, patOff: 5 * MiB, bs: MiB },
];

/** The kernel nvmet control runs over brd, which ignores discards: no trim case there. */
const CONTROL_CASES = CASES.filter((c) => c.kind !== 'trim');

/** What the device range of `c` must hold afterwards. */
function caseData(c: Case, pattern: Buffer): Buffer {
  const data = Buffer.from(pattern.subarray(c.patOff, c.patOff + c.len));
  if (c.kind === 'zero' || c.kind === 'trim') data.fill(0, c.len / 4, c.len / 4 + c.len / 2);
  return data;
}

function makePattern(): Buffer {
  // AES-CTR keystream over zeroes: deterministic, incompressible, fast
  const cipher = crypto.createCipheriv('aes-128-ctr', Buffer.alloc(16, 0x5a), Buffer.alloc(16, 0));
  return Buffer.concat([cipher.update(Buffer.alloc(PATTERN_SIZE)), cipher.final()]);
}

function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

function interopScript(prelude = ''): string {
  return prelude + fs.readFileSync(path.join(__dirname, 'vm', 'guest', 'interop.sh'), 'utf8');
}

function guestEnv(
  addr: string,
  port: number,
  nqn: string,
  opts: string,
  discover: boolean,
  cases: readonly Case[] = CASES,
): Record<string, string> {
  return {
    ADDR: addr,
    PORT: String(port),
    NQN: nqn,
    OPTS: opts,
    DISCOVER: discover ? '1' : '0',
    PATTERN: GUEST_PATTERN,
    CASES: cases.map((c) => `${c.name}:${c.kind}:${c.devOff}:${c.len}:${c.patOff}:${c.bs}`).join(' '),
  };
}

/** Guest verdict, device geometry, and every checksum the guest reported. */
function expectGuestData(run: GuestRun, pattern: Buffer, cases: readonly Case[] = CASES): void {
  if (!run.ok) throw new Error(describeRun(run));
  expect(run.results.DEV_SIZE).toBe(String(DEV_SIZE));
  expect(run.results.LBA_SIZE).toBe('512');
  for (const c of cases) {
    const want = sha256(caseData(c, pattern));
    expect({ case: c.name, written: run.results[`W_${c.name}`] }).toEqual({ case: c.name, written: want });
    expect({ case: c.name, read: run.results[`R_${c.name}`] }).toEqual({ case: c.name, read: want });
    expect({ case: c.name, reread: run.results[`RR_${c.name}`] }).toEqual({ case: c.name, reread: want });
  }
  // with a volatile write cache the kernel must have sent at least one NVMe Flush
  if (run.results.WRITE_CACHE === 'write_back') expect(Number(run.results.FLUSH_CMDS)).toBeGreaterThanOrEqual(1);
}

/** The backing file must equal zeroes + the written slices, byte for byte. */
function expectBackingFile(file: string, pattern: Buffer): void {
  const expected = Buffer.alloc(DEV_SIZE);
  for (const c of CASES) caseData(c, pattern).copy(expected, c.devOff);
  const actual = fs.readFileSync(file);
  expect(actual.length).toBe(DEV_SIZE);
  if (actual.equals(expected)) return;
  let first = 0;
  while (actual[first] === expected[first]) first++;
  const inCase = CASES.find((c) => first >= c.devOff && first < c.devOff + c.len)?.name ?? 'outside every case';
  throw new Error(`backing file differs from the expected image first at byte ${first} (${inCase})`);
}

type TargetStats = ReturnType<NvmeTcpTarget['stats']>;

interface Served {
  target: NvmeTcpTarget;
  device: FileDevice;
  file: string;
  port: number;
}

describe('Linux kernel NVMe/TCP host in QEMU', () => {
  let image: { kernel: string; initrd: string } | null = null;
  let dir = '';
  let patternFile = '';
  let pattern: Buffer = Buffer.alloc(0);
  let served: Served | null = null;

  beforeAll(async () => {
    image = await ensureVmImage();
    dir = makeTmpDir('blockrep-nvme-kernel-');
    pattern = makePattern();
    patternFile = path.join(dir, 'pattern.bin');
    fs.writeFileSync(patternFile, pattern);
  }, 300_000);

  afterEach(async () => {
    await stopAllGuests();
    if (served) {
      const s = served;
      served = null;
      await s.target.close();
      await s.device.close();
    }
  });

  afterAll(async () => {
    await stopAllGuests();
    if (dir) removeTmpDir(dir);
  });

  async function serve(name: string): Promise<Served> {
    const file = path.join(dir, `${name}.img`);
    const device = await FileDevice.open(file, { createSize: DEV_SIZE });
    const target = new NvmeTcpTarget({ logger: testLogger('nvme-kernel'), advertiseAddress: '10.0.2.2' });
    served = { target, device, file, port: 0 };
    target.addSubsystem({
      nqn: NQN,
      serial: SERIAL,
      model: MODEL,
      namespaces: [{ nsid: 1, device, nguid: crypto.randomBytes(16), uuid: crypto.randomUUID() }],
    });
    const { port } = await target.listen('127.0.0.1', 0);
    served.port = port;
    return served;
  }

  function guestRun(env: Record<string, string>, prelude = '', onReport?: (line: string) => void): Promise<GuestRun> {
    return runGuest({
      script: interopScript(prelude),
      env,
      files: [{ src: patternFile, dst: GUEST_PATTERN }],
      timeoutMs: VM_TIMEOUT_MS,
      onReport,
    });
  }

  /** Runs the workload against `s`; samples the target's stats while the controller is live. */
  async function interop(s: Served, opts: string, discover: boolean): Promise<{ run: GuestRun; live: TargetStats | null }> {
    let live: TargetStats | null = null;
    const run = await guestRun(guestEnv('10.0.2.2', s.port, NQN, opts, discover), '', (line) => {
      if (line === 'REP-MARK connected') live = s.target.stats();
    });
    return { run, live };
  }

  /** Admin + 2 I/O connections while connected, no protocol errors, and the association is gone afterwards. */
  async function expectTargetStats(s: Served, live: TargetStats | null): Promise<void> {
    expect(live).toMatchObject({ connections: 3, controllers: 1, protocolErrors: 0 });
    // the sockets' close events may still be queued when QEMU's exit is seen
    await waitFor(() => s.target.stats().connections === 0, { timeoutMs: 5000, what: 'target connections to close' });
    const after = s.target.stats();
    expect(after).toMatchObject({ connections: 0, controllers: 0, protocolErrors: 0 });
    expect(after.commands).toBeGreaterThan(CASES.length);
  }

  it(
    'harness control: the same workload against the kernel nvmet target inside the guest',
    async () => {
      if (!image) return skipVm();
      const nqn = 'nqn.2024-01.io.blockrep:control';
      const run = await guestRun(
        guestEnv('127.0.0.1', 4420, nqn, 'nr_io_queues=2', true, CONTROL_CASES),
        'rep_nvmet_start 127.0.0.1 4420 "$NQN" 64 || rep_fail "nvmet setup failed"\n',
      );
      expectGuestData(run, pattern, CONTROL_CASES);
      expect(run.results.DISCOVERED).toBe('1');
      expect(run.results.CTRL_queue_count).toBe('3');
    },
    TEST_TIMEOUT_MS,
  );

  it(
    'discovery, 2 I/O queues, O_DIRECT 512 B..4 MiB, buffered, Write Zeroes, discard, flush: backing file exact',
    async () => {
      if (!image) return skipVm();
      const s = await serve('plain');
      const { run, live } = await interop(s, 'nr_io_queues=2', true);
      expectGuestData(run, pattern);
      await expectTargetStats(s, live);
      expect(run.results.DISCOVERED).toBe('1');
      expect(run.results.DISCOVER_TRADDR).toBe('10.0.2.2');
      expect(run.results.DISCOVER_TRSVCID).toBe(String(s.port));
      expect(Number(run.results.CTRL_queue_count)).toBeGreaterThanOrEqual(3); // admin + >= 2 I/O
      expect(run.results.CTRL_subsysnqn).toBe(NQN);
      expect(run.results.CTRL_serial?.replace(/_+$/, '')).toBe(SERIAL);
      expect(run.results.CTRL_model?.replace(/_+$/, '')).toBe(MODEL);
      expect(run.results.CTRL_transport).toBe('tcp');
      await s.device.flush();
      expectBackingFile(s.file, pattern);
    },
    TEST_TIMEOUT_MS,
  );

  it.each([
    { what: 'header and data digests (CRC32C) on every queue', file: 'digest', opts: 'nr_io_queues=2,hdr_digest,data_digest', successReads: false },
    {
      what: 'SQ flow control disabled (disable_sqflow) and data digests: reads complete by SUCCESS C2HData',
      file: 'sqflow',
      opts: 'nr_io_queues=2,disable_sqflow,data_digest',
      successReads: true,
    },
  ])(
    'the same with $what',
    async ({ file, opts, successReads }) => {
      if (!image) return skipVm();
      const s = await serve(file);
      const { run, live } = await interop(s, opts, false);
      expectGuestData(run, pattern);
      await expectTargetStats(s, live);
      expect(Number(run.results.CTRL_queue_count)).toBeGreaterThanOrEqual(3);
      // reads end with a SUCCESS C2HData only when the host disabled SQ flow control
      expect(s.target.stats().successReads > 0).toBe(successReads);
      await s.device.flush();
      expectBackingFile(s.file, pattern);
    },
    TEST_TIMEOUT_MS,
  );
});
