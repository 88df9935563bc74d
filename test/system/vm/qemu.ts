/**
 * runGuest(): boot the test VM once, run one guest shell script, return its
 * verdict, results and console.
 *
 * Per boot, a small cpio overlay (/init, /etc/rep/lib.sh, the script, an env
 * file and the requested files) is appended to the cached base initramfs.
 * QEMU runs TCG (no KVM needed) with slirp networking only: the guest reaches
 * the host's 127.0.0.1 as 10.0.2.2 and nothing else.
 *
 * Two serial ports: ttyS0 is the console (kernel messages + script output),
 * ttyS1 is the report channel (a Unix socket this process listens on, QEMU
 * connects to it at start-up), where only the guest library
 * writes "REP-RESULT K=V", "REP-MARK X" and "REP-VERDICT: ..." lines, so
 * kernel messages can never interleave with results.
 *
 * Lifetime: the host timeout is enforced here (SIGTERM, SIGKILL 3 s later, by
 * PID); every QEMU still alive is killed by stopAllGuests() (call it in
 * afterAll/afterEach) and, as a last resort, on process exit.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { buildCpio, CpioEntry } from './cpio';
import { VmImage } from './image';

export interface GuestFile {
  /** Host path. */
  src: string;
  /** Absolute guest path. */
  dst: string;
}

export interface RunGuestOptions {
  /** Guest sh script text (busybox ash); `. /etc/rep/lib.sh` is prepended. */
  script: string;
  /** Exported to the script (names: [A-Za-z_][A-Za-z0-9_]*). */
  env?: Record<string, string>;
  files?: GuestFile[];
  /** Host-side wall-clock limit for the whole boot + script + power-off. */
  timeoutMs: number;
  memMb?: number;
  smp?: number;
  /** Each report-channel line as it arrives (REP-MARK / REP-RESULT / REP-VERDICT). */
  onReport?: (line: string) => void;
  /** Each console line as it arrives. */
  onConsole?: (line: string) => void;
}

export interface GuestRun {
  /** The guest printed "REP-VERDICT: PASS". */
  ok: boolean;
  /** "PASS ...", "FAIL reason", or "NO VERDICT: why". */
  verdict: string;
  console: string;
  /** KEY=VALUE of every "REP-RESULT KEY=VALUE" line (last one wins). */
  results: Record<string, string>;
  /** Every report-channel line, in order. */
  report: string[];
  timedOut: boolean;
  elapsedMs: number;
}

const GUEST_DIR = path.join(__dirname, 'guest');
const MAX_CONSOLE = 8 * 1024 * 1024;
const live = new Map<number, ChildProcess>();
let exitHookInstalled = false;

function shellQuote(value: string): string {
  return `'${value.replace(/'/g, `'\\''`)}'`;
}

function envFile(env: Record<string, string>): Buffer {
  const lines = Object.entries(env).map(([k, v]) => {
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(k)) throw new Error(`runGuest: bad env name ${JSON.stringify(k)}`);
    return `export ${k}=${shellQuote(v)}`;
  });
  return Buffer.from(lines.join('\n') + '\n');
}

/** Guest watchdog: leaves time for boot (~5-10 s wall under TCG) and power-off. */
export function guestTimeoutSeconds(timeoutMs: number): number {
  const s = Math.floor(timeoutMs / 1000);
  return Math.max(5, s - (s > 60 ? 25 : 20));
}

function overlay(opts: RunGuestOptions): Buffer {
  const env = { ...opts.env, REP_GUEST_TIMEOUT: String(guestTimeoutSeconds(opts.timeoutMs)) };
  const entries: CpioEntry[] = [
    { path: '/init', data: fs.readFileSync(path.join(GUEST_DIR, 'init')), mode: 0o755 },
    { path: '/etc/rep/lib.sh', data: fs.readFileSync(path.join(GUEST_DIR, 'lib.sh')) },
    { path: '/etc/rep/env', data: envFile(env) },
    { path: '/etc/rep/script', data: Buffer.from(`. /etc/rep/lib.sh\n${opts.script}\n`), mode: 0o755 },
  ];
  for (const f of opts.files ?? []) entries.push({ path: f.dst, data: fs.readFileSync(f.src) });
  return zlib.gzipSync(buildCpio(entries), { level: 1 });
}

function qemuArgs(image: VmImage, initrd: string, reportSocket: string, opts: RunGuestOptions): string[] {
  const accel = process.env.REP_VM_ACCEL === 'kvm' ? 'kvm' : 'tcg,thread=multi';
  return [
    '-accel', accel, '-machine', 'pc', '-cpu', 'max',
    '-smp', String(opts.smp ?? 2), '-m', `${opts.memMb ?? 512}M`,
    '-nodefaults', '-no-user-config', '-display', 'none', '-no-reboot', '-monitor', 'none',
    '-serial', 'stdio', '-chardev', `socket,id=report,path=${reportSocket}`, '-serial', 'chardev:report',
    '-kernel', image.kernel, '-initrd', initrd,
    '-append', 'console=ttyS0,115200 rdinit=/init panic=1 oops=panic quiet nokaslr tsc=unstable',
    '-netdev', 'user,id=n0,ipv6=off,net=10.0.2.0/24,host=10.0.2.2',
    '-device', 'virtio-net-pci,netdev=n0,romfile=',
  ];
}

/** Splits a byte stream into lines (CR stripped) and calls `each` per line. */
function lineSplitter(each: (line: string) => void): { push(s: string): void; end(): void } {
  let rest = '';
  return {
    push(s: string) {
      const parts = (rest + s).split('\n');
      rest = parts.pop() ?? '';
      for (const p of parts) each(p.replace(/\r/g, ''));
    },
    end() {
      if (rest.length > 0) each(rest.replace(/\r/g, ''));
      rest = '';
    },
  };
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of live.keys()) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

export async function runGuestWithImage(image: VmImage, opts: RunGuestOptions): Promise<GuestRun> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'rep-vm-'));
  try {
    const initrd = path.join(dir, 'initrd.gz');
    fs.writeFileSync(initrd, Buffer.concat([fs.readFileSync(image.initrd), overlay(opts)]));
    const socketPath = path.join(dir, 'report.sock');
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(socketPath, resolve);
    });
    try {
      return await boot(qemuArgs(image, initrd, socketPath, opts), server, opts);
    } finally {
      server.close();
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Console and report-channel parsing; callback errors are kept and rethrown by runGuest. */
class Collector {
  console = '';
  readonly report: string[] = [];
  readonly results: Record<string, string> = {};
  verdict: string | null = null;
  callbackError: unknown = null;
  private readonly verbose = Boolean(process.env.REP_VM_VERBOSE);

  readonly consoleLines = lineSplitter((line) => {
    if (this.console.length < MAX_CONSOLE) this.console += line + '\n';
    if (this.verbose) process.stderr.write(`[vm] ${line}\n`);
    this.call(this.opts.onConsole, line);
  });

  readonly reportLines = lineSplitter((line) => {
    this.report.push(line);
    const r = /^REP-RESULT ([A-Za-z0-9_.-]+)=(.*)$/.exec(line);
    if (r?.[1] !== undefined) this.results[r[1]] = r[2] ?? '';
    const v = /^REP-VERDICT: (.*)$/.exec(line);
    if (v?.[1] !== undefined && this.verdict === null) this.verdict = v[1];
    this.call(this.opts.onReport, line);
  });

  constructor(private readonly opts: RunGuestOptions) {}

  private call(fn: ((line: string) => void) | undefined, line: string): void {
    if (!fn || this.callbackError !== null) return;
    try {
      fn(line);
    } catch (err) {
      this.callbackError = err;
    }
  }
}

/** Resolves once QEMU's end of the report socket has closed (or QEMU never connected). */
function acceptReport(server: net.Server, collector: Collector): () => Promise<void> {
  let done: Promise<void> | null = null;
  server.once('connection', (sock) => {
    sock.setEncoding('utf8');
    sock.on('data', (s: string) => collector.reportLines.push(s));
    done = new Promise((resolve) => {
      sock.on('error', () => resolve());
      sock.on('close', () => resolve());
    });
  });
  return () => done ?? Promise.resolve();
}

function boot(args: string[], server: net.Server, opts: RunGuestOptions): Promise<GuestRun> {
  installExitHook();
  const started = Date.now();
  const collector = new Collector(opts);
  const reportDrained = acceptReport(server, collector);
  const child = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const pid = child.pid;
  if (pid !== undefined) live.set(pid, child);
  child.stdout?.setEncoding('utf8').on('data', (s: string) => collector.consoleLines.push(s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => collector.consoleLines.push(`[qemu stderr] ${s}`));

  let timedOut = false;
  let killTimer: NodeJS.Timeout | null = null;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGTERM');
    killTimer = setTimeout(() => child.kill('SIGKILL'), 3000);
  }, opts.timeoutMs);

  return new Promise((resolve, reject) => {
    let spawnError: Error | null = null;
    let settled = false;
    const finish = async (exit: string): Promise<void> => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (killTimer) clearTimeout(killTimer);
      if (pid !== undefined) live.delete(pid);
      await reportDrained(); // QEMU is gone, so its end of the socket is closed
      collector.consoleLines.end();
      collector.reportLines.end();
      if (collector.callbackError !== null) return reject(collector.callbackError);
      const verdict = collector.verdict;
      resolve({
        ok: verdict !== null && /^PASS\b/.test(verdict),
        verdict: verdict ?? (timedOut ? `NO VERDICT: timed out after ${opts.timeoutMs} ms` : `NO VERDICT: ${exit}`),
        console: collector.console,
        results: collector.results,
        report: collector.report,
        timedOut,
        elapsedMs: Date.now() - started,
      });
    };
    child.on('error', (err) => {
      spawnError = err;
      if (pid === undefined) void finish(`cannot start qemu-system-x86_64: ${err.message}`);
    });
    child.on('close', (code, signal) => {
      void finish(spawnError ? spawnError.message : `qemu exited (code ${code}, signal ${signal})`);
    });
  });
}

/** Kills every QEMU this process started that is still running, by PID, and waits for it. */
export async function stopAllGuests(): Promise<void> {
  const waits: Promise<void>[] = [];
  for (const [pid, child] of live) {
    waits.push(new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        resolve(); // exited between the check and the kill
      }
    }));
  }
  await Promise.all(waits);
}
