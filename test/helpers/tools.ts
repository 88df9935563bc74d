/**
 * External tool detection for system tests. Outside CI a missing tool skips
 * the test (with a message naming the tool); with CI=true it is a failure,
 * because .ci/run installs every tool the tests use.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';

const cache = new Map<string, boolean>();

export function isCi(): boolean {
  return process.env.CI === 'true' || process.env.CI === '1';
}

/** Absolute path of an executable on PATH, or null. */
export function findTool(name: string): string | null {
  const dirs = (process.env.PATH ?? '').split(path.delimiter).filter((d) => d.length > 0);
  for (const dir of dirs) {
    const candidate = path.join(dir, name);
    try {
      fs.accessSync(candidate, fs.constants.X_OK);
      if (fs.statSync(candidate).isFile()) return candidate;
    } catch {
      // not here; keep looking
    }
  }
  return null;
}

function toolExists(name: string): boolean {
  let found = cache.get(name);
  if (found === undefined) {
    found = findTool(name) !== null;
    cache.set(name, found);
  }
  return found;
}

/**
 * True when every named tool exists. When one is missing: in CI this throws
 * (the test fails); elsewhere it prints which tool is missing and returns
 * false, and the caller skips (`const maybe = requireTool('x') ? it : it.skip`).
 */
export function requireTool(...names: string[]): boolean {
  const missing = names.filter((n) => !toolExists(n));
  if (missing.length === 0) return true;
  const message = `required tool(s) not found on PATH: ${missing.join(', ')}`;
  if (isCi()) throw new Error(`${message} (CI=true: missing tools are failures)`);
  process.stderr.write(`skipping: ${message}\n`);
  return false;
}

/** `describe` when the tools exist, `describe.skip` otherwise (throws in CI). */
export function describeWithTools(names: string[]): jest.Describe {
  return requireTool(...names) ? describe : describe.skip;
}

/** Runs a tool synchronously and returns its status and output (for quick probes). */
export function runTool(name: string, args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(name, args, { encoding: 'utf8' });
  return { status: r.status, stdout: r.stdout ?? '', stderr: r.stderr ?? '' };
}
