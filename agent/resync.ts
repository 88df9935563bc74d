/**
 * Resync: ship the regions RegionState.resend names, read back from the
 * volume. planResync is the pure decision (which reads, in LBA order, adjacent
 * regions merged into reads of at most maxReadBytes); runResync carries it out.
 *
 * Order per read (contract rule 9): take rate tokens -> wait for queue room ->
 * lock the regions against live writes (and wait for writes in flight there)
 * -> read from the device below the filter -> queue records (all-zero regions
 * become 'zeroes' records, never data) -> mark the regions queued -> unlock.
 * Because the lock covers read and queueing, the stream order for a region
 * matches the volume: a live write after the unlock lands after the resync
 * record in the stream.
 *
 * Reads go in groups (groupReads: up to readsInFlight consecutive reads
 * spanning at most readsInFlight * maxReadBytes): one lock over the group's
 * span, all its reads issued together, records queued in LBA order as each
 * read arrives, then unlock. The lock still covers read and queueing of every
 * region, so the argument above holds unchanged; device reads just overlap
 * the CPU work (CRC, encoding) of the reads before them.
 *
 * Bulk reads (ctx.bulk, the agent's DirectReader): reads bypass the page
 * cache into the context's own reusable buffers, one per read in flight
 * (common/block/direct-reader.ts says why). A buffer is reused by the next
 * group only, after every record of this group was queued, so `send` must
 * copy piece.data before it returns (HubLink encodes into its slabs at once).
 *
 * runResync plans in windows of at most `windowReads` reads from a cursor, so
 * memory stays bounded on a FULL sync of a large volume, and re-plans from the
 * start when it reaches the end: regions dropped back into resend behind the
 * cursor (overflow during the group) are picked up. It returns when resend is
 * empty, or throws when the session ends (the group stays open on the hub).
 */
import { BlockDevice } from '../common/block/device';
import { ReplError } from '../common/errors';
import { DirtyBitmap } from './dirty-bitmap';
import { RegionState } from './region-state';

export interface ResyncRead {
  /** First region and end region (exclusive). */
  start: number;
  end: number;
  offset: number;
  length: number;
}

export interface ResyncLimits {
  maxReadBytes: number;
  /** First region to consider (the cursor). */
  fromRegion?: number;
  /** At most this many reads (a planning window). */
  maxReads?: number;
}

export const DEFAULT_MAX_READ_BYTES = 1024 * 1024;
export const DEFAULT_READS_IN_FLIGHT = 4;

/** Pure: the reads that ship every set region of `bitmap` from fromRegion on, in LBA order. */
export function planResync(bitmap: DirtyBitmap, limits: ResyncLimits): ResyncRead[] {
  const perRead = Math.max(1, Math.floor(limits.maxReadBytes / bitmap.regionSize));
  const maxReads = limits.maxReads ?? Number.POSITIVE_INFINITY;
  const out: ResyncRead[] = [];
  for (const run of bitmap.extents(limits.fromRegion ?? 0, bitmap.regionCount)) {
    for (let start = run.start; start < run.start + run.count; start += perRead) {
      if (out.length >= maxReads) return out;
      const end = Math.min(start + perRead, run.start + run.count);
      out.push({ start, end, ...bitmap.bytesOf(start, end) });
    }
  }
  return out;
}

export interface ResyncPiece {
  offset: number;
  length: number;
  kind: 'data' | 'zeroes';
  /** Present for kind 'data'. */
  data: Buffer | null;
}

/** Pure: splits a read of whole regions into runs of all-zero and data regions. */
export function splitZeroRuns(data: Buffer, offset: number, regionSize: number): ResyncPiece[] {
  const out: ResyncPiece[] = [];
  for (let pos = 0; pos < data.length; ) {
    const n = Math.min(regionSize - ((offset + pos) % regionSize), data.length - pos);
    const zero = isZero(data, pos, pos + n);
    const last = out[out.length - 1];
    if (last && (last.kind === 'zeroes') === zero) last.length += n;
    else out.push({ offset: offset + pos, length: n, kind: zero ? 'zeroes' : 'data', data: null });
    pos += n;
  }
  for (const p of out) if (p.kind === 'data') p.data = data.subarray(p.offset - offset, p.offset - offset + p.length);
  return out;
}

const ZERO = Buffer.alloc(64 * 1024);

export function isZero(buf: Buffer, start = 0, end = buf.length): boolean {
  for (let pos = start; pos < end; pos += ZERO.length) {
    const n = Math.min(ZERO.length, end - pos);
    if (!buf.subarray(pos, pos + n).equals(ZERO.subarray(0, n))) return false;
  }
  return true;
}

export interface Clock {
  now(): number;
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

export const realClock: Clock = {
  now: () => Date.now(),
  sleep: (ms, signal) =>
    new Promise<void>((resolve, reject) => {
      if (signal?.aborted) return reject(ReplError.closed('resync'));
      const t = setTimeout(done, ms);
      function done(): void {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }
      function onAbort(): void {
        clearTimeout(t);
        reject(ReplError.closed('resync'));
      }
      signal?.addEventListener('abort', onAbort, { once: true });
    }),
};

/**
 * Token bucket in bytes. rate 0 = unlimited. A take larger than the bucket
 * drives it negative and the next take waits it off, so large reads are paced
 * without a special case.
 */
export class TokenBucket {
  private tokens: number;
  private last: number;

  constructor(
    private readonly rate: number,
    private readonly burst: number,
    private readonly clock: Clock = realClock,
  ) {
    this.tokens = burst;
    this.last = clock.now();
  }

  /** Milliseconds to wait before `bytes` may go (0 = now); consumes them. */
  reserve(bytes: number): number {
    if (this.rate <= 0) return 0;
    const now = this.clock.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) * this.rate) / 1000);
    this.last = now;
    const wait = this.tokens >= 0 ? 0 : (-this.tokens * 1000) / this.rate;
    this.tokens -= bytes;
    return Math.ceil(wait);
  }

  async take(bytes: number, signal?: AbortSignal): Promise<void> {
    const wait = this.reserve(bytes);
    if (wait > 0) await this.clock.sleep(wait, signal);
  }
}

/** Page-cache-bypassing reads into caller buffers (common/block/direct-reader.ts). */
export interface BulkReader {
  readInto(offset: number, target: Buffer): Promise<void>;
}

export interface ResyncContext {
  regions: RegionState;
  /** The device below the replication filter. */
  device: BlockDevice;
  /**
   * Optional: read the volume with `reader` into `buffers` (at least
   * readsInFlight of them, each >= maxReadBytes) instead of device.read().
   */
  bulk?: { reader: BulkReader; buffers: Buffer[] };
  /** Queues one record (copying its data before it returns); returns its epoch, or null when the session is gone. */
  send(piece: ResyncPiece): number | null;
  /** Resolves when the send queue has room for `bytes` more (rejects when the session ends). */
  waitForRoom(bytes: number, signal: AbortSignal): Promise<void>;
  bucket: TokenBucket;
  signal: AbortSignal;
  maxReadBytes?: number;
  windowReads?: number;
  /** Reads of one group in flight at once (default DEFAULT_READS_IN_FLIGHT). */
  readsInFlight?: number;
  /** Called after each read was queued with the bytes it covered. */
  onProgress(bytes: number): void;
}

export async function runResync(ctx: ResyncContext): Promise<void> {
  const { regions, signal } = ctx;
  const maxReadBytes = ctx.maxReadBytes ?? DEFAULT_MAX_READ_BYTES;
  const depth = Math.max(1, ctx.readsInFlight ?? DEFAULT_READS_IN_FLIGHT);
  if (ctx.bulk && (ctx.bulk.buffers.length < depth || ctx.bulk.buffers.some((b) => b.length < maxReadBytes))) {
    throw ReplError.internal(`resync: bulk reads need ${depth} buffers of ${maxReadBytes} bytes`);
  }
  const maxSpan = depth * Math.max(1, Math.floor(maxReadBytes / regions.bitmap.regionSize));
  let cursor = 0;
  for (;;) {
    if (signal.aborted) throw ReplError.closed('resync aborted');
    const reads = planResync(regions.resend, { maxReadBytes, fromRegion: cursor, maxReads: ctx.windowReads ?? 256 });
    if (reads.length === 0) {
      if (cursor === 0) return;
      cursor = 0;
      continue;
    }
    for (const group of groupReads(reads, depth, maxSpan)) {
      let bytes = 0;
      for (const read of group) {
        await ctx.bucket.take(read.length, signal);
        bytes += read.length;
      }
      await ctx.waitForRoom(bytes, signal);
      await shipGroup(ctx, group);
      cursor = group[group.length - 1]!.end;
    }
  }
}

/** Pure: consecutive reads in groups of at most `depth` spanning at most `maxSpan` regions. */
export function groupReads(reads: ResyncRead[], depth: number, maxSpan: number): ResyncRead[][] {
  const out: ResyncRead[][] = [];
  let cur: ResyncRead[] = [];
  for (const r of reads) {
    if (cur.length > 0 && (cur.length >= depth || r.end - cur[0]!.start > maxSpan)) {
      out.push(cur);
      cur = [];
    }
    cur.push(r);
  }
  if (cur.length > 0) out.push(cur);
  return out;
}

/**
 * One lock over the whole group's span, all its reads in flight at once,
 * records queued strictly in LBA order as the reads arrive: the device reads
 * overlap the CRC/encoding of earlier reads, and the lock still covers read
 * and queueing of every region in the group (regions between the reads are
 * only held a little longer).
 */
async function shipGroup(ctx: ResyncContext, group: ResyncRead[]): Promise<void> {
  const { regions } = ctx;
  const first = group[0]!;
  await regions.lockForResync(first.start, group[group.length - 1]!.end);
  let pending: (Promise<Buffer> | null)[] = [];
  try {
    if (ctx.signal.aborted) throw ReplError.closed('resync aborted');
    // only regions still needing a resend (another path may have shipped some meanwhile)
    pending = group.map((read, i) => {
      if (regions.resend.countSet(read.start, read.end) === 0) return null;
      let p: Promise<Buffer>;
      if (ctx.bulk) {
        const target = ctx.bulk.buffers[i]!.subarray(0, read.length);
        p = ctx.bulk.reader.readInto(read.offset, target).then(() => target);
      } else p = ctx.device.read(read.offset, read.length);
      p.catch(() => undefined); // a later read's failure surfaces when it is awaited (or is moot)
      return p;
    });
    for (let i = 0; i < group.length; i++) {
      const read = group[i]!;
      const p = pending[i];
      if (p) queueRead(ctx, read, await p);
      ctx.onProgress(read.length);
    }
  } finally {
    // never unlock while a read of the locked range is still running
    await Promise.allSettled(pending.filter((p): p is Promise<Buffer> => p !== null));
    regions.unlock();
  }
}

function queueRead(ctx: ResyncContext, read: ResyncRead, data: Buffer): void {
  if (ctx.signal.aborted) throw ReplError.closed('resync aborted');
  let epoch: number | null = null;
  for (const piece of splitZeroRuns(data, read.offset, ctx.regions.bitmap.regionSize)) {
    epoch = ctx.send(piece);
    if (epoch === null) throw ReplError.closed('session ended during resync');
  }
  if (epoch !== null) ctx.regions.resyncQueued(read.start, read.end, epoch);
}
