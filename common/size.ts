/**
 * Byte sizes on the command line: a plain byte count or a number with a
 * K/M/G/T suffix (powers of 1024, optional trailing "iB"/"B").
 */
import { ReplError } from './errors';

const UNITS: Record<string, number> = { '': 1, K: 1024, M: 1024 ** 2, G: 1024 ** 3, T: 1024 ** 4 };

export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw new ReplError('E_USAGE', `invalid size '${text}' (expected e.g. 4096, 64K, 1G)`);
  const value = Number(m[1]) * (UNITS[(m[2] ?? '').toUpperCase()] ?? 1);
  if (!Number.isSafeInteger(value) || value < 0) {
    throw new ReplError('E_USAGE', `size '${text}' is not a whole number of bytes`);
  }
  return value;
}

export function formatBytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v >= 100 ? 0 : 1)} ${units[i]}`;
}
