/**
 * ensureVmImage(): build (once per cache) and locate the VM kernel + base
 * initramfs by running build-image.sh. The promise is memoized per process;
 * build-image.sh itself serialises parallel jest workers with flock and
 * returns at once when its stamp is current.
 *
 * Missing host tools: outside CI the result is null and vmUnavailableReason()
 * names them (the test skips); with CI=true it throws, because .ci/run
 * installs everything.
 */
import { spawn } from 'node:child_process';
import * as path from 'node:path';
import { findTool, isCi } from '../../helpers/tools';

export interface VmImage {
  kernel: string;
  initrd: string;
}

/** Host tools needed to build and boot the image. */
export const VM_HOST_TOOLS = ['qemu-system-x86_64', 'bash', 'apt-get', 'apt-cache', 'dpkg-deb', 'tar', 'flock', 'gzip'];
const BUILD_SCRIPT = path.join(__dirname, 'build-image.sh');
const BUILD_TIMEOUT_MS = 300_000;

let pending: Promise<VmImage | null> | null = null;
let unavailable: string | null = null;

export function vmUnavailableReason(): string | null {
  return unavailable;
}

export function ensureVmImage(): Promise<VmImage | null> {
  pending ??= build();
  return pending;
}

async function build(): Promise<VmImage | null> {
  const missing = VM_HOST_TOOLS.filter((t) => findTool(t) === null);
  if (missing.length > 0) {
    const reason = `VM tests need host tool(s): ${missing.join(', ')}`;
    if (isCi()) throw new Error(`${reason} (CI=true: missing tools are failures)`);
    unavailable = reason;
    process.stderr.write(`skipping VM tests: ${reason}\n`);
    return null;
  }
  const { code, stdout, stderr } = await runScript();
  const kernel = /^kernel=(.+)$/m.exec(stdout)?.[1];
  const initrd = /^initrd=(.+)$/m.exec(stdout)?.[1];
  if (code !== 0 || !kernel || !initrd) {
    throw new Error(`build-image.sh failed (exit ${code}):\n${stderr.slice(-4000)}`);
  }
  return { kernel, initrd };
}

function runScript(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    // own process group, so a timeout also ends apt-get / dpkg-deb below it
    const child = spawn('bash', [BUILD_SCRIPT], { stdio: ['ignore', 'pipe', 'pipe'], detached: true });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr.setEncoding('utf8').on('data', (s: string) => {
      stderr += s;
      if (process.env.REP_VM_VERBOSE) process.stderr.write(s);
    });
    const timer = setTimeout(() => {
      stderr += `\nbuild-image.sh timed out after ${BUILD_TIMEOUT_MS} ms; killed\n`;
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    }, BUILD_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
