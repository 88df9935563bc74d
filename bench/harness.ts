/**
 * Shared helpers of the replication and recovery benchmarks: start rephub /
 * repagent processes (every child is registered in a ProcSet and stopped by
 * PID in the caller's finally), poll the hub's JSON API, scrape /metrics,
 * drop the page cache, percentiles.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';
import { alignedBuffer } from '../common/block/direct-reader';
import { HubClient } from '../cli/hub-client';
import { waitSynced, VolumeStatusJson } from '../cli/commands/status';
import { freePort, startBin, Started, stop } from '../cli/procs';

/** Processes started by one benchmark step; stopAll() in a finally block. */
export class ProcSet {
  private readonly live = new Set<Started>();

  add(p: Started): Started {
    this.live.add(p);
    p.child.once('exit', () => this.live.delete(p));
    return p;
  }

  async stop(p: Started, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
    await stop(p.child, signal);
    this.live.delete(p);
  }

  async stopAll(): Promise<void> {
    await Promise.all([...this.live].map((p) => stop(p.child)));
    this.live.clear();
  }
}

export interface HubProc {
  proc: Started;
  port: number;
  nbdPort: number | null;
  client: HubClient;
  base: string;
}

/** Starts rephub on `port` (0 = pick a free one) with its data in `dataDir`. */
export async function startHub(procs: ProcSet, dataDir: string, port = 0, extra: string[] = []): Promise<HubProc> {
  const p = port || (await freePort());
  const proc = procs.add(
    await startBin('rephub', [
      '--listen', `127.0.0.1:${p}`,
      '--data-dir', dataDir,
      '--nbd-listen', '127.0.0.1:0',
      '--nvme-listen', 'off',
      '--log-level', 'warn',
      ...extra,
    ]),
  );
  const ready = proc.ready as { http: { port: number }; nbd: { port: number } | null };
  const base = `http://127.0.0.1:${ready.http.port}`;
  return { proc, port: ready.http.port, nbdPort: ready.nbd?.port ?? null, client: new HubClient({ baseUrl: base }), base };
}

export interface AgentProc {
  proc: Started;
  nbdPort: number;
}

/** Starts repagent serving `file` as volume `name` over NBD, replicating to `hubPort` when given. */
export async function startAgent(procs: ProcSet, file: string, stateDir: string, name: string, hubPort: number | null): Promise<AgentProc> {
  const args = ['--volume', `${name}=${file}`, '--nvme-listen', 'off', '--nbd-listen', '127.0.0.1:0', '--state-dir', stateDir, '--log-level', 'warn'];
  if (hubPort !== null) args.push('--hub', `ws://127.0.0.1:${hubPort}`);
  const proc = procs.add(await startBin('repagent', args));
  return { proc, nbdPort: (proc.ready as { nbd: { port: number } }).nbd.port };
}

export function hubSynced(hub: HubProc, volume: string, timeoutMs = 300_000): Promise<VolumeStatusJson> {
  return waitSynced(hub.client, volume, timeoutMs);
}

export function httpText(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    http
      .get(url, (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve(text));
      })
      .on('error', reject);
  });
}

/** Sum of a Prometheus counter over the series whose labels include `volume="NAME"`. */
export async function scrapeCounter(hub: HubProc, metric: string, volume: string): Promise<number> {
  const text = await httpText(`${hub.base}/metrics`);
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${metric}{`) || !line.includes(`volume="${volume}"`)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

/** Drops the page cache (root only). Returns false when that is not possible. */
export function dropCaches(): boolean {
  try {
    fs.writeFileSync('/proc/sys/vm/drop_caches', '3');
    return true;
  } catch {
    return false;
  }
}

/** Writes `size` bytes of random (non-zero, incompressible) data in 1 MiB chunks and fsyncs. */
export function fillFile(file: string, size: number): void {
  const chunk = Buffer.alloc(1024 * 1024);
  const fd = fs.openSync(file, 'w');
  try {
    for (let pos = 0; pos < size; pos += chunk.length) {
      crypto.randomFillSync(chunk);
      fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - pos), pos);
    }
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * The disk's own ceiling for durable sequential writes: `size` bytes written
 * with O_DIRECT in 4 MiB requests, then one fdatasync (what the hub's journal
 * does at best; falls back to buffered writes where O_DIRECT is refused).
 */
export function directWriteMBps(file: string, size: number): { seconds: number; mbps: number; direct: boolean } {
  const chunk = alignedBuffer(4 * 1024 * 1024);
  crypto.randomFillSync(chunk);
  let fd: number;
  let direct = true;
  try {
    fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_TRUNC | fs.constants.O_DIRECT, 0o644);
  } catch {
    direct = false;
    fd = fs.openSync(file, 'w');
  }
  let seconds: number;
  try {
    const t0 = process.hrtime.bigint();
    for (let pos = 0; pos < size; pos += chunk.length) fs.writeSync(fd, chunk, 0, Math.min(chunk.length, size - pos), pos);
    fs.fdatasyncSync(fd);
    seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  } finally {
    fs.closeSync(fd);
    fs.rmSync(file, { force: true });
  }
  return { seconds, mbps: round1(size / seconds / 1e6), direct };
}

/** True when `taskset` can pin processes and there are at least two CPUs to split. */
export function canPin(): boolean {
  if (os.cpus().length < 2) return false;
  return spawnSync('taskset', ['-p', String(process.pid)], { stdio: 'ignore' }).status === 0;
}

/** Pins every thread of `pid` (and the threads it starts later) to the CPUs in `cpus` ("0", "1-3"). */
export function pinProcess(pid: number, cpus: string): void {
  const r = spawnSync('taskset', ['-a', '-p', '-c', cpus, String(pid)], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`taskset -a -p -c ${cpus} ${pid} failed: ${r.stderr}`);
}

/** Plain sequential read of a file in 1 MiB chunks; MB/s. */
export function sequentialReadMBps(file: string): { seconds: number; mbps: number } {
  const buf = Buffer.alloc(1024 * 1024);
  const fd = fs.openSync(file, 'r');
  const t0 = process.hrtime.bigint();
  let total = 0;
  try {
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, total);
      if (n === 0) break;
      total += n;
    }
  } finally {
    fs.closeSync(fd);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { seconds, mbps: round1(total / seconds / 1e6) };
}

export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i] ?? NaN;
}

export function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

export function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

export function ratio(x: number, base: number): string {
  return `${round2(x / base).toFixed(2)}x`;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export function loadAvg(): number[] {
  return os.loadavg().map(round2);
}

export function subdir(dir: string, name: string): string {
  const d = path.join(dir, name);
  fs.rmSync(d, { recursive: true, force: true });
  fs.mkdirSync(d, { recursive: true });
  return d;
}

/** Deterministic xorshift32 PRNG for offsets (benchmarks must be repeatable). */
export function rng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

/** `count` distinct aligned block indices in [0, blocks), deterministic. */
export function distinctBlocks(count: number, blocks: number, seed: number): number[] {
  const r = rng(seed);
  const seen = new Set<number>();
  while (seen.size < count) seen.add(Math.floor(r() * blocks));
  return [...seen];
}
