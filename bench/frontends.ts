/**
 * Front-end benchmark (issue 2): the same four workloads through
 *   - qemu-img bench -> nbdkit file plugin   (baseline)
 *   - qemu-img bench -> repagent NBD export
 *   - our NVMe/TCP initiator -> repagent NVMe/TCP target
 * on the same kind of sparse file, in the same run. Ratios are ours/nbdkit.
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
}

export const WORKLOADS: Workload[] = [
  { name: '4k-randwrite-qd1', write: true, size: 4096, depth: 1, count: 4000, step: 4096 * 7919 },
  { name: '4k-randwrite-qd32', write: true, size: 4096, depth: 32, count: 30000, step: 4096 * 7919 },
  { name: '4k-randread-qd32', write: false, size: 4096, depth: 32, count: 30000, step: 4096 * 7919 },
  { name: '128k-seqwrite-qd8', write: true, size: 131072, depth: 8, count: 4000, step: 131072 },
];

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

export async function qemuImgBench(w: Workload, uri: string, target: string): Promise<Result> {
  const args = ['bench', '-f', 'raw', '-c', String(w.count), '-d', String(w.depth), '-s', String(w.size), '-S', String(w.step)];
  if (w.write) args.push('-w');
  args.push(uri);
  const r = await run('qemu-img', args);
  const m = /Run completed in ([\d.]+) seconds/.exec(r.out);
  if (r.code !== 0 || !m) throw new Error(`qemu-img bench failed (${r.code}): ${r.err || r.out}`);
  return result(w, target, Number(m[1]));
}

export async function nvmeBench(w: Workload, host: NvmeTcpHost, target: string): Promise<Result> {
  const buf = Buffer.alloc(w.size, 0x5a);
  let next = 0;
  const offsetOf = (i: number): number => ((i * w.step) % VOLUME_SIZE) - (((i * w.step) % VOLUME_SIZE) % w.size);
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

export async function benchFrontends(dir: string, log: (s: string) => void): Promise<Result[]> {
  const results: Result[] = [];
  const baseFile = path.join(dir, 'nbdkit.img');
  makeSparse(baseFile, VOLUME_SIZE);
  const nbdkit = await startNbdkit(baseFile, dir);
  try {
    for (const w of WORKLOADS) {
      results.push(await qemuImgBench(w, `nbd://127.0.0.1:${nbdkit.port}`, 'nbdkit-file'));
      log(`  nbdkit ${w.name} done`);
    }
  } finally {
    await nbdkit.stop();
  }
  const volFile = path.join(dir, 'agent.img');
  makeSparse(volFile, VOLUME_SIZE);
  const agent = await startBin('repagent', [
    '--volume', `vol=${volFile}`,
    '--nvme-listen', '127.0.0.1:0',
    '--nbd-listen', '127.0.0.1:0',
    '--state-dir', path.join(dir, 'agent-state'),
    '--log-level', 'warn',
  ]);
  try {
    const ready = agent.ready as { nbd: { port: number }; nvme: { port: number }; nqn: string };
    for (const w of WORKLOADS) {
      results.push(await qemuImgBench(w, `nbd://127.0.0.1:${ready.nbd.port}/vol`, 'repagent-nbd'));
      log(`  repagent nbd ${w.name} done`);
    }
    // one I/O queue, like qemu-img's single NBD connection: a like-for-like client
    const host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: ready.nvme.port, subnqn: ready.nqn, ioQueues: 1, queueDepth: 64 });
    try {
      for (const w of WORKLOADS) {
        results.push(await nvmeBench(w, host, 'repagent-nvme'));
        log(`  repagent nvme ${w.name} done`);
      }
    } finally {
      await host.close();
    }
  } finally {
    await stop(agent.child);
  }
  return results;
}
