/**
 * Journal: one volume's append-only log of replication records in
 * preallocated segment files, with group commit and crash recovery.
 *
 * On-disk format: see journal-record.ts (record + segment header) and
 * journal-storage.ts (directory layout, manifest). Positions: a record's
 * position is ordinal * 2^32 + byte offset of its header in the segment, so
 * positions grow with journal order across segments (segments < 4 GiB).
 *
 * Write path (group commit): append() encodes the header, queues it and
 * returns a promise. One flush loop takes everything queued, writes it with
 * one writev per segment, then one fdatasync, then resolves every promise of
 * the batch in append order. Records appended while a sync runs form the next
 * batch. When a record does not fit the active segment, the loop syncs it,
 * switches to the spare segment (created at full size in the background, so
 * appends never grow a file), and commits a manifest naming the old segment
 * sealed at its end offset and the new one active, before writing on.
 *
 * Recovery (open): each segment the manifest names is scanned (journal-scan.ts) from byte 4096;
 * the scan stops at the first record that fails any check (torn or corrupt
 * tail). A sealed segment must scan exactly to its end offset (anything else
 * is real corruption: E_IO). The tail segment is sealed where its scan
 * stopped and a fresh segment becomes active, so bytes after a torn record are
 * never followed by new records. Files the manifest does not name (a spare
 * created just before a crash) are deleted.
 *
 * Failure: an I/O error fails every queued and future append (fail-stop); the
 * owner reopens the journal, which recovers to the last durable record.
 */
import * as crypto from 'node:crypto';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { crc32c } from '../common/nvme-tcp/crc32c';
import {
  RECORD_HEADER_BYTES,
  SEGMENT_HEADER_BYTES,
  POSITION_SCALE,
  RecordHeader,
  encodeRecordHeaderInto,
  encodeSegmentHeader,
  ordinalOf,
  positionOf,
} from './journal-record';
import { scanSegment } from './journal-scan';
import { JournalManifest, JournalStorage, ManifestSegment, SegmentFile } from './journal-storage';

const NO_DATA: Buffer = Buffer.alloc(0);
export const DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024;
export const DEFAULT_MAX_RECORD_BYTES = 8 * 1024 * 1024;

export { POSITION_SCALE, ordinalOf, positionOf };

export interface JournalOptions {
  /** Size of each preallocated segment file (< 4 GiB). */
  segmentBytes?: number;
  /** Largest payload of one record. */
  maxRecordBytes?: number;
  /** Owner token in segment names (<= 20 chars of [A-Za-z0-9_]). */
  owner: string;
  logger: Logger;
}

/** A durable record: where it is and what its header says. */
export interface JournalEntry {
  position: number;
  /** Absolute byte position of the payload inside its segment file. */
  dataOffset: number;
  header: RecordHeader;
}

export type AppendInput = Omit<RecordHeader, 'salt' | 'dataLength' | 'dataCrc'> & {
  data?: Buffer;
  /** CRC32C of data when the caller already knows it (verified wire CRC). */
  dataCrc?: number;
};

interface Pending {
  input: AppendInput;
  resolve: (e: JournalEntry) => void;
  reject: (err: unknown) => void;
}

/** A batch written to `file` (not yet synced), and the counters it brings. */
interface Written {
  entries: JournalEntry[];
  file: SegmentFile;
  seq: number;
  epoch: number;
}

interface Active {
  file: SegmentFile;
  meta: ManifestSegment;
  writeOffset: number;
}

export class Journal {
  private readonly segmentBytes: number;
  private readonly maxRecordBytes: number;
  /** Open segment files by ordinal (sealed ones are kept open for reads). */
  private readonly files = new Map<number, SegmentFile>();
  private readonly queue: Pending[] = [];
  private flushing: Promise<void> | null = null;
  /** Set while the flush loop waits for a sync with nothing to write: an append wakes it. */
  private wake: (() => void) | null = null;
  private spare: Promise<{ file: SegmentFile; meta: ManifestSegment }> | null = null;
  /** Set on the first I/O error; every later append fails with it. */
  private failure: ReplError | null = null;
  private closing: Promise<void> | null = null;
  private manifestWrites: Promise<void> = Promise.resolve();
  durableSeq: number;
  durableEpoch: number;
  /** The same counters over every record written, synced or not (the next batch starts from them). */
  private writtenSeq: number;
  private writtenEpoch: number;
  readonly stats = { fsyncs: 0, records: 0, bytes: 0 };
  /** Payload bytes queued and not yet durable (for backpressure). */
  queuedBytes = 0;

  private constructor(
    private readonly storage: JournalStorage,
    private manifest: JournalManifest,
    private active: Active,
    private readonly options: JournalOptions,
  ) {
    this.segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    this.maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    this.durableSeq = manifest.durableSeq;
    this.durableEpoch = manifest.durableEpoch;
    this.writtenSeq = manifest.durableSeq;
    this.writtenEpoch = manifest.durableEpoch;
  }

  /**
   * Opens (or creates) the journal and replays every valid record, in journal
   * order, into onRecord before returning.
   */
  static async open(
    storage: JournalStorage,
    options: JournalOptions,
    onRecord: (entry: JournalEntry) => void,
  ): Promise<Journal> {
    const segmentBytes = options.segmentBytes ?? DEFAULT_SEGMENT_BYTES;
    const maxRecordBytes = options.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    if (!/^\w{1,20}$/.test(options.owner)) throw ReplError.invalid(`journal owner '${options.owner}' is not a token`);
    if (segmentBytes >= POSITION_SCALE || segmentBytes < SEGMENT_HEADER_BYTES + 2 * (RECORD_HEADER_BYTES + maxRecordBytes)) {
      throw ReplError.invalid(`segment size ${segmentBytes} must hold two records of ${maxRecordBytes} bytes and be < 4 GiB`);
    }
    const manifest: JournalManifest = (await storage.loadManifest()) ?? {
      format: 1,
      owner: options.owner,
      segments: [],
      nextOrdinal: 0,
      durableSeq: 0,
      durableEpoch: 0,
      meta: {},
    };
    const files = new Map<number, SegmentFile>();
    let durableSeq = manifest.durableSeq;
    let durableEpoch = manifest.durableEpoch;
    try {
      for (const seg of manifest.segments) {
        const file = await storage.openSegment(seg.name);
        files.set(seg.ordinal, file);
        const end = await scanSegment(file, seg, maxRecordBytes, (entry) => {
          durableSeq = Math.max(durableSeq, entry.header.seq);
          if (entry.header.type === 'seal') durableEpoch = Math.max(durableEpoch, entry.header.epoch);
          onRecord(entry);
        });
        if (seg.endOffset !== null && end !== seg.endOffset) {
          throw new ReplError('E_IO', `journal segment ${seg.name} is corrupt at byte ${end} (sealed at ${seg.endOffset})`);
        }
        if (seg.endOffset === null) {
          seg.endOffset = end;
          options.logger.info({ segment: seg.name, end }, 'journal tail recovered');
        }
      }
    } catch (err) {
      for (const f of files.values()) await f.close().catch(() => undefined);
      throw asReplError(err);
    }
    manifest.durableSeq = durableSeq;
    manifest.durableEpoch = durableEpoch;
    const fresh = await createSegment(storage, manifest, options.owner, segmentBytes);
    files.set(fresh.meta.ordinal, fresh.file);
    manifest.segments.push(fresh.meta);
    await storage.storeManifest(manifest);
    const named = new Set(manifest.segments.map((s) => s.name));
    for (const name of await storage.listSegments()) {
      if (!named.has(name)) await storage.removeSegment(name);
    }
    const journal = new Journal(
      storage,
      manifest,
      { file: fresh.file, meta: fresh.meta, writeOffset: SEGMENT_HEADER_BYTES },
      options,
    );
    for (const [ordinal, file] of files) journal.files.set(ordinal, file);
    journal.prepareSpare();
    return journal;
  }

  /** Queues a record; resolves with its entry once it is durable (after fdatasync). */
  append(input: AppendInput): Promise<JournalEntry> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(ReplError.closed('journal'));
    const dataLength = input.data?.length ?? 0;
    if (dataLength > this.maxRecordBytes) {
      return Promise.reject(ReplError.invalid(`record of ${dataLength} bytes exceeds ${this.maxRecordBytes}`));
    }
    return new Promise<JournalEntry>((resolve, reject) => {
      this.queue.push({ input, resolve, reject });
      this.queuedBytes += dataLength;
      this.kick();
    });
  }

  /** Starts the flush loop unless it runs; restarts it for records queued while it was finishing. */
  private kick(): void {
    if (this.flushing) {
      this.wake?.(); // the loop may be waiting on a sync with nothing to write
      return;
    }
    this.flushing = this.flushLoop().finally(() => {
      this.flushing = null;
      if (this.queue.length > 0) this.kick();
    });
  }

  /** Reads `length` payload bytes of a durable record starting `skip` bytes into its payload. */
  async readData(entry: Pick<JournalEntry, 'position' | 'dataOffset'>, skip: number, length: number): Promise<Buffer> {
    const file = this.files.get(ordinalOf(entry.position));
    if (!file) throw new ReplError('E_IO', `journal record at ${entry.position} was reclaimed`);
    return file.read(entry.dataOffset + skip, length);
  }

  get failed(): ReplError | null {
    return this.failure;
  }

  /** Bytes of all retained segments (what the journal occupies). */
  get bytes(): number {
    return this.manifest.segments.length * this.segmentBytes;
  }

  /** Ordinal of the segment being appended to. */
  get activeOrdinal(): number {
    return this.active.meta.ordinal;
  }

  get meta(): Record<string, unknown> {
    return this.manifest.meta;
  }

  /** Retained segments as [ordinal, byte size] in journal order. */
  segments(): { ordinal: number; bytes: number }[] {
    return this.manifest.segments.map((s) => ({ ordinal: s.ordinal, bytes: this.segmentBytes }));
  }

  /** Persists the user's opaque state in the manifest (atomic). */
  updateMeta(meta: Record<string, unknown>): Promise<void> {
    return this.commitManifest(() => {
      this.manifest.meta = meta;
    });
  }

  /**
   * Drops every sealed segment whose records all lie before `position` (the
   * caller has applied them elsewhere), persisting `meta` in the same manifest.
   */
  async reclaim(position: number, meta: Record<string, unknown>): Promise<number> {
    const limit = ordinalOf(position);
    let victims: ManifestSegment[] = [];
    await this.commitManifest(() => {
      victims = this.manifest.segments.filter((s) => s.ordinal < limit && s.ordinal !== this.active.meta.ordinal);
      this.manifest.segments = this.manifest.segments.filter((s) => !victims.includes(s));
      this.manifest.meta = meta;
    });
    for (const v of victims) {
      const file = this.files.get(v.ordinal);
      this.files.delete(v.ordinal);
      await file?.close().catch(() => undefined);
      await this.storage.removeSegment(v.name);
    }
    return victims.length;
  }

  /** True while appends to the active segment bypass the page cache (journal-storage.ts). */
  get directIo(): boolean {
    return this.active.file.direct;
  }

  /** Waits until every record appended so far is durable (or failed). */
  async drain(): Promise<void> {
    while (this.flushing) await this.flushing.catch(() => undefined);
  }

  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        try {
          await this.drain();
          await this.manifestWrites.catch(() => undefined);
          const spare = await this.spare?.catch(() => null);
          if (spare) {
            await spare.file.close().catch(() => undefined);
            await this.storage.removeSegment(spare.meta.name).catch(() => undefined);
          }
        } finally {
          for (const f of this.files.values()) await f.close().catch(() => undefined);
          this.files.clear();
        }
      })();
    }
    return this.closing;
  }

  private commitManifest(mutate: () => void): Promise<void> {
    const run = this.manifestWrites.then(async () => {
      mutate();
      this.manifest.durableSeq = this.durableSeq;
      this.manifest.durableEpoch = this.durableEpoch;
      await this.storage.storeManifest(this.manifest);
    });
    this.manifestWrites = run.catch(() => undefined);
    return run;
  }

  private prepareSpare(): void {
    const ordinal = this.manifest.nextOrdinal++;
    this.spare = createSegmentAt(this.storage, ordinal, this.options.owner, this.segmentBytes);
    this.spare.catch(() => undefined);
  }

  /**
   * Group commit, pipelined: batch k+1 is written (into the page cache) while
   * the fdatasync of batch k runs, so the disk never idles while we copy. At
   * most one sync is in flight; it starts after its batch's writes completed,
   * so it covers them (and everything earlier); batches resolve in order when
   * their sync returns, and durableSeq/durableEpoch move only then.
   */
  private async flushLoop(): Promise<void> {
    let syncing: Promise<void> | null = null;
    let syncingBatch: Pending[] = [];
    for (;;) {
      if (this.queue.length === 0) {
        if (!syncing) return;
        // nothing to write: wait for the sync in flight, or for records to write meanwhile
        const arrived = new Promise<void>((r) => (this.wake = r));
        await Promise.race([syncing.catch(() => undefined), arrived]);
        this.wake = null;
        if (this.queue.length === 0) {
          try {
            await syncing;
          } catch (err) {
            this.fail(err, syncingBatch);
            return;
          }
          syncing = null;
          syncingBatch = [];
          continue;
        }
      }
      const batch = this.queue.splice(0);
      let written: Written;
      try {
        written = await this.writeBatch(batch);
        if (syncing) await syncing;
      } catch (err) {
        if (syncing) await syncing.catch(() => undefined);
        this.fail(err, [...syncingBatch, ...batch]);
        return;
      }
      const w = written;
      syncingBatch = batch;
      syncing = w.file.sync().then(() => {
        this.stats.fsyncs++;
        this.stats.records += batch.length;
        this.durableSeq = w.seq;
        this.durableEpoch = w.epoch;
        batch.forEach((p, i) => p.resolve(w.entries[i]!));
      });
      // a sync may fail while the next batch is being written, before anything awaits
      // it: mark it handled now (the awaits above and below still see the rejection)
      syncing.catch(() => undefined);
    }
  }

  private fail(err: unknown, batch: Pending[]): void {
    this.failure = asReplError(err);
    this.options.logger.error({ err: this.failure }, 'journal failed; appends refused until reopened');
    for (const p of [...batch, ...this.queue.splice(0)]) p.reject(this.failure);
    this.queuedBytes = 0;
  }

  /** Writes one batch (rolling segments as needed); the caller syncs `file`. */
  private async writeBatch(batch: Pending[]): Promise<Written> {
    const entries: JournalEntry[] = [];
    let buffers: Buffer[] = [];
    let start = this.active.writeOffset;
    let seq = this.writtenSeq;
    let epoch = this.writtenEpoch;
    // every header of the batch goes into one buffer (one allocation, not one per record)
    const headers = Buffer.allocUnsafe(RECORD_HEADER_BYTES * batch.length);
    let h = 0;
    for (const p of batch) {
      const input = p.input;
      const data = input.data ?? NO_DATA;
      const size = RECORD_HEADER_BYTES + data.length;
      if (this.active.writeOffset + size > this.active.file.size) {
        await this.active.file.write(buffers, start);
        await this.roll();
        buffers = [];
        start = this.active.writeOffset;
      }
      const header: RecordHeader = {
        type: input.type,
        resync: input.resync,
        full: input.full,
        sealReason: input.sealReason,
        seq: input.seq,
        epoch: input.epoch,
        offset: input.offset,
        length: input.length,
        timeMs: input.timeMs,
        dataLength: data.length,
        salt: this.active.meta.salt,
        dataCrc: data.length === 0 ? 0 : (input.dataCrc ?? crc32c(data)),
      };
      const at = h * RECORD_HEADER_BYTES;
      encodeRecordHeaderInto(headers, at, header);
      buffers.push(headers.subarray(at, at + RECORD_HEADER_BYTES));
      h++;
      if (data.length > 0) buffers.push(data);
      const offset = this.active.writeOffset;
      entries.push({
        position: positionOf(this.active.meta.ordinal, offset),
        dataOffset: offset + RECORD_HEADER_BYTES,
        header,
      });
      this.active.writeOffset += size;
      seq = Math.max(seq, header.seq);
      if (header.type === 'seal') epoch = Math.max(epoch, header.epoch);
      this.queuedBytes -= data.length;
      this.stats.bytes += size;
    }
    await this.active.file.write(buffers, start);
    this.writtenSeq = seq;
    this.writtenEpoch = epoch;
    return { entries, file: this.active.file, seq, epoch };
  }

  /** Seals the active segment and switches to the spare (rule: sync old, then manifest). */
  private async roll(): Promise<void> {
    await this.active.file.sync();
    this.stats.fsyncs++;
    const spare = await this.spare!;
    const old = this.active;
    await this.commitManifest(() => {
      old.meta.endOffset = old.writeOffset;
      this.manifest.segments.push(spare.meta);
    });
    this.files.set(spare.meta.ordinal, spare.file);
    this.active = { file: spare.file, meta: spare.meta, writeOffset: SEGMENT_HEADER_BYTES };
    this.prepareSpare();
  }
}


async function createSegment(
  storage: JournalStorage,
  manifest: JournalManifest,
  owner: string,
  segmentBytes: number,
): Promise<{ file: SegmentFile; meta: ManifestSegment }> {
  const ordinal = manifest.nextOrdinal++;
  return createSegmentAt(storage, ordinal, owner, segmentBytes);
}

async function createSegmentAt(
  storage: JournalStorage,
  ordinal: number,
  owner: string,
  segmentBytes: number,
): Promise<{ file: SegmentFile; meta: ManifestSegment }> {
  const salt = crypto.randomBytes(4).readUInt32LE(0);
  const nonce = crypto.randomBytes(8).toString('hex');
  const name = `seg-${ordinal.toString(16).padStart(16, '0')}-${owner}-${nonce}.rjl`;
  const header = encodeSegmentHeader({ salt, ordinal, createdMs: Date.now(), segmentBytes, owner });
  const file = await storage.createSegment(name, segmentBytes, header);
  return { file, meta: { name, ordinal, salt, endOffset: null } };
}
