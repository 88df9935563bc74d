/**
 * ActivityLog: crash-safe dirty tracking, DRBD style. Before the first write
 * to a cold activity extent (default 4 MiB) is forwarded to the volume, the
 * extent is recorded durably as "hot"; writes to hot extents cost no metadata
 * I/O. Invariant (what recovery relies on):
 *
 *   every region dirty in memory is either inside an extent of the newest
 *   durable record, or set in the persisted bitmap file (bitmap-store.ts).
 *
 * Hence recovery after kill -9: dirty = persisted bitmap ∪ all regions of
 * every extent in the newest valid record.
 *
 * File `activity.log`, preallocated at creation (zero-filled, never grown):
 *   slot H (4096 bytes) header: 0 magic "RPACTLOG" | 8 version=1 | 12 recordSize
 *     | 16 slotCount | 20 extentShift (log2 extent bytes) | 24 deviceSize u64
 *     | 32..59 zero | 60 CRC32C of bytes 0..59
 *   slot i (recordSize bytes at 4096 + i * recordSize), one per transaction:
 *     0 magic "RPAL" | 4 CRC32C of bytes 8..(32 + 4*count) | 8 txn u64
 *     | 16 flags (bit 0 CLEAN: written by a clean close) | 20 count
 *     | 24 bitmap counter u64 (newest bitmap file when written; diagnostic)
 *     | 32 count x u32 extent numbers (the WHOLE hot set, not a delta)
 *   Transaction txn lives in slot txn % slotCount. Recovery reads every slot
 *   and takes the valid record with the highest txn; torn or corrupt records
 *   (bad magic/CRC/count, wrong slot) are ignored. A torn newest record is
 *   harmless: the writers waiting for it were never forwarded.
 *
 * Group commit: writers needing cold extents join `pending`; one commit at a
 * time writes a record (hot set ∪ batch) and runs ONE fdatasync for the whole
 * batch, then resolves all its writers. Writers arriving meanwhile form the
 * next batch. The hot set is bounded (LRU); an extent may leave it only when
 * it has no dirty region in memory, or when every mark on it precedes the
 * snapshot of the newest persisted bitmap (otherwise we persist the bitmap
 * first). Eviction and building the record happen in one synchronous step.
 */
import assert from 'node:assert';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32c } from '../common/nvme-tcp/crc32c';
import { fdatasync } from '../common/block/file-device';
import { ReplError } from '../common/errors';
import { Logger } from '../common/log';
import { BitmapStore, fsyncDir } from './bitmap-store';
import { DirtyBitmap, isPowerOfTwo } from './dirty-bitmap';

export const ACTIVITY_LOG_FILE = 'activity.log';
const HEADER_BYTES = 4096;
const HEADER_MAGIC = Buffer.from('RPACTLOG', 'ascii');
const RECORD_MAGIC = 0x4c415052; // "RPAL" little-endian
const RECORD_HEADER_BYTES = 32;
const FLAG_CLEAN = 1;
/** Extents made hot together when a sequential writer crosses into a cold one. */
export const READ_AHEAD_EXTENTS = 8;
export const DEFAULT_EXTENT_SIZE = 4 * 1024 * 1024;
export const DEFAULT_HOT_EXTENTS = 1237;
export const DEFAULT_SLOTS = 64;

export interface ActivityRecord {
  txn: number;
  clean: boolean;
  bitmapCounter: number;
  extents: number[];
}

export interface LogGeometry {
  recordSize: number;
  slotCount: number;
  extentShift: number;
  deviceSize: number;
}

/** Record size that holds `hotExtents` with room for commits racing an eviction. */
export function recordSizeFor(hotExtents: number): number {
  return Math.ceil((RECORD_HEADER_BYTES + 4 * (hotExtents + 256)) / 4096) * 4096;
}

export function recordCapacity(recordSize: number): number {
  return Math.floor((recordSize - RECORD_HEADER_BYTES) / 4);
}

export function encodeRecord(rec: ActivityRecord, recordSize: number): Buffer {
  assert(rec.extents.length <= recordCapacity(recordSize), 'activity record overflow');
  const out = Buffer.alloc(recordSize);
  out.writeUInt32LE(RECORD_MAGIC, 0);
  out.writeBigUInt64LE(BigInt(rec.txn), 8);
  out.writeUInt32LE(rec.clean ? FLAG_CLEAN : 0, 16);
  out.writeUInt32LE(rec.extents.length, 20);
  out.writeBigUInt64LE(BigInt(rec.bitmapCounter), 24);
  let pos = RECORD_HEADER_BYTES;
  for (const x of rec.extents) {
    out.writeUInt32LE(x, pos);
    pos += 4;
  }
  out.writeUInt32LE(crc32c(out, 0, 8, pos), 4);
  return out;
}

/** Decodes slot `slot`; null when the slot is empty, torn, corrupt or misplaced. */
export function decodeRecord(buf: Buffer, slot: number, slotCount: number): ActivityRecord | null {
  if (buf.length < RECORD_HEADER_BYTES || buf.readUInt32LE(0) !== RECORD_MAGIC) return null;
  const count = buf.readUInt32LE(20);
  if (count > recordCapacity(buf.length)) return null;
  const end = RECORD_HEADER_BYTES + 4 * count;
  if (crc32c(buf, 0, 8, end) !== buf.readUInt32LE(4)) return null;
  const txn = Number(buf.readBigUInt64LE(8));
  if (!Number.isSafeInteger(txn) || txn % slotCount !== slot) return null;
  const extents: number[] = [];
  for (let pos = RECORD_HEADER_BYTES; pos < end; pos += 4) extents.push(buf.readUInt32LE(pos));
  return { txn, clean: (buf.readUInt32LE(16) & FLAG_CLEAN) !== 0, bitmapCounter: Number(buf.readBigUInt64LE(24)), extents };
}

export function encodeLogHeader(g: LogGeometry): Buffer {
  const out = Buffer.alloc(HEADER_BYTES);
  HEADER_MAGIC.copy(out, 0);
  out.writeUInt32LE(1, 8);
  out.writeUInt32LE(g.recordSize, 12);
  out.writeUInt32LE(g.slotCount, 16);
  out.writeUInt32LE(g.extentShift, 20);
  out.writeBigUInt64LE(BigInt(g.deviceSize), 24);
  out.writeUInt32LE(crc32c(out.subarray(0, 60)), 60);
  return out;
}

export function decodeLogHeader(buf: Buffer): LogGeometry | null {
  if (buf.length < 64 || !buf.subarray(0, 8).equals(HEADER_MAGIC)) return null;
  if (crc32c(buf.subarray(0, 60)) !== buf.readUInt32LE(60) || buf.readUInt32LE(8) !== 1) return null;
  const g = {
    recordSize: buf.readUInt32LE(12),
    slotCount: buf.readUInt32LE(16),
    extentShift: buf.readUInt32LE(20),
    deviceSize: Number(buf.readBigUInt64LE(24)),
  };
  if (g.recordSize < 4096 || g.recordSize % 4096 !== 0 || g.slotCount < 2 || g.extentShift > 40) return null;
  return g;
}

/** Newest valid record among the slots of a whole log file image. */
export function newestRecord(file: Buffer, g: LogGeometry): ActivityRecord | null {
  let best: ActivityRecord | null = null;
  for (let slot = 0; slot < g.slotCount; slot++) {
    const start = HEADER_BYTES + slot * g.recordSize;
    if (start + g.recordSize > file.length) break;
    const rec = decodeRecord(file.subarray(start, start + g.recordSize), slot, g.slotCount);
    if (rec && (!best || rec.txn > best.txn)) best = rec;
  }
  return best;
}

export interface ActivityLogOptions {
  dir: string;
  regionSize: number;
  deviceSize: number;
  /** Replication generation to stamp into bitmap files. */
  generation: () => number;
  extentSize?: number;
  hotExtents?: number;
  slots?: number;
  logger: Logger;
}

export interface RecoveryInfo {
  /** The previous run ended with a clean close (or this is a new log). */
  clean: boolean;
  created: boolean;
  bitmapStatus: string;
  /** Extents the newest record named hot; their regions were added to the dirty set. */
  hotExtents: number[];
  /** Generation found in the bitmap file. */
  bitmapGeneration: number;
}

export class ActivityLog {
  readonly extentSize: number;
  private readonly extentShift: number;
  private readonly hotMax: number;
  private readonly capacity: number;
  /** Durable hot extents in LRU order (oldest first) -> mark counter of their newest mark. */
  private readonly hot = new Map<number, number>();
  /** Extents wanted hot that are not yet in a commit. */
  private pending = new Set<number>();
  /** Extents inside the commit being written (null when idle). */
  private committing: Set<number> | null = null;
  private current: Promise<void> | null = null;
  private next: { promise: Promise<void>; resolve: () => void; reject: (e: unknown) => void } | null = null;
  /** Incremented on every noted write; compared with persistedMark for eviction. */
  private markCounter = 0;
  /** markCounter at the snapshot of the newest durable bitmap file. */
  private persistedMark = 0;
  private txn: number;
  private bitmapCounter = 0;
  private closed = false;
  readonly stats = { commits: 0, records: 0, bitmapSaves: 0, evictions: 0 };

  private constructor(
    private readonly fd: number,
    private readonly g: LogGeometry,
    readonly bitmap: DirtyBitmap,
    private readonly store: BitmapStore,
    private readonly options: ActivityLogOptions,
    txn: number,
  ) {
    this.extentShift = g.extentShift;
    this.extentSize = 2 ** g.extentShift;
    this.hotMax = options.hotExtents ?? DEFAULT_HOT_EXTENTS;
    this.capacity = recordCapacity(g.recordSize);
    this.txn = txn;
  }

  /**
   * Opens (creating if needed) the activity log and bitmap file in `dir` and
   * recovers the dirty set: persisted bitmap ∪ regions of the newest hot set.
   * The merged set is persisted and a fresh empty record written before any
   * write is accepted, so a second crash cannot lose the recovered extents.
   */
  static async open(options: ActivityLogOptions): Promise<{ log: ActivityLog; recovery: RecoveryInfo }> {
    const extentSize = options.extentSize ?? DEFAULT_EXTENT_SIZE;
    assert(isPowerOfTwo(extentSize) && extentSize >= options.regionSize, 'extent size: power of two >= region size');
    const want: LogGeometry = {
      recordSize: recordSizeFor(options.hotExtents ?? DEFAULT_HOT_EXTENTS),
      slotCount: options.slots ?? DEFAULT_SLOTS,
      extentShift: Math.log2(extentSize),
      deviceSize: options.deviceSize,
    };
    fs.mkdirSync(options.dir, { recursive: true });
    const file = path.join(options.dir, ACTIVITY_LOG_FILE);
    const store = new BitmapStore(options.dir, options.logger);
    const loaded = store.load(options.regionSize, options.deviceSize);
    const bitmap = loaded.bitmap;
    const info: RecoveryInfo = { clean: true, created: false, bitmapStatus: loaded.status, hotExtents: [], bitmapGeneration: loaded.generation };
    let txn = 0;
    const image = fs.existsSync(file) ? fs.readFileSync(file) : null;
    const have = image ? decodeLogHeader(image) : null;
    if (!image) {
      info.created = true;
      if (loaded.status !== 'missing') {
        // a bitmap without its activity log: hot extents unknown, so everything is suspect
        options.logger.error({ dir: options.dir }, 'activity log missing next to a bitmap: marking every region dirty');
        bitmap.setAll();
        info.clean = false;
      }
    } else {
      const rec = have ? newestRecord(image, have) : null;
      if (!have || !rec || have.deviceSize !== options.deviceSize) {
        options.logger.error({ file }, 'activity log unreadable or for another device size: marking every region dirty');
        bitmap.setAll();
        info.clean = false;
      } else {
        txn = rec.txn;
        info.clean = rec.clean;
        info.hotExtents = rec.extents;
        const shift = have.extentShift;
        for (const x of rec.extents) {
          const off = x * 2 ** shift;
          if (off >= options.deviceSize) continue;
          const r = bitmap.regionsOf(off, Math.min(2 ** shift, options.deviceSize - off));
          bitmap.setRange(r.start, r.end);
        }
      }
    }
    const sameGeometry = have !== null && JSON.stringify(have) === JSON.stringify(want);
    if (!sameGeometry) await createLogFile(file, want, options.dir);
    const fd = fs.openSync(file, 'r+');
    const log = new ActivityLog(fd, want, bitmap, store, options, txn);
    try {
      // persist the recovered set before the first new record can drop the old hot set
      if (!info.clean || loaded.status !== 'ok') await log.persistBitmap();
      await log.writeRecord(false, []);
    } catch (err) {
      fs.closeSync(fd);
      throw err;
    }
    return { log, recovery: info };
  }

  extentsOf(offset: number, length: number): { first: number; end: number } {
    if (length <= 0) return { first: 0, end: 0 };
    return { first: Math.floor(offset / this.extentSize), end: Math.floor((offset + length - 1) / this.extentSize) + 1 };
  }

  /**
   * Called after the range's bits were set in memory. Returns null when every
   * extent of the range is durably hot (no I/O), else a promise for the group
   * commit that makes them hot.
   */
  ensureHot(offset: number, length: number): Promise<void> | null {
    if (this.closed) return Promise.reject(ReplError.closed('activity log'));
    const mark = ++this.markCounter;
    const { first, end } = this.extentsOf(offset, length);
    let waitCurrent = false;
    let waitNext = false;
    for (let x = first; x < end; x++) {
      if (this.hot.has(x)) {
        this.hot.delete(x); // move to the LRU tail
        this.hot.set(x, mark);
      } else if (this.committing?.has(x)) {
        waitCurrent = true;
      } else {
        this.pending.add(x);
        waitNext = true;
        this.readAhead(x);
      }
    }
    if (waitNext) return this.scheduleNext();
    if (waitCurrent) return this.current;
    return null;
  }

  /**
   * Sequential read-ahead: a cold extent right after a hot (or incoming) one
   * is a sequential writer crossing into it, and it will cross into the next
   * ones soon; make READ_AHEAD_EXTENTS of them hot in the same commit, so a
   * stream pays one fdatasync per READ_AHEAD_EXTENTS extents instead of one
   * each. Only into free room of the hot set (never evicting for a guess);
   * the crash bound is unchanged (at most hotMax extents are hot), a crash
   * just resends a few more extents that may be clean.
   */
  private readAhead(x: number): void {
    const prev = x - 1;
    if (prev < 0 || !(this.hot.has(prev) || this.pending.has(prev) || this.committing?.has(prev))) return;
    for (let k = 1; k < READ_AHEAD_EXTENTS; k++) {
      const y = x + k;
      if (y * this.extentSize >= this.bitmap.deviceSize) return;
      if (this.hot.size + this.pending.size >= this.hotMax) return;
      if (!this.hot.has(y) && !this.committing?.has(y)) this.pending.add(y);
    }
  }

  private scheduleNext(): Promise<void> {
    if (!this.next) {
      let resolve!: () => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<void>((res, rej) => ((resolve = res), (reject = rej)));
      this.next = { promise, resolve, reject };
      // setImmediate lets every writer of this event-loop turn join the batch
      if (!this.current) setImmediate(() => this.startCommit());
    }
    return this.next.promise;
  }

  /** Starts one commit for the pending batch; the next batch starts when it ends. */
  private startCommit(): void {
    const waiter = this.next;
    if (this.current || !waiter) return;
    this.next = null;
    const batch = this.pending;
    this.pending = new Set();
    this.committing = batch;
    this.current = waiter.promise;
    const finish = (): void => {
      this.current = null;
      this.committing = null;
      if (this.next) this.startCommit();
    };
    this.commit(batch).then(
      () => {
        finish();
        waiter.resolve();
      },
      (err) => {
        finish();
        waiter.reject(err);
      },
    );
  }

  private async commit(batch: Set<number>): Promise<void> {
    await this.makeRoom(batch.size);
    await this.writeRecord(false, [...this.hot.keys(), ...batch]);
    this.stats.commits++;
    for (const x of batch) this.hot.set(x, this.markCounter);
  }

  /** Evicts LRU extents until `incoming` more fit; persists the bitmap when no victim is safe. */
  private async makeRoom(incoming: number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const excess = this.hot.size + incoming - this.hotMax;
      if (excess <= 0) return;
      const victims: number[] = [];
      for (const [x, mark] of this.hot) {
        if (victims.length >= excess) break;
        if (mark <= this.persistedMark || !this.extentDirty(x)) victims.push(x);
      }
      if (victims.length >= excess || (attempt > 0 && this.hot.size + incoming <= this.capacity)) {
        for (const x of victims) this.hot.delete(x);
        this.stats.evictions += victims.length;
        return;
      }
      if (attempt > 8) throw ReplError.internal('activity log: cannot make room in the hot set');
      await this.persistBitmap();
    }
  }

  private extentDirty(x: number): boolean {
    const off = x * this.extentSize;
    if (off >= this.bitmap.deviceSize) return false;
    const r = this.bitmap.regionsOf(off, Math.min(this.extentSize, this.bitmap.deviceSize - off));
    return this.bitmap.countSet(r.start, r.end) > 0;
  }

  /** Persists the in-memory bitmap; marks made before this call are covered once it resolves. */
  async persistBitmap(): Promise<void> {
    const mark = this.markCounter;
    this.bitmapCounter = await this.store.save(this.bitmap, this.options.generation());
    this.stats.bitmapSaves++;
    if (mark > this.persistedMark) this.persistedMark = mark;
  }

  private async writeRecord(clean: boolean, extents: number[]): Promise<void> {
    const txn = this.txn + 1;
    const buf = encodeRecord({ txn, clean, bitmapCounter: this.bitmapCounter, extents }, this.g.recordSize);
    const pos = HEADER_BYTES + (txn % this.g.slotCount) * this.g.recordSize;
    try {
      await pwriteAll(this.fd, buf, pos);
      await fdatasync(this.fd);
    } catch (err) {
      throw ReplError.io(`activity log write failed: ${(err as Error).message}`, err);
    }
    this.txn = txn;
    this.stats.records++;
  }

  get hotCount(): number {
    return this.hot.size;
  }

  hotExtents(): number[] {
    return [...this.hot.keys()];
  }

  /**
   * Clean close (style rule 16 step 4): the caller has drained I/O. Persists
   * the bitmap, then writes a CLEAN record with an empty hot set.
   */
  async close(): Promise<void> {
    if (this.closed) return;
    while (this.current || this.next) await (this.current ?? this.next?.promise)?.catch(() => undefined);
    this.closed = true;
    try {
      await this.persistBitmap();
      this.hot.clear();
      await this.writeRecord(true, []);
    } finally {
      fs.closeSync(this.fd);
    }
  }

  /** Closes the file without the clean-close steps (tests simulating a crash). */
  abandon(): void {
    if (this.closed) return;
    this.closed = true;
    fs.closeSync(this.fd);
  }
}

function pwriteAll(fd: number, buf: Buffer, pos: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const step = (done: number): void => {
      if (done >= buf.length) return resolve();
      fs.write(fd, buf, done, buf.length - done, pos + done, (err, n) => (err ? reject(err) : step(done + n)));
    };
    step(0);
  });
}

async function createLogFile(file: string, g: LogGeometry, dir: string): Promise<void> {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, encodeLogHeader(g), 0, HEADER_BYTES, 0);
    // zero-fill every slot now: the hot path only overwrites allocated blocks
    const zero = Buffer.alloc(g.recordSize);
    for (let slot = 0; slot < g.slotCount; slot++) fs.writeSync(fd, zero, 0, zero.length, HEADER_BYTES + slot * g.recordSize);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(dir);
}
