/**
 * DirtyBitmap: the in-memory set of dirty regions of one volume, as a roaring
 * bitmap of region numbers (QEMU's BdrvDirtyBitmap, without any file I/O; the
 * files belong to bitmap-store.ts and activity-log.ts).
 *
 * A region is `regionSize` bytes (a power of two, asserted); region n covers
 * bytes [n * regionSize, (n + 1) * regionSize) clipped to the device size, so
 * the last region may be short. Region numbers are < 2^32 (roaring32), which
 * bounds a volume at 2^32 regions (256 TiB at 64 KiB).
 *
 * Range arguments are region numbers, half-open [start, end). Byte ranges are
 * converted with regionsOf(), which rounds outward: any byte touched marks its
 * whole region.
 */
import assert from 'node:assert';
import { RoaringBitmap32 } from 'roaring';
import { ReplError } from '../common/errors';

/** A run of consecutive set regions: [start, start + count). */
export interface RegionRun {
  start: number;
  count: number;
}

export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && (n & (n - 1)) === 0 && n <= 2 ** 30;
}

export class DirtyBitmap {
  /** Number of regions covering the device (the last may be short). */
  readonly regionCount: number;
  private readonly bits: RoaringBitmap32;

  constructor(
    readonly regionSize: number,
    readonly deviceSize: number,
    bits?: RoaringBitmap32,
  ) {
    assert(isPowerOfTwo(regionSize), `region size ${regionSize} must be a power of two`);
    assert(Number.isSafeInteger(deviceSize) && deviceSize > 0, `device size ${deviceSize}`);
    this.regionCount = Math.ceil(deviceSize / regionSize);
    assert(this.regionCount <= 0xffffffff, 'too many regions for a 32-bit bitmap');
    this.bits = bits ?? new RoaringBitmap32();
  }

  /** Regions touched by the byte range [offset, offset + length); empty for length 0. */
  regionsOf(offset: number, length: number): { start: number; end: number } {
    if (length <= 0) return { start: 0, end: 0 };
    const start = Math.floor(offset / this.regionSize);
    const end = Math.floor((offset + length - 1) / this.regionSize) + 1;
    return { start, end };
  }

  /** Byte range of regions [start, end), clipped to the device. */
  bytesOf(start: number, end: number): { offset: number; length: number } {
    const offset = start * this.regionSize;
    return { offset, length: Math.min(end * this.regionSize, this.deviceSize) - offset };
  }

  private checkRegions(start: number, end: number): void {
    assert(
      Number.isSafeInteger(start) && Number.isSafeInteger(end) && start >= 0 && start <= end && end <= this.regionCount,
      `region range [${start}, ${end}) outside [0, ${this.regionCount})`,
    );
  }

  setRange(start: number, end: number): void {
    this.checkRegions(start, end);
    if (end > start) this.bits.addRange(start, end);
  }

  clearRange(start: number, end: number): void {
    this.checkRegions(start, end);
    if (end > start) this.bits.removeRange(start, end);
  }

  set(region: number): void {
    this.setRange(region, region + 1);
  }

  clear(region: number): void {
    this.clearRange(region, region + 1);
  }

  setAll(): void {
    this.setRange(0, this.regionCount);
  }

  isSet(region: number): boolean {
    return this.bits.has(region);
  }

  /** Number of set regions, optionally within [start, end). */
  countSet(start = 0, end = this.regionCount): number {
    this.checkRegions(start, end);
    return end > start ? this.bits.rangeCardinality(start, end) : 0;
  }

  /** Bytes named by the set regions (the short last region counts its real length). */
  dirtyBytes(): number {
    const n = this.bits.size;
    if (n === 0) return 0;
    const last = this.regionCount - 1;
    const lastLength = this.deviceSize - last * this.regionSize;
    return this.bits.has(last) ? (n - 1) * this.regionSize + lastLength : n * this.regionSize;
  }

  /** Runs of set regions in ascending order, optionally within [start, end). */
  *extents(start = 0, end = this.regionCount): Generator<RegionRun> {
    this.checkRegions(start, end);
    const PAGE = 65536;
    let run: RegionRun | null = null;
    // rangeUint32Array(offset, limit) pages by index, so start at rank(start - 1)
    let index = start > 0 ? this.bits.rank(start - 1) : 0;
    for (;;) {
      const page = this.bits.rangeUint32Array(index, PAGE);
      if (page.length === 0) break;
      for (const r of page) {
        if (r >= end) {
          if (run) yield run;
          return;
        }
        if (run && run.start + run.count === r) run.count++;
        else {
          if (run) yield run;
          run = { start: r, count: 1 };
        }
      }
      index += page.length;
    }
    if (run) yield run;
  }

  /** Adds every region set in `other` (same geometry). */
  union(other: DirtyBitmap): void {
    assert(other.regionSize === this.regionSize && other.deviceSize === this.deviceSize, 'bitmap geometry differs');
    this.bits.orInPlace(other.bits);
  }

  clone(): DirtyBitmap {
    return new DirtyBitmap(this.regionSize, this.deviceSize, this.bits.clone());
  }

  isEqual(other: DirtyBitmap): boolean {
    return this.regionSize === other.regionSize && this.deviceSize === other.deviceSize && this.bits.isEqual(other.bits);
  }

  /** Portable roaring serialisation of the region set (no header; see bitmap-store.ts). */
  serialize(): Buffer {
    this.bits.runOptimize();
    const bytes = this.bits.serialize('portable');
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /**
   * Inverse of serialize(). The caller must have verified a checksum first:
   * CRoaring's behaviour on corrupt input is undefined. Regions outside the
   * device are rejected.
   */
  static deserialize(regionSize: number, deviceSize: number, data: Buffer): DirtyBitmap {
    let bits: RoaringBitmap32;
    try {
      bits = RoaringBitmap32.deserialize(data, 'portable');
    } catch (err) {
      throw new ReplError('E_BITMAP_CORRUPT', `dirty bitmap does not decode: ${(err as Error).message}`, { cause: err });
    }
    const bitmap = new DirtyBitmap(regionSize, deviceSize, bits);
    if (bits.size > 0 && bits.maximum() >= bitmap.regionCount) {
      throw new ReplError('E_BITMAP_CORRUPT', `dirty bitmap names region ${bits.maximum()} beyond ${bitmap.regionCount}`);
    }
    return bitmap;
  }
}
