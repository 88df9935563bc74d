/**
 * System-test VM: a stock Debian 12 kernel (6.1) booted in QEMU (TCG) with a
 * busybox + nvme-cli initramfs, running one guest shell script per boot.
 * Implementation in test/system/vm/ (build-image.sh, guest/init, guest/lib.sh,
 * cpio.ts, image.ts, qemu.ts); guest helpers are documented in guest/lib.sh.
 *
 * Typical use:
 *   let image: VmImage | null;
 *   beforeAll(async () => { image = await ensureVmImage(); }, 300_000);
 *   afterAll(() => stopAllGuests());
 *   it('...', async () => {
 *     if (!image) return skipVm();                       // outside CI, tools missing
 *     const run = await runGuest({ script: 'rep_connect 10.0.2.2 "$PORT" "$NQN" || rep_fail connect',
 *                                  env: { PORT: '4420', NQN: nqn }, timeoutMs: 120_000 });
 *     expect(run.verdict).toBe('PASS');
 *   });
 *
 * The guest reaches the host's 127.0.0.1 as 10.0.2.2 (slirp); it has no other
 * network. Environment: REP_VM_CACHE (image cache, default
 * ~/.cache/blockrep-vm), REP_VM_VERBOSE=1 (stream the console to stderr),
 * REP_VM_REFRESH=1 (re-resolve the kernel package), REP_VM_ACCEL=kvm.
 */
import { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { DIST, Started } from '../../cli/procs';
import { ensureVmImage as ensureImage, VmImage, vmUnavailableReason } from '../system/vm/image';
import { GuestFile, GuestRun, RunGuestOptions, runGuestWithImage, stopAllGuests } from '../system/vm/qemu';
import { makeTmpDir, removeTmpDir } from './tmpdir';
import { isCi, requireTool } from './tools';

export type { GuestFile, GuestRun, RunGuestOptions, VmImage };
export { stopAllGuests, vmUnavailableReason };

/** Builds/caches the image; null (reason: vmUnavailableReason()) if host tools are missing outside CI; throws in CI. */
export function ensureVmImage(): Promise<{ kernel: string; initrd: string } | null> {
  return ensureImage();
}

/** Boots the VM, runs `opts.script`, always stops QEMU (by PID) before resolving. */
export async function runGuest(opts: RunGuestOptions): Promise<GuestRun> {
  const image = await ensureImage();
  if (!image) throw new Error(`runGuest: VM unavailable: ${vmUnavailableReason() ?? 'unknown reason'}`);
  return runGuestWithImage(image, opts);
}

/** For skipped tests outside CI: prints why the VM is unavailable. */
export function skipVm(): void {
  process.stderr.write(`skipped: ${vmUnavailableReason() ?? 'VM unavailable'}\n`);
}

/** A compact failure message: the verdict plus the console tail. */
export function describeRun(run: GuestRun, tailLines = 60): string {
  const tail = run.console.trimEnd().split('\n').slice(-tailLines).join('\n');
  return `guest verdict: ${run.verdict} (${run.elapsedMs} ms${run.timedOut ? ', timed out' : ''})\n--- console tail ---\n${tail}`;
}

/**
 * The set-up every kernel VM test that starts our daemons repeats: the VM
 * image, a host tool, a temporary directory, and every started process killed
 * by PID (SIGKILL) after each test, guests stopped. Call inside describe().
 * `needs` names the built entry point the test runs (dist/cli/NAME.js): when
 * a VM is available (or in CI) a missing build is an error, not a skip.
 */
export interface VmSuite {
  /** Null when the VM is unavailable outside CI (then skipVm()). */
  readonly image: { kernel: string; initrd: string } | null;
  /** The host tool named in useVmSuite is installed. */
  readonly tools: boolean;
  readonly dir: string;
  /** Registers a started daemon for the after-each kill. */
  track(s: Started): Started;
  /** SIGKILL by PID; resolves when the process has exited. */
  kill(child: ChildProcess): Promise<void>;
}

export function useVmSuite(prefix: string, needs: 'repagent' | 'rephub', tool = 'qemu-img'): VmSuite {
  const children = new Set<ChildProcess>();
  const state = { image: null as VmSuite['image'], tools: false, dir: '' };
  const kill = (child: ChildProcess): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return resolve();
      child.once('exit', () => resolve());
      process.kill(child.pid, 'SIGKILL');
    });
  const killAll = async (): Promise<void> => {
    await stopAllGuests();
    await Promise.all([...children].map(kill));
  };
  beforeAll(async () => {
    state.image = await ensureVmImage();
    state.tools = requireTool(tool);
    const built = fs.existsSync(path.join(DIST, 'cli', `${needs}.js`));
    if (!built && (isCi() || state.image)) throw new Error(`${DIST}/cli/${needs}.js missing: run 'npm run build' first`);
    state.dir = makeTmpDir(prefix);
  }, 300_000);
  afterEach(killAll);
  afterAll(async () => {
    await killAll();
    if (state.dir) removeTmpDir(state.dir);
  });
  return {
    get image() {
      return state.image;
    },
    get tools() {
      return state.tools;
    },
    get dir() {
      return state.dir;
    },
    track(s: Started): Started {
      children.add(s.child);
      s.child.once('exit', () => children.delete(s.child));
      return s;
    },
    kill,
  };
}
