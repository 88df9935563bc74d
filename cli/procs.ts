/**
 * Process helpers for benchmarks and the demo: spawn a project binary or an
 * external tool, wait for its READY line, stop it by PID.
 */
import { ChildProcess, spawn } from 'node:child_process';
import * as net from 'node:net';
import * as path from 'node:path';

/** Root of the compiled tree; works from dist/cli (built) and from cli/ (tests run the sources). */
export const DIST = __dirname.split(path.sep).includes('dist') ? path.join(__dirname, '..') : path.join(__dirname, '..', 'dist');

export interface Started {
  child: ChildProcess;
  ready: Record<string, unknown>;
  stderr: () => string;
}

/** Spawns `node dist/cli/<bin>.js args` and resolves with the JSON of its "READY {...}" stdout line. */
export function startBin(bin: 'repagent' | 'rephub', args: string[], env: NodeJS.ProcessEnv = {}): Promise<Started> {
  const child = spawn(process.execPath, [path.join(DIST, 'cli', `${bin}.js`), ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  let err = '';
  let out = '';
  child.stderr?.on('data', (d: Buffer) => {
    err += d.toString();
    if (err.length > 1 << 20) err = err.slice(-(1 << 19));
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`${bin} did not become ready in 30 s; stderr:\n${err.slice(-4000)}`));
    }, 30000);
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /^READY (.*)$/m.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, ready: JSON.parse(m[1] ?? '{}') as Record<string, unknown>, stderr: () => err });
      }
    });
    child.once('exit', (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`${bin} exited (${code ?? sig}) before ready; stderr:\n${err.slice(-4000)}`));
    });
  });
}

export function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 10000): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill(signal);
  });
}

export function run(cmd: string, args: string[], timeoutMs = 600000): Promise<{ code: number; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    const t = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', (e) => {
      clearTimeout(t);
      reject(e);
    });
    child.on('exit', (code) => {
      clearTimeout(t);
      resolve({ code: code ?? -1, out, err });
    });
  });
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address() as net.AddressInfo;
      srv.close(() => resolve(addr.port));
    });
    srv.on('error', reject);
  });
}

export async function waitPort(port: number, timeoutMs = 15000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1');
      s.once('connect', () => {
        s.destroy();
        resolve(true);
      });
      s.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`port ${port} did not open`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
