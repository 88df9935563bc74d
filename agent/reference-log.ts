/**
 * Reference log (test mode, the dm-log-writes idea): every write, zero-write
 * and trim the agent completed, in the order it completed them (which is the
 * order their records enter the stream, and in async mode the order the
 * initiator is answered), plus every Seal. A checker replays it to decide
 * whether a replica equals the volume as of some sealed epoch.
 *
 * Files: LOG (JSON lines) and LOG.data (write payloads, appended raw).
 *   {"t":"open","clean":bool,"time":ms}                      agent (re)started
 *   {"t":"w","seq":n,"ep":e,"off":o,"len":l,"k":"data"|"zeroes"|"trim","d":pos}
 *        seq/ep are 0/-1 when the payload was dropped (ahead / no hub) or for
 *        "fix" entries; "d" is the payload's offset in LOG.data (data only)
 *   {"t":"w",...,"fix":true}  after an unclean restart: the content of every
 *        recovered dirty region, read from the volume before any I/O. Writes
 *        that reached the disk but were never acknowledged (kill -9 between
 *        forward and completion) are only known this way; their regions are
 *        always in the recovered dirty set (activity-log.ts invariant).
 *   {"t":"s","ep":e,"pt":bool}  Seal of epoch e; pt = a recovery point (outside
 *        a resync group, or the resync-end seal)
 *
 * Durability: entries are written with writeSync (no fsync) BEFORE the record
 * is handed to the hub link. kill -9 keeps the page cache, so every record the
 * hub could have received is in the log; only a power loss could leave the hub
 * ahead of the log, and we do not test that. A line cut by a crash mid-write
 * is ignored by the reader. The checker therefore claims exactly: "the replica
 * equals the replay of the log up to some logged seal" (optionally: that seal).
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';

export type RefKind = 'data' | 'zeroes' | 'trim';

export type RefEntry =
  | { t: 'open'; clean: boolean; time: number }
  | { t: 'w'; seq: number; ep: number; off: number; len: number; k: RefKind; d?: number; fix?: boolean }
  | { t: 's'; ep: number; pt: boolean };

export class ReferenceLogWriter {
  private readonly fd: number;
  private readonly dataFd: number;
  private dataPos: number;

  constructor(readonly file: string) {
    this.fd = fs.openSync(file, 'a');
    this.dataFd = fs.openSync(`${file}.data`, 'a');
    this.dataPos = fs.fstatSync(this.dataFd).size;
  }

  private line(entry: RefEntry): void {
    fs.writeSync(this.fd, `${JSON.stringify(entry)}\n`);
  }

  open(clean: boolean): void {
    this.line({ t: 'open', clean, time: Date.now() });
  }

  write(seq: number, epoch: number, offset: number, length: number, kind: RefKind, data: Buffer | null, fix = false): void {
    const entry: RefEntry = { t: 'w', seq, ep: epoch, off: offset, len: length, k: kind };
    if (kind === 'data' && data) {
      entry.d = this.dataPos;
      let done = 0;
      while (done < data.length) done += fs.writeSync(this.dataFd, data, done, data.length - done);
      this.dataPos += data.length;
    }
    if (fix) entry.fix = true;
    this.line(entry);
  }

  seal(epoch: number, point: boolean): void {
    this.line({ t: 's', ep: epoch, pt: point });
  }

  close(): void {
    fs.closeSync(this.fd);
    fs.closeSync(this.dataFd);
  }
}

/** Parses a log; a torn or garbled LAST line is dropped, anything else garbled throws. */
export function parseReferenceLog(text: string): RefEntry[] {
  const lines = text.split('\n');
  const out: RefEntry[] = [];
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.length === 0) continue;
    try {
      out.push(JSON.parse(line) as RefEntry);
    } catch (err) {
      const lastNonEmpty = lines.slice(i + 1).every((l) => l.length === 0);
      if (lastNonEmpty) break;
      throw new Error(`reference log line ${i + 1} is garbled: ${(err as Error).message}`);
    }
  }
  return out;
}

export interface CheckOptions {
  size: number;
  regionSize: number;
  /** Volume content before the first entry (default: zeroes). */
  base?: Buffer;
  /** Only this epoch's seal counts (e.g. the hub's latest recovery point). */
  epoch?: number;
  /** Only seals marked as recovery points count (default true). */
  pointsOnly?: boolean;
}

export interface CheckResult {
  ok: boolean;
  /** Epochs of the seals whose replay equals the replica, in log order. */
  matching: number[];
  /** Fewest differing regions seen at any candidate seal. */
  minMismatches: number;
}

const hash = (b: Buffer): string => crypto.createHash('sha256').update(b).digest('base64');

/**
 * Replays `entries` (payloads read through `data(pos, len)`) over `base` and
 * compares per-region hashes with `replica` at every candidate seal. Also
 * counts the state before the first entry when no epoch is requested.
 */
export function checkReplica(
  entries: readonly RefEntry[],
  data: (pos: number, length: number) => Buffer,
  replica: Buffer,
  options: CheckOptions,
): CheckResult {
  const { size, regionSize } = options;
  const model = Buffer.alloc(size);
  if (options.base) options.base.copy(model);
  const regions = Math.ceil(size / regionSize);
  const region = (buf: Buffer, r: number): Buffer => buf.subarray(r * regionSize, Math.min(size, (r + 1) * regionSize));
  const want: string[] = [];
  let mismatches = 0;
  const differs: boolean[] = [];
  for (let r = 0; r < regions; r++) {
    want.push(hash(region(replica, r)));
    differs.push(hash(region(model, r)) !== want[r]);
    if (differs[r]) mismatches++;
  }
  const matching: number[] = [];
  let minMismatches = options.epoch === undefined ? mismatches : Number.POSITIVE_INFINITY;
  if (options.epoch === undefined && mismatches === 0) matching.push(0);
  for (const e of entries) {
    if (e.t === 'w') {
      if (e.k === 'data') data(e.d ?? 0, e.len).copy(model, e.off);
      else model.fill(0, e.off, e.off + e.len);
      const first = Math.floor(e.off / regionSize);
      const end = Math.floor((e.off + Math.max(e.len, 1) - 1) / regionSize) + 1;
      for (let r = first; r < end && r < regions; r++) {
        const d = hash(region(model, r)) !== want[r];
        if (d !== differs[r]) mismatches += d ? 1 : -1;
        differs[r] = d;
      }
    } else if (e.t === 's') {
      if ((options.pointsOnly ?? true) && !e.pt) continue;
      if (options.epoch !== undefined && e.ep !== options.epoch) continue;
      minMismatches = Math.min(minMismatches, mismatches);
      if (mismatches === 0) matching.push(e.ep);
    }
  }
  return { ok: matching.length > 0, matching, minMismatches };
}

/** Convenience for tests: reads LOG and LOG.data from disk and checks `replica`. */
export function checkReplicaFiles(file: string, replica: Buffer, options: CheckOptions): CheckResult {
  const entries = parseReferenceLog(fs.readFileSync(file, 'utf8'));
  const dataFile = fs.readFileSync(`${file}.data`);
  return checkReplica(entries, (pos, len) => dataFile.subarray(pos, pos + len), replica, options);
}
