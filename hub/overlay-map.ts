/**
 * OverlayMap: which blocks of a recovery view the recovery side has changed,
 * as two disjoint roaring bitmaps of block numbers (no file I/O; the files
 * belong to overlay.ts):
 *
 *   data  - the block's current content is in the scratch file;
 *   zero  - the block reads as zeroes (writeZeroes/trim of whole blocks; the
 *           scratch file is not touched, so zeroing 1 TiB costs no I/O).
 *   neither - the block reads from the base (the read-only recovery view).
 *
 * Invariant: data ∩ zero = ∅ (each mark removes the block from the other set).
 * A block is `granularity` bytes (a power of two); the last block may be short.
 * Block numbers are < 2^32 (roaring32).
 *
 * The persisted form (encodeOverlayMap/decodeOverlayMap) is a pure codec:
 *   header (64 bytes, little endian)
 *     0 magic "RPOVLMAP"   8 version u32   12 granularity u32   16 size u64
 *     24 baseId bytes u32  28 data bytes u32  32 zero bytes u32  36..63 zero
 *   baseId (utf8), data bitmap, zero bitmap (portable roaring format)
 *   sha256 of everything before it (32 bytes)
 * The checksum is verified before roaring sees a byte (CRoaring's behaviour on
 * corrupt input is undefined).
 */
import assert from 'node:assert';
import { createHash } from 'node:crypto';
import { RoaringBitmap32 } from 'roaring';
import { ReplError } from '../common/errors';

export type BlockSource = 'base' | 'data' | 'zero';

/** A run of consecutive blocks [start, start + count) with the same source. */
export interface BlockRun {
  start: number;
  count: number;
  source: BlockSource;
}

/** A byte range the recovery side changed; zero = it now reads as zeroes. */
export interface ChangedRange {
  offset: number;
  length: number;
  zero: boolean;
}

export const OVERLAY_MAP_MAGIC = Buffer.from('RPOVLMAP', 'latin1');
export const OVERLAY_MAP_VERSION = 1;
const HEADER_BYTES = 64;
const DIGEST_BYTES = 32;
const MAX_BASE_ID_BYTES = 1024;
const PAGE = 65536;

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

/** Runs of set bits of `bits` within [start, end), ascending. */
function* bitRuns(bits: RoaringBitmap32, start: number, end: number): Generator<{ start: number; count: number }> {
  if (end <= start) return;
  let run: { start: number; count: number } | null = null;
  // rangeUint32Array(index, limit) pages by rank, so begin at the rank of start
  let index = start > 0 ? bits.rank(start - 1) : 0;
  for (;;) {
    const page = bits.rangeUint32Array(index, PAGE);
    if (page.length === 0) break;
    for (const b of page) {
      if (b >= end) {
        if (run) yield run;
        return;
      }
      if (run && run.start + run.count === b) run.count++;
      else {
        if (run) yield run;
        run = { start: b, count: 1 };
      }
    }
    index += page.length;
  }
  if (run) yield run;
}

export class OverlayMap {
  readonly blockCount: number;
  /** Bumped on every change; overlay.ts persists only when it moved. */
  private version = 0;

  constructor(
    readonly granularity: number,
    readonly size: number,
    private readonly data: RoaringBitmap32 = new RoaringBitmap32(),
    private readonly zero: RoaringBitmap32 = new RoaringBitmap32(),
  ) {
    assert(isPowerOfTwo(granularity), `granularity ${granularity} must be a power of two`);
    assert(Number.isSafeInteger(size) && size > 0, `size ${size}`);
    this.blockCount = Math.ceil(size / granularity);
    assert(this.blockCount <= 0xffffffff, 'too many blocks for a 32-bit bitmap');
  }

  get changeVersion(): number {
    return this.version;
  }

  /** Blocks touched by the byte range (rounded outward); empty for length 0. */
  blocksOf(offset: number, length: number): { start: number; end: number } {
    if (length <= 0) return { start: 0, end: 0 };
    return {
      start: Math.floor(offset / this.granularity),
      end: Math.floor((offset + length - 1) / this.granularity) + 1,
    };
  }

  /** Byte range of blocks [start, end), clipped to the device. */
  bytesOf(start: number, end: number): { offset: number; length: number } {
    const offset = start * this.granularity;
    return { offset, length: Math.min(end * this.granularity, this.size) - offset };
  }

  private check(start: number, end: number): void {
    assert(
      Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= this.blockCount,
      `block range [${start}, ${end}) outside [0, ${this.blockCount})`,
    );
  }

  /** Blocks [start, end) now live in the scratch file. */
  markData(start: number, end: number): void {
    this.check(start, end);
    if (end === start) return;
    this.data.addRange(start, end);
    this.zero.removeRange(start, end);
    this.version++;
  }

  /** Blocks [start, end) now read as zeroes. */
  markZero(start: number, end: number): void {
    this.check(start, end);
    if (end === start) return;
    this.zero.addRange(start, end);
    this.data.removeRange(start, end);
    this.version++;
  }

  sourceOf(block: number): BlockSource {
    if (this.data.has(block)) return 'data';
    if (this.zero.has(block)) return 'zero';
    return 'base';
  }

  /** True when no block of [start, end) was changed (reads go straight to the base). */
  isUntouched(start: number, end: number): boolean {
    this.check(start, end);
    if (end === start) return true;
    return this.data.rangeCardinality(start, end) === 0 && this.zero.rangeCardinality(start, end) === 0;
  }

  /** Changed runs within [start, end) in block order (data and zero runs, never base). */
  private changedRuns(start: number, end: number): BlockRun[] {
    const runs: BlockRun[] = [];
    for (const r of bitRuns(this.data, start, end)) runs.push({ ...r, source: 'data' });
    for (const r of bitRuns(this.zero, start, end)) runs.push({ ...r, source: 'zero' });
    return runs.sort((a, b) => a.start - b.start);
  }

  /** Covers [start, end) completely with runs of one source each, in order. */
  runs(start: number, end: number): BlockRun[] {
    this.check(start, end);
    const out: BlockRun[] = [];
    let pos = start;
    for (const r of this.changedRuns(start, end)) {
      if (r.start > pos) out.push({ start: pos, count: r.start - pos, source: 'base' });
      const last = out[out.length - 1];
      if (last && last.source === r.source && last.start + last.count === r.start) last.count += r.count;
      else out.push(r);
      pos = r.start + r.count;
    }
    if (pos < end) out.push({ start: pos, count: end - pos, source: 'base' });
    return out;
  }

  /**
   * The byte ranges the recovery side changed, coalesced (adjacent ranges of
   * the same kind merge), in offset order. With maxLength, longer ranges are
   * split into pieces of at most maxLength bytes (failback ships in pieces).
   */
  changedRanges(maxLength = Number.MAX_SAFE_INTEGER): ChangedRange[] {
    assert(Number.isSafeInteger(maxLength) && maxLength > 0, `maxLength ${maxLength}`);
    const out: ChangedRange[] = [];
    for (const r of this.runs(0, this.blockCount)) {
      if (r.source === 'base') continue;
      const { offset, length } = this.bytesOf(r.start, r.start + r.count);
      for (let done = 0; done < length; done += maxLength) {
        out.push({ offset: offset + done, length: Math.min(maxLength, length - done), zero: r.source === 'zero' });
      }
    }
    return out;
  }

  /** Bytes the recovery side changed (the short last block counts its real length). */
  changedBytes(): number {
    const n = this.data.size + this.zero.size;
    if (n === 0) return 0;
    const last = this.blockCount - 1;
    const lastShort = this.granularity - (this.size - last * this.granularity);
    return n * this.granularity - (this.data.has(last) || this.zero.has(last) ? lastShort : 0);
  }

  /** Serialised form (see the file header); baseId names the base the overlay belongs to. */
  encode(baseId: string): Buffer {
    return encodeOverlayMap(this, baseId, this.data, this.zero);
  }

  static decode(buf: Buffer): { map: OverlayMap; baseId: string } {
    return decodeOverlayMap(buf);
  }
}

function encodeOverlayMap(map: OverlayMap, baseId: string, data: RoaringBitmap32, zero: RoaringBitmap32): Buffer {
  const id = Buffer.from(baseId, 'utf8');
  assert(id.length <= MAX_BASE_ID_BYTES, 'baseId too long');
  data.runOptimize();
  zero.runOptimize();
  const d = data.serialize('portable');
  const z = zero.serialize('portable');
  const header = Buffer.alloc(HEADER_BYTES);
  OVERLAY_MAP_MAGIC.copy(header, 0);
  header.writeUInt32LE(OVERLAY_MAP_VERSION, 8);
  header.writeUInt32LE(map.granularity, 12);
  header.writeBigUInt64LE(BigInt(map.size), 16);
  header.writeUInt32LE(id.length, 24);
  header.writeUInt32LE(d.length, 28);
  header.writeUInt32LE(z.length, 32);
  const body = Buffer.concat([header, id, d, z]);
  return Buffer.concat([body, createHash('sha256').update(body).digest()]);
}

function corrupt(message: string, cause?: unknown): ReplError {
  return new ReplError('E_BITMAP_CORRUPT', `overlay map: ${message}`, { cause });
}

function decodeBitmap(buf: Buffer, what: string): RoaringBitmap32 {
  try {
    return RoaringBitmap32.deserialize(buf, 'portable');
  } catch (err) {
    throw corrupt(`${what} bitmap does not decode`, err);
  }
}

function decodeOverlayMap(buf: Buffer): { map: OverlayMap; baseId: string } {
  if (buf.length < HEADER_BYTES + DIGEST_BYTES) throw corrupt(`file of ${buf.length} bytes is too short`);
  if (!buf.subarray(0, 8).equals(OVERLAY_MAP_MAGIC)) throw corrupt('bad magic');
  const version = buf.readUInt32LE(8);
  if (version !== OVERLAY_MAP_VERSION) throw corrupt(`unsupported version ${version}`);
  const granularity = buf.readUInt32LE(12);
  const size = Number(buf.readBigUInt64LE(16));
  const idLen = buf.readUInt32LE(24);
  const dLen = buf.readUInt32LE(28);
  const zLen = buf.readUInt32LE(32);
  if (HEADER_BYTES + idLen + dLen + zLen + DIGEST_BYTES !== buf.length || idLen > MAX_BASE_ID_BYTES) {
    throw corrupt('section lengths do not match the file length');
  }
  const bodyEnd = buf.length - DIGEST_BYTES;
  if (!createHash('sha256').update(buf.subarray(0, bodyEnd)).digest().equals(buf.subarray(bodyEnd))) {
    throw corrupt('checksum mismatch');
  }
  if (!isPowerOfTwo(granularity) || !Number.isSafeInteger(size) || size <= 0 || size / granularity > 0xffffffff) {
    throw corrupt(`bad geometry (granularity ${granularity}, size ${size})`);
  }
  let pos = HEADER_BYTES;
  const baseId = buf.subarray(pos, (pos += idLen)).toString('utf8');
  const data = decodeBitmap(buf.subarray(pos, (pos += dLen)), 'data');
  const zero = decodeBitmap(buf.subarray(pos, (pos += zLen)), 'zero');
  const map = new OverlayMap(granularity, size, data, zero);
  for (const [name, bits] of [['data', data], ['zero', zero]] as const) {
    if (bits.size > 0 && bits.maximum() >= map.blockCount) {
      throw corrupt(`${name} bitmap names block ${bits.maximum()} beyond ${map.blockCount}`);
    }
  }
  if (data.andCardinality(zero) !== 0) throw corrupt('a block is marked both data and zero');
  return { map, baseId };
}
