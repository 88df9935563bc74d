/**
 * Front-end benchmark (issue 2): the same four workloads through
 *   - qemu-img bench -> nbdkit file plugin   (baseline)
 *   - qemu-img bench -> repagent NBD export
 *   - our NVMe/TCP initiator -> repagent NVMe/TCP target
 * on the same kind of sparse file, in the same run. Ratios are ours/nbdkit.
 *
 * Rounds: ROUNDS times, each target in turn gets a fresh sparse file and a
 * fresh process; the best round per row counts (the machine may be shared).
 * Steady state: before its timed runs every target gets the same untimed
 * warm-up pass (every workload, WARMUP_OPS operations each, in the upper half
 * of the volume, so the timed writes still land on unallocated blocks). For
 * the agent this lets the JIT finish (a cold agent runs 4k QD1 ~3x slower for
 * its first few thousand requests); nbdkit and the kernel get the same pass.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NvmeTcpHost } from '../common/nvme-tcp/initiator';
import { freePort, run, startBin, stop, waitPort } from '../cli/procs';
import { spawn } from 'node:child_process';

export interface Workload {
  name: string;
  write: boolean;
  size: number;
  depth: number;
  count: number;
  /** qemu-img bench step: a large odd multiple of the block size spreads I/O over the file. */
  step: number;
  /** Start offset (qemu-img bench -o); 0 for the timed runs. */
  offset?: number;
}

export const WORKLOADS: Workload[] = [
  { name: '4k-randwrite-qd1', write: true, size: 4096, depth: 1, count: 20000, step: 4096 * 7919 },
  { name: '4k-randwrite-qd32', write: true, size: 4096, depth: 32, count: 30000, step: 4096 * 7919 },
  { name: '4k-randread-qd32', write: false, size: 4096, depth: 32, count: 30000, step: 4096 * 7919 },
  { name: '128k-seqwrite-qd8', write: true, size: 131072, depth: 8, count: 4000, step: 131072 },
];

/** Operations per workload in the warm-up pass. */
export const WARMUP_OPS = 5000;

/** The untimed warm-up variant of a workload (see the file header). */
export function warmupOf(w: Workload): Workload {
  return { ...w, name: `${w.name}-warmup`, count: Math.min(w.count, WARMUP_OPS), offset: VOLUME_SIZE / 2 };
}

export interface Result {
  workload: string;
  target: string;
  seconds: number;
  iops: number;
  mbps: number;
}

export const VOLUME_SIZE = 1024 * 1024 * 1024;

function result(w: Workload, target: string, seconds: number): Result {
  return {
    workload: w.name,
    target,
    seconds,
    iops: Math.round(w.count / seconds),
    mbps: Math.round(((w.count * w.size) / seconds / 1e6) * 10) / 10,
  };
}

/** `cpus`: run qemu-img under `taskset -c cpus` (the replication bench's pinned round). */
export async function qemuImgBench(w: Workload, uri: string, target: string, cpus?: string): Promise<Result> {
  const args = ['bench', '-f', 'raw', '-c', String(w.count), '-d', String(w.depth), '-s', String(w.size), '-S', String(w.step)];
  if (w.write) args.push('-w');
  if (w.offset) args.push('-o', String(w.offset));
  args.push(uri);
  const r = cpus === undefined ? await run('qemu-img', args) : await run('taskset', ['-c', cpus, 'qemu-img', ...args]);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.out);
  if (r.code !== 0 || !m) throw new Error(`qemu-img bench failed (${r.code}): ${r.err || r.out}`);
  return result(w, target, Number(m[1]));
}

export async function nvmeBench(w: Workload, host: NvmeTcpHost, target: string): Promise<Result> {
  const buf = Buffer.alloc(w.size, 0x5a);
  let next = 0;
  const offsetOf = (i: number): number => {
    const at = ((w.offset ?? 0) + i * w.step) % VOLUME_SIZE;
    return at - (at % w.size);
  };
  const worker = async (): Promise<void> => {
    while (next < w.count) {
      const off = offsetOf(next++);
      if (w.write) await host.write(1, off, buf);
      else await host.read(1, off, w.size);
    }
  };
  const t0 = process.hrtime.bigint();
  await Promise.all(Array.from({ length: w.depth }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return result(w, target, seconds);
}

/** Runs nbdkit's file plugin on FILE; returns the port and a stop function. */
export async function startNbdkit(file: string, dir: string): Promise<{ port: number; stop: () => Promise<void> }> {
  const port = await freePort();
  const pidfile = path.join(dir, 'nbdkit.pid');
  const child = spawn('nbdkit', ['-f', '-P', pidfile, '-p', String(port), '-i', '127.0.0.1', 'file', file], {
    stdio: 'ignore',
  });
  await waitPort(port);
  return { port, stop: () => stop(child) };
}

export function makeSparse(file: string, size: number): void {
  fs.rmSync(file, { force: true });
  const fd = fs.openSync(file, 'w');
  fs.ftruncateSync(fd, size);
  fs.closeSync(fd);
}

/** Timed-run rounds per target; the best round of each row counts. */
export const ROUNDS = 3;

type Target = 'nbdkit-file' | 'repagent-nbd' | 'repagent-nvme';
const TARGETS: Target[] = ['nbdkit-file', 'repagent-nbd', 'repagent-nvme'];

/** One round of one target: a fresh sparse file and process, the warm-up pass, then the timed rows. */
async function benchTarget(target: Target, dir: string, log: (s: string) => void): Promise<Result[]> {
  const file = path.join(dir, `${target}.img`);
  makeSparse(file, VOLUME_SIZE);
  const out: Result[] = [];
  try {
    if (target === 'nbdkit-file') {
      const nbdkit = await startNbdkit(file, dir);
      try {
        const uri = `nbd://127.0.0.1:${nbdkit.port}`;
        for (const w of WORKLOADS) await qemuImgBench(warmupOf(w), uri, target);
        for (const w of WORKLOADS) out.push(await qemuImgBench(w, uri, target));
      } finally {
        await nbdkit.stop();
      }
      return out;
    }
    const stateDir = path.join(dir, `${target}-state`);
    fs.rmSync(stateDir, { recursive: true, force: true });
    const agent = await startBin('repagent', [
      '--volume', `vol=${file}`,
      '--nvme-listen', target === 'repagent-nvme' ? '127.0.0.1:0' : 'off',
      '--nbd-listen', target === 'repagent-nbd' ? '127.0.0.1:0' : 'off',
      '--state-dir', stateDir,
      '--log-level', 'warn',
    ]);
    try {
      const ready = agent.ready as { nbd: { port: number } | null; nvme: { port: number } | null; nqn: string };
      if (target === 'repagent-nbd') {
        const uri = `nbd://127.0.0.1:${ready.nbd?.port}/vol`;
        for (const w of WORKLOADS) await qemuImgBench(warmupOf(w), uri, target);
        for (const w of WORKLOADS) out.push(await qemuImgBench(w, uri, target));
        return out;
      }
      // one I/O queue, like qemu-img's single NBD connection: a like-for-like client
      // SQ flow control disabled, as `nvme connect --disable-sqflow` would: reads then
      // complete with their last C2HData PDU (SUCCESS), one PDU less per read
      const host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: ready.nvme?.port ?? 0, subnqn: ready.nqn, ioQueues: 1, queueDepth: 64, disableSqFlow: true });
      try {
        for (const w of WORKLOADS) await nvmeBench(warmupOf(w), host, target);
        for (const w of WORKLOADS) out.push(await nvmeBench(w, host, target));
      } finally {
        await host.close();
      }
      return out;
    } finally {
      await stop(agent.child);
    }
  } finally {
    fs.rmSync(file, { force: true });
    log(`  ${target}: ${out.map((r) => `${r.workload} ${r.iops}`).join(', ')}`);
  }
}

/**
 * Runs ROUNDS rounds; in each, the targets take turns (so load from other
 * work on a shared machine hits all of them alike), each on a fresh sparse
 * file. Returns the best round per (workload, target) and every round.
 */
export async function benchFrontends(dir: string, log: (s: string) => void): Promise<{ best: Result[]; rounds: Result[][] }> {
  const rounds: Result[][] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    const all: Result[] = [];
    for (const target of TARGETS) all.push(...(await benchTarget(target, dir, (s) => log(`round ${round}${s}`))));
    rounds.push(all);
  }
  const best: Result[] = [];
  for (const target of TARGETS) {
    for (const w of WORKLOADS) {
      const tries = rounds.flatMap((r) => r.filter((x) => x.target === target && x.workload === w.name));
      const top = tries.reduce<Result | undefined>((a, b) => (a === undefined || b.seconds < a.seconds ? b : a), undefined);
      if (top) best.push(top);
    }
  }
  return { best, rounds };
}
