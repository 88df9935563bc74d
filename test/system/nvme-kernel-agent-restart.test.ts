/**
 * The real repagent process killed with SIGKILL under a live Linux NVMe/TCP
 * host, then restarted on the same state directory and port: the kernel host
 * in QEMU (test/helpers/vm.ts) must reconnect on its own and its workload
 * must finish with no I/O error and correct data (nvme-tcp.md §7.3: in-flight
 * commands are requeued and re-sent after the reconnect, so the target keeps
 * its NQN, serial, NSID, NGUID/UUID and starts listening only when ready).
 *
 * The agent replicates to a real rephub, so the kill also cuts a live
 * replication stream; afterwards `repctl wait-synced` must succeed and the
 * hub's latest NBD export must equal the agent's backing file (qemu-img compare).
 *
 * The guest (test/system/vm/guest/restart.sh) writes slices of a deterministic
 * pattern with O_DIRECT into 8 slots, reading each back, round after round;
 * just before a 1 MiB write in 4 KiB commands it marks "running" and this test
 * kills the agent, waits, and restarts it. The NVMe port is chosen up front
 * (not 0) because the host reconnects to the address it first connected to.
 * The host side then rebuilds the expected image from the plan of completed
 * rounds and compares the whole backing file with it.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DIST, freePort, run, startBin, Started } from '../../cli/procs';
import { describeRun, GuestRun, runGuest, skipVm, useVmSuite } from '../helpers/vm';

const KiB = 1024;
const MiB = 1024 * KiB;
const DEV_SIZE = 64 * MiB;
const SLOT = 8 * MiB;
const SLOTS = DEV_SIZE / SLOT;
const PATTERN_SIZE = 8 * MiB;
const PLAN_ROUNDS = 160;
const PRE_ROUNDS = 3;
const POST_ROUNDS = 10; // > SLOTS: every slot is rewritten after the restart
const DOWN_MS = 1500;
const VM_TIMEOUT_MS = 150_000;
const TEST_TIMEOUT_MS = 240_000;
const GUEST_PATTERN = '/etc/rep/pattern.bin';

interface Round {
  devOff: number;
  patOff: number;
  len: number;
  bs: number;
}

// index 3 (the round in flight at the kill, PRE_ROUNDS = 3) is 1 MiB in 4 KiB commands
const LENS = [256 * KiB, 64 * KiB, 512 * KiB, MiB, 128 * KiB, 768 * KiB];
const BSS = [64 * KiB, 4 * KiB, 128 * KiB, 4 * KiB, MiB, 32 * KiB];

/** Deterministic rounds; every range stays inside its slot, some start at odd 512-byte sectors. */
function makePlan(): Round[] {
  const plan: Round[] = [];
  for (let i = 0; i < PLAN_ROUNDS; i++) {
    const len = LENS[i % LENS.length]!;
    const bs = Math.min(BSS[i % BSS.length]!, len);
    const devOff = (i % SLOTS) * SLOT + ((i * 5) % 7) * 64 * KiB + (i % 3 === 1 ? 3 * 512 : 0);
    const patOff = ((i * 397) % 1790) * 4096 + (i % 5) * 512;
    plan.push({ devOff, patOff, len, bs });
  }
  return plan;
}

function makePattern(): Buffer {
  const cipher = crypto.createCipheriv('aes-128-ctr', Buffer.alloc(16, 0x3c), Buffer.alloc(16, 0));
  return Buffer.concat([cipher.update(Buffer.alloc(PATTERN_SIZE)), cipher.final()]);
}

/** Zeroes with the first `rounds` rounds of `plan` applied in order. */
function expectedImage(plan: readonly Round[], rounds: number, pattern: Buffer): Buffer {
  const image = Buffer.alloc(DEV_SIZE);
  for (const r of plan.slice(0, rounds)) pattern.copy(image, r.devOff, r.patOff, r.patOff + r.len);
  return image;
}

function firstDifference(a: Buffer, b: Buffer): number {
  const n = Math.min(a.length, b.length);
  for (let off = 0; off < n; off += MiB) {
    const end = Math.min(n, off + MiB);
    if (a.subarray(off, end).equals(b.subarray(off, end))) continue;
    for (let i = off; i < end; i++) if (a[i] !== b[i]) return i;
  }
  return a.length === b.length ? -1 : n;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

describe('Linux kernel NVMe/TCP host across a repagent kill -9 and restart', () => {
  const suite = useVmSuite('blockrep-agent-restart-', 'repagent');

  it(
    'the host reconnects and the workload finishes with no I/O error; data exact on the agent and the hub',
    async () => {
      const { image, tools, dir, track, kill: killChild } = suite;
      if (!image || !tools) return skipVm();
      const pattern = makePattern();
      const patternFile = path.join(dir, 'pattern.bin');
      fs.writeFileSync(patternFile, pattern);
      const plan = makePlan();
      const file = path.join(dir, 'v1.img');

      const hub = track(
        await startBin('rephub', [
          '--listen', '127.0.0.1:0',
          '--data-dir', path.join(dir, 'hub'),
          '--nbd-listen', '127.0.0.1:0',
          '--nvme-listen', 'off',
        ]),
      );
      const hubReady = hub.ready as { http: { port: number }; nbd: { port: number } };
      const hubUrl = `ws://127.0.0.1:${hubReady.http.port}`;
      const nvmePort = await freePort();
      const agentArgs = [
        '--volume', `v1=${file}:64M`,
        '--nvme-listen', `127.0.0.1:${nvmePort}`,
        '--nbd-listen', '127.0.0.1:0',
        '--state-dir', path.join(dir, 'agent-state'),
        '--hub', hubUrl,
      ];
      const first = track(await startBin('repagent', agentArgs));
      const ready0 = first.ready as unknown as AgentReady;

      // on the guest's mark: SIGKILL, stay down DOWN_MS, start again on the same port and state
      const kill: { restarted: Promise<Started> | null } = { restarted: null };
      const onReport = (line: string): void => {
        if (line !== 'REP-MARK running' || kill.restarted) return;
        kill.restarted = killChild(first.child)
          .then(() => sleep(DOWN_MS))
          .then(() => startBin('repagent', agentArgs))
          .then(track);
        kill.restarted.catch(() => undefined); // awaited below; keep it from being unhandled meanwhile
      };
      const guest: GuestRun = await runGuest({
        script: fs.readFileSync(path.join(__dirname, 'vm', 'guest', 'restart.sh'), 'utf8'),
        env: {
          ADDR: '10.0.2.2',
          PORT: String(nvmePort),
          NQN: ready0.nqn,
          OPTS: 'nr_io_queues=2,keep_alive_tmo=5,ctrl_loss_tmo=120,reconnect_delay=1',
          PATTERN: GUEST_PATTERN,
          PLAN: plan.map((r) => `${r.devOff}:${r.patOff}:${r.len}:${r.bs}`).join(' '),
          SLOT: String(SLOT),
          PRE_ROUNDS: String(PRE_ROUNDS),
          POST_ROUNDS: String(POST_ROUNDS),
          OUTAGE_WAIT: '60',
        },
        files: [{ src: patternFile, dst: GUEST_PATTERN }],
        timeoutMs: VM_TIMEOUT_MS,
        onReport,
      });
      if (!kill.restarted) throw new Error(`the guest never marked 'running'\n${describeRun(guest)}`);
      const second = await kill.restarted;
      const ready1 = second.ready as unknown as AgentReady;
      if (!guest.ok) throw new Error(`${describeRun(guest)}\n--- restarted agent stderr ---\n${second.stderr().slice(-3000)}`);
      const res = guest.results;

      // the restarted agent is the same target: address, subsystem, namespace identity
      expect(ready1.nvme.port).toBe(nvmePort);
      expect({ agentId: ready1.agentId, nqn: ready1.nqn }).toEqual({ agentId: ready0.agentId, nqn: ready0.nqn });
      expect(ready1.volumes.map((v) => [v.name, v.uuid, v.nsid])).toEqual(ready0.volumes.map((v) => [v.name, v.uuid, v.nsid]));
      for (const a of ['subsysnqn', 'serial', 'model', 'ns_wwid', 'ns_nguid', 'ns_uuid', 'ns_nsid', 'ns_size']) {
        expect({ attr: a, after: res[`ID1_${a}`] }).toEqual({ attr: a, after: res[`ID0_${a}`] });
      }
      expect(res.ID0_subsysnqn).toBe(ready0.nqn);
      // the same controller and namespace came back, not a second one
      expect({ namespaces: res.NS_DEVICES, controllers: res.CTRLS }).toEqual({ namespaces: '1', controllers: '1' });

      // the kernel saw the outage, went back to live, and no I/O failed
      expect(['resetting', 'connecting']).toContain(res.DOWN_STATE);
      expect(Number(res.T_UP)).toBeGreaterThan(Number(res.T_DOWN));
      expect(Number(res.SPAN)).toBeGreaterThanOrEqual(1);
      expect(Number(res.REQUEUED)).toBeGreaterThanOrEqual(1); // I/O was waiting while no path was usable
      expect(res.BAD).toBe('0');
      expect(res.FINAL_BAD).toBe('0');
      expect(Number(res.FINAL_RANGES)).toBe(SLOTS);
      expect(res.IO_ERRORS).toBe('0');
      const rounds = Number(res.ROUNDS);
      expect(rounds).toBeGreaterThanOrEqual(PRE_ROUNDS + POST_ROUNDS);

      // the backing file holds exactly the completed rounds
      const want = expectedImage(plan, rounds, pattern);
      const diff = firstDifference(fs.readFileSync(file), want);
      if (diff >= 0) {
        const hit = plan.slice(0, rounds).map((r, i) => ({ i, r })).filter(({ r }) => diff >= r.devOff && diff < r.devOff + r.len);
        throw new Error(`backing file differs at byte ${diff} (rounds covering it: ${hit.map((h) => h.i).join(', ') || 'none'})`);
      }

      // replication survived the kill: the hub's newest point equals the agent's file
      const synced = await run(process.execPath, [
        path.join(DIST, 'cli', 'repctl.js'), 'wait-synced', '--hub', hubUrl, '--volume', 'v1', '--timeout', '60s',
      ], 90_000);
      expect({ code: synced.code, err: synced.err }).toEqual({ code: 0, err: '' });
      const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, `nbd://127.0.0.1:${hubReady.nbd.port}/v1`], 60_000);
      expect({ code: cmp.code, out: cmp.out.trim(), err: cmp.err.trim() }).toEqual({ code: 0, out: 'Images are identical.', err: '' });
    },
    TEST_TIMEOUT_MS,
  );
});

interface AgentReady {
  agentId: string;
  nqn: string;
  nvme: { host: string; port: number };
  volumes: { name: string; uuid: string; nsid: number }[];
}
