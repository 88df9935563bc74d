/**
 * Pure pieces of failback (hub/failback.ts drives them):
 *  - byte-range algebra: the set to ship is the union of the recovery side's
 *    changes (the failover view's overlay), the agent's dirty set and what the
 *    replica received after the failover point; ranges are clipped to the
 *    volume, sorted and merged;
 *  - the piece plan that turns ranges into records of bounded size;
 *  - the persisted per-volume record <dataDir>/failback/<volume>.json
 *    (atomic JSON) and its API form FailbackJson (recovery-api.md).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ReplError, asReplError } from '../common/errors';
import { writeFileAtomic } from './journal-storage';
import { VOLUME_NAME_RE } from './volume-meta';

export interface ByteRange {
  offset: number;
  length: number;
}

/** Union of `lists`, clipped to [0, size), sorted, overlapping and adjacent ranges merged. */
export function mergeRanges(lists: readonly (readonly ByteRange[])[], size: number): ByteRange[] {
  const all: ByteRange[] = [];
  for (const list of lists) {
    for (const r of list) {
      const start = Math.max(0, r.offset);
      const end = Math.min(size, r.offset + r.length);
      if (end > start) all.push({ offset: start, length: end - start });
    }
  }
  all.sort((a, b) => a.offset - b.offset);
  const out: ByteRange[] = [];
  for (const r of all) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else {
      out.push({ ...r });
    }
  }
  return out;
}

export function rangeBytes(ranges: readonly ByteRange[]): number {
  let n = 0;
  for (const r of ranges) n += r.length;
  return n;
}

/** Splits ranges into pieces of at most maxPiece bytes, aligned to maxPiece boundaries where they can be. */
export function* pieces(ranges: readonly ByteRange[], maxPiece: number): Generator<ByteRange> {
  for (const r of ranges) {
    const end = r.offset + r.length;
    for (let pos = r.offset; pos < end; ) {
      const next = Math.min(end, (Math.floor(pos / maxPiece) + 1) * maxPiece);
      yield { offset: pos, length: next - pos };
      pos = next;
    }
  }
}

export function isAllZero(buf: Buffer): boolean {
  for (let i = 0; i < buf.length; i++) if (buf[i] !== 0) return false;
  return true;
}

// ---- persisted record ------------------------------------------------------------

export type FailbackState = 'waiting-for-agent' | 'shipping' | 'resuming' | 'done' | 'failed';

export interface FailbackRecord {
  format: 1;
  volume: string;
  /** The failover view whose content wins. */
  viewId: string;
  state: FailbackState;
  startedMs: number;
  finishedMs: number | null;
  /** Bytes the recovery side changed (overlay). */
  changedBytes: number;
  /** Bytes the agent had not replicated when it came back. */
  agentDirtyBytes: number;
  /** Bytes the replica received after the failover point (also rolled back). */
  hubAheadBytes: number;
  /** Bytes covered by the FailbackData records sent (data and zero ranges). */
  shippedBytes: number;
  volumeSize: number;
  /** Generation the failback resumes replication at (0 until chosen). */
  generation: number;
  attempts: number;
  error: string | null;
}

export interface FailbackJson {
  volume: string;
  state: FailbackState;
  changedBytes: number;
  agentDirtyBytes: number;
  hubAheadBytes: number;
  shippedBytes: number;
  volumeSize: number;
  generation: number;
  attempts: number;
  error?: string;
  startedAt: string;
  finishedAt?: string;
}

export function failbackJson(r: FailbackRecord): FailbackJson {
  const out: FailbackJson = {
    volume: r.volume,
    state: r.state,
    changedBytes: r.changedBytes,
    agentDirtyBytes: r.agentDirtyBytes,
    hubAheadBytes: r.hubAheadBytes,
    shippedBytes: r.shippedBytes,
    volumeSize: r.volumeSize,
    generation: r.generation,
    attempts: r.attempts,
    startedAt: new Date(r.startedMs).toISOString(),
  };
  if (r.error) out.error = r.error;
  if (r.finishedMs !== null) out.finishedAt = new Date(r.finishedMs).toISOString();
  return out;
}

const STATES: readonly FailbackState[] = ['waiting-for-agent', 'shipping', 'resuming', 'done', 'failed'];
const isNat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

export function validateFailbackRecord(v: unknown): FailbackRecord {
  const r = v as Partial<FailbackRecord> | null;
  const ok =
    r !== null &&
    typeof r === 'object' &&
    r.format === 1 &&
    typeof r.volume === 'string' &&
    VOLUME_NAME_RE.test(r.volume) &&
    typeof r.viewId === 'string' &&
    STATES.includes(r.state as FailbackState) &&
    isNat(r.startedMs) &&
    (r.finishedMs === null || isNat(r.finishedMs)) &&
    [r.changedBytes, r.agentDirtyBytes, r.hubAheadBytes, r.shippedBytes, r.volumeSize, r.generation, r.attempts].every(isNat) &&
    (r.error === null || typeof r.error === 'string');
  if (!ok) throw ReplError.io('failback record is malformed');
  return r as FailbackRecord;
}

export const FAILBACK_DIR = 'failback';

export function failbackFile(dataDir: string, volume: string): string {
  return path.join(dataDir, FAILBACK_DIR, `${volume}.json`);
}

export async function writeFailbackRecord(dataDir: string, r: FailbackRecord): Promise<void> {
  validateFailbackRecord(r);
  await fs.promises.mkdir(path.join(dataDir, FAILBACK_DIR), { recursive: true });
  await writeFileAtomic(failbackFile(dataDir, r.volume), JSON.stringify(r, null, 1) + '\n');
}

/** Every persisted record (a malformed file is reported through `onError` and skipped). */
export async function readFailbackRecords(dataDir: string, onError: (file: string, err: Error) => void): Promise<FailbackRecord[]> {
  const dir = path.join(dataDir, FAILBACK_DIR);
  let names: string[];
  try {
    names = await fs.promises.readdir(dir);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw asReplError(err);
  }
  const out: FailbackRecord[] = [];
  for (const name of names.sort()) {
    if (!name.endsWith('.json')) continue;
    const file = path.join(dir, name);
    try {
      out.push(validateFailbackRecord(JSON.parse(await fs.promises.readFile(file, 'utf8'))));
    } catch (err) {
      onError(file, asReplError(err));
    }
  }
  return out;
}
