/**
 * Temporary directories under os.tmpdir() for tests. `useTmpDir()` creates a
 * fresh directory before each test and removes it afterwards; `makeTmpDir()`
 * is the manual form (the caller removes it with `removeTmpDir`).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export function makeTmpDir(prefix = 'blockrep-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

export function removeTmpDir(dir: string): void {
  fs.rmSync(dir, { recursive: true, force: true });
}

/** Registers beforeEach/afterEach hooks; call `.path` inside a test. */
export function useTmpDir(prefix?: string): { readonly path: string } {
  let current: string | null = null;
  beforeEach(() => {
    current = makeTmpDir(prefix);
  });
  afterEach(() => {
    if (current) removeTmpDir(current);
    current = null;
  });
  return {
    get path(): string {
      if (!current) throw new Error('useTmpDir: path used outside a test');
      return current;
    },
  };
}
