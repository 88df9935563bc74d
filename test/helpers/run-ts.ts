/**
 * Spawns a TypeScript entry file in a child Node process (compiled on the fly
 * by ts-register.js). Tests use it for processes they kill -9. The caller owns
 * the child and must stop it by PID.
 */
import { ChildProcess, spawn, SpawnOptions } from 'node:child_process';
import * as path from 'node:path';

export const TS_REGISTER = path.join(__dirname, 'ts-register.js');

export function spawnTs(entry: string, args: string[] = [], options: SpawnOptions = {}): ChildProcess {
  return spawn(process.execPath, ['-r', TS_REGISTER, entry, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    ...options,
  });
}

/** Sends SIGKILL and waits for the exit event (no-op if already gone). */
export function killHard(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}
