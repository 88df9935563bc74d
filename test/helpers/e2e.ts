/**
 * End-to-end harness for system tests and the soak script: runs the BUILT
 * binaries (dist/cli/rephub.js, repagent.js, repctl.js) as child processes in
 * a temporary directory, on ports bound to 127.0.0.1.
 *
 * Cluster owns every process it starts and the directory: close() stops the
 * processes still running by PID (SIGKILL, they are test processes) and
 * removes the directory. Hubs are restarted on the same data dir AND the same
 * ports (the agent's --hub URL and the NBD port stay valid); agents on the
 * same state dir (they get new front-end ports; the handle says which).
 *
 * waitSynced() sleeps one agent status interval (~500 ms) before it runs
 * `repctl wait-synced`: the hub judges "synced" from the agent's newest
 * AgentStatus, which can predate a write that just completed.
 */
import { ChildProcess } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as path from 'node:path';
import { DIST, Started, run, startBin } from '../../cli/procs';
import { makeTmpDir, removeTmpDir } from './tmpdir';
import { sleep, waitFor } from './wait-for';

export const K = 1024;
export const MiB = K * K;
export const REGION = 64 * K;

export interface Endpoint {
  host: string;
  port: number;
}

export interface HubOptions {
  dataDir?: string;
  /** Fixed HTTP / NBD ports (restart on the same ports); default 0. */
  port?: number;
  nbdPort?: number;
  tokenFile?: string;
}

export interface HubHandle {
  proc: Started;
  pid: number;
  dataDir: string;
  http: Endpoint;
  nbd: Endpoint;
  /** ws://127.0.0.1:PORT, what agents and repctl take. */
  url: string;
  options: HubOptions;
}

export interface AgentOptions {
  volume?: string;
  file: string;
  size: number;
  stateDir: string;
  hubUrl: string;
  queueBytes?: string;
  resyncRate?: string;
  ack?: 'async' | 'sync';
  referenceLog?: string;
  tokenFile?: string;
}

export interface AgentHandle {
  proc: Started;
  pid: number;
  nbd: Endpoint;
  nvme: Endpoint;
  nqn: string;
  nsid: number;
  options: AgentOptions;
}

/** VolumeStatus as served by GET /v1/volumes/NAME (the fields the tests read). */
export interface HubVolume {
  name: string;
  connected: boolean;
  state: string;
  generation: number;
  synced: boolean;
  latestPoint: { epoch: number; seq: number; time: string } | null;
  agent: { ackedSeq: number; dirtyBytes: number; queueBytes: number; ahead: boolean } | null;
  resync: { active: boolean; full: boolean; doneBytes: number; totalBytes: number } | null;
}

const alive = (c: ChildProcess): boolean => c.exitCode === null && c.signalCode === null;

export class Cluster {
  readonly dir: string;
  private readonly children = new Set<ChildProcess>();
  /** Every process started, for the failure artifacts. */
  private readonly started: { name: string; proc: Started }[] = [];
  private keep = false;

  constructor(prefix = 'e2e-') {
    if (!fs.existsSync(path.join(DIST, 'cli', 'repagent.js'))) {
      throw new Error(`built binaries missing under ${DIST}: run 'npm run build' first`);
    }
    this.dir = makeTmpDir(prefix);
  }

  path(...parts: string[]): string {
    return path.join(this.dir, ...parts);
  }

  private track(name: string, proc: Started): number {
    this.started.push({ name: `${name}-${this.started.length}`, proc });
    this.children.add(proc.child);
    proc.child.once('exit', () => this.children.delete(proc.child));
    const pid = proc.child.pid;
    if (pid === undefined) throw new Error('child without a pid');
    return pid;
  }

  async startHub(options: HubOptions = {}): Promise<HubHandle> {
    const dataDir = options.dataDir ?? this.path('hub');
    // the hub's NVMe/TCP view listener is not used here: off, so no fixed default port is needed
    const args = ['--listen', `127.0.0.1:${options.port ?? 0}`, '--data-dir', dataDir, '--nbd-listen', `127.0.0.1:${options.nbdPort ?? 0}`, '--nvme-listen', 'off'];
    if (options.tokenFile) args.push('--token-file', options.tokenFile);
    const proc = await startBin('rephub', args);
    const pid = this.track('hub', proc);
    const ready = proc.ready as { http: Endpoint; nbd: Endpoint | null };
    if (!ready.nbd) throw new Error('hub READY line without an NBD endpoint');
    return {
      proc,
      pid,
      dataDir,
      http: ready.http,
      nbd: ready.nbd,
      url: `ws://127.0.0.1:${ready.http.port}`,
      options: { ...options, dataDir, port: ready.http.port, nbdPort: ready.nbd.port },
    };
  }

  /** Starts a hub again on the same data dir and ports. */
  restartHub(hub: HubHandle): Promise<HubHandle> {
    return this.startHub(hub.options);
  }

  async startAgent(options: AgentOptions): Promise<AgentHandle> {
    const name = options.volume ?? 'v1';
    const args = [
      '--volume', `${name}=${options.file}:${options.size}`,
      '--nvme-listen', '127.0.0.1:0',
      '--nbd-listen', '127.0.0.1:0',
      '--state-dir', options.stateDir,
      '--hub', options.hubUrl,
    ];
    if (options.queueBytes) args.push('--queue-bytes', options.queueBytes);
    if (options.resyncRate) args.push('--resync-rate', options.resyncRate);
    if (options.ack) args.push('--ack', options.ack);
    if (options.referenceLog) args.push('--reference-log', options.referenceLog);
    if (options.tokenFile) args.push('--token-file', options.tokenFile);
    const proc = await startBin('repagent', args);
    const pid = this.track('agent', proc);
    const ready = proc.ready as { nqn: string; nvme: Endpoint; nbd: Endpoint; volumes: { name: string; nsid: number }[] };
    const vol = ready.volumes.find((v) => v.name === name);
    if (!vol) throw new Error(`agent READY line without volume ${name}`);
    return { proc, pid, nbd: ready.nbd, nvme: ready.nvme, nqn: ready.nqn, nsid: vol.nsid, options };
  }

  restartAgent(agent: AgentHandle): Promise<AgentHandle> {
    return this.startAgent(agent.options);
  }

  /** Sends `signal` to the process and waits for it to exit (SIGKILL after graceMs). */
  async stop(h: { proc: Started }, signal: NodeJS.Signals = 'SIGKILL', graceMs = 10_000): Promise<void> {
    const child = h.proc.child;
    if (!alive(child)) return;
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    child.kill(signal);
    const timer = setTimeout(() => alive(child) && child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  /**
   * Keeps the directory (volume, hub data, reference log, mismatching samples)
   * after close() and writes every process's stderr tail into it; returns the
   * path for the failure message.
   */
  keepArtifacts(): string {
    this.keep = true;
    for (const s of this.started) fs.writeFileSync(path.join(this.dir, `${s.name}.stderr.log`), s.proc.stderr());
    return this.dir;
  }

  async close(): Promise<void> {
    await Promise.all([...this.children].map((c) => this.stop({ proc: { child: c } as Started }, 'SIGKILL')));
    if (this.keep) {
      for (const s of this.started) fs.writeFileSync(path.join(this.dir, `${s.name}.stderr.log`), s.proc.stderr());
    } else {
      removeTmpDir(this.dir);
    }
  }
}

// ---- hub HTTP ----------------------------------------------------------------

/** GET on the hub without keep-alive (no idle sockets outlive a test). */
function httpGet(port: number, urlPath: string, timeoutMs = 10_000): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${urlPath}: no answer in ${timeoutMs} ms`)));
    req.on('error', reject);
  });
}

export async function hubVolume(hub: HubHandle, name = 'v1'): Promise<HubVolume | null> {
  const res = await httpGet(hub.http.port, `/v1/volumes/${name}`);
  if (res.status === 404) return null;
  if (res.status !== 200) throw new Error(`GET /v1/volumes/${name}: HTTP ${res.status}`);
  return JSON.parse(res.body) as HubVolume;
}

export async function hubMetrics(hub: HubHandle): Promise<string> {
  const res = await httpGet(hub.http.port, '/metrics');
  if (res.status !== 200) throw new Error(`GET /metrics: HTTP ${res.status}`);
  return res.body;
}

/** Value of one sample line (`name{labels} value`) in Prometheus text; 0 when absent. */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    const m = /^([^{\s]+)(?:\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map([...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1], x[2]]));
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) return Number(m[3]);
  }
  return 0;
}

export async function bytesReceived(hub: HubHandle, volume = 'v1'): Promise<number> {
  return metricValue(await hubMetrics(hub), 'rephub_bytes_received_total', { volume });
}

/** Waits until the hub shows the volume's agent session as (dis)connected. */
export async function waitConnected(hub: HubHandle, connected: boolean, timeoutMs = 30_000, name = 'v1'): Promise<void> {
  await waitFor(async () => (await hubVolume(hub, name))?.connected === connected, {
    timeoutMs,
    intervalMs: 50,
    what: `volume ${name} ${connected ? 'connected' : 'disconnected'} on the hub`,
  });
}

// ---- external commands ---------------------------------------------------------

/**
 * `repctl wait-synced` against the hub (directly, never through a proxy).
 * settleMs: wait first for one AgentStatus period (see the file header); 0 is
 * right only when no write completed since the agent's session started.
 */
export async function waitSynced(hub: HubHandle, name = 'v1', timeoutS = 60, settleMs = 700): Promise<void> {
  if (settleMs > 0) await sleep(settleMs);
  const r = await run(process.execPath, [path.join(DIST, 'cli', 'repctl.js'), 'wait-synced', '--hub', hub.url, '--volume', name, '--timeout', `${timeoutS}s`]);
  if (r.code !== 0) {
    const status = await hubVolume(hub, name).catch((e: Error) => e.message);
    throw new Error(`repctl wait-synced exited ${r.code}: ${r.err.trim()}\nhub status: ${JSON.stringify(status)}`);
  }
}

/** `repctl status --json` (parsed). */
export async function repctlStatus(hub: HubHandle): Promise<{ hubId: string; volumes: HubVolume[] }> {
  const r = await run(process.execPath, [path.join(DIST, 'cli', 'repctl.js'), 'status', '--hub', hub.url, '--json']);
  if (r.code !== 0) throw new Error(`repctl status exited ${r.code}: ${r.err.trim()}`);
  return JSON.parse(r.out) as { hubId: string; volumes: HubVolume[] };
}

/** qemu-img compare of the agent's volume file with the hub's NBD export; throws unless identical. */
export async function assertIdentical(file: string, hub: HubHandle, name = 'v1'): Promise<void> {
  const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', file, `nbd://127.0.0.1:${hub.nbd.port}/${name}`], 120_000);
  if (r.code !== 0 || !/identical/i.test(r.out)) {
    throw new Error(`qemu-img compare exited ${r.code}: ${r.out.trim()} ${r.err.trim()}`);
  }
}

/** qemu-io against an NBD export (e.g. `write -P 0x5a 1M 64K`); throws on failure. */
export async function qemuIo(endpoint: Endpoint, name: string, commands: string[], readOnly = false): Promise<string> {
  const args = ['-f', 'raw', ...(readOnly ? ['-r'] : []), ...commands.flatMap((c) => ['-c', c]), `nbd://127.0.0.1:${endpoint.port}/${name}`];
  const r = await run('qemu-io', args, 120_000);
  if (r.code !== 0 || /fail|error|mismatch/i.test(r.out + r.err)) {
    throw new Error(`qemu-io ${commands.join('; ')} exited ${r.code}: ${r.out.trim()} ${r.err.trim()}`);
  }
  return r.out;
}

/** Resident set size of a process in bytes (/proc/PID/status VmRSS). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}

/** Last `chars` characters of a process's stderr (JSON log lines), for failure messages. */
export function tail(h: { proc: Started }, chars = 3000): string {
  return h.proc.stderr().slice(-chars);
}

// ---- seeded randomness ---------------------------------------------------------

/** mulberry32: small, fast, good enough to drive fault schedules reproducibly. */
export class Rng {
  private state: number;

  constructor(readonly seed: number) {
    this.state = seed >>> 0 || 0x9e3779b9;
  }

  next(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** Integer in [0, n). */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** Integer in [lo, hi]. */
  between(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  /** Pseudo-random bytes derived from the seed stream (AES-128-CTR keystream: fast for MiBs). */
  bytes(n: number): Buffer {
    const key = Buffer.allocUnsafe(16);
    const iv = Buffer.allocUnsafe(16);
    for (let i = 0; i < 16; i += 4) {
      key.writeUInt32LE((this.next() * 4294967296) >>> 0, i);
      iv.writeUInt32LE((this.next() * 4294967296) >>> 0, i);
    }
    const cipher = crypto.createCipheriv('aes-128-ctr', key, iv);
    return Buffer.concat([cipher.update(Buffer.alloc(n)), cipher.final()]);
  }
}

/** Seed from env `name` if set, else from the clock; printed so a failure can be replayed. */
export function seedFrom(name: string): number {
  const v = process.env[name];
  const seed = v !== undefined && v !== '' ? Number(v) : Date.now() % 1_000_000_007;
  if (!Number.isSafeInteger(seed)) throw new Error(`${name}=${v} is not an integer`);
  return seed;
}

export function intFromEnv(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${name}=${v} is not a non-negative integer`);
  return n;
}
