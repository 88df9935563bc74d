/**
 * MemoryDevice: a sparse in-memory BlockDevice (nbdkit's memory plugin) for
 * tests and scratch use. Storage is a map of 64 KiB chunks; unwritten chunks
 * read as zeroes and are reported as holes by extents().
 */
import { BlockDevice, DeviceInfo, Extent, WriteOptions, checkRange } from './device';
import { ReplError } from '../errors';

const CHUNK = 64 * 1024;

export interface MemoryDeviceOptions {
  blockSize?: number;
  readOnly?: boolean;
}

export class MemoryDevice implements BlockDevice {
  readonly info: DeviceInfo;
  /** chunk index -> CHUNK bytes; absent = zeroes. */
  private readonly chunks = new Map<number, Buffer>();
  private closed = false;
  /** Counts calls, for tests that check what a filter forwarded. */
  readonly stats = { reads: 0, writes: 0, zeroes: 0, trims: 0, flushes: 0 };

  constructor(size: number, options: MemoryDeviceOptions = {}) {
    const blockSize = options.blockSize ?? 512;
    if (size <= 0 || size % blockSize !== 0) {
      throw ReplError.invalid(`memory device size ${size} must be a positive multiple of ${blockSize}`);
    }
    const readOnly = options.readOnly ?? false;
    this.info = { size, blockSize, readOnly, canTrim: !readOnly, canWriteZeroes: !readOnly, trimReadsZeroes: true };
  }

  private check(offset: number, length: number, mutating: boolean): void {
    if (this.closed) throw ReplError.closed('memory device');
    if (mutating && this.info.readOnly) throw ReplError.readOnly('memory device');
    checkRange(this.info, offset, length);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false);
    this.stats.reads++;
    const out = Buffer.alloc(length);
    for (let pos = offset; pos < offset + length; ) {
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, offset + length - pos);
      const chunk = this.chunks.get(idx);
      if (chunk) chunk.copy(out, pos - offset, within, within + n);
      pos += n;
    }
    return out;
  }

  private put(offset: number, data: Buffer | null, length: number): void {
    for (let pos = offset; pos < offset + length; ) {
      const idx = Math.floor(pos / CHUNK);
      const within = pos - idx * CHUNK;
      const n = Math.min(CHUNK - within, offset + length - pos);
      let chunk = this.chunks.get(idx);
      if (data) {
        if (!chunk) {
          chunk = Buffer.alloc(CHUNK);
          this.chunks.set(idx, chunk);
        }
        data.copy(chunk, within, pos - offset, pos - offset + n);
      } else if (chunk) {
        if (n === CHUNK) this.chunks.delete(idx);
        else chunk.fill(0, within, within + n);
      }
      pos += n;
    }
  }

  async write(offset: number, data: Buffer, _options?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true);
    this.stats.writes++;
    this.put(offset, data, data.length);
  }

  async writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    this.stats.zeroes++;
    if (!options?.noHole) return this.put(offset, null, length); // becomes a hole
    // NO_HOLE keeps the range allocated: real zero bytes, one chunk at a time
    const zero = Buffer.alloc(Math.min(CHUNK, length));
    for (let pos = offset; pos < offset + length; pos += zero.length) this.put(pos, zero, Math.min(zero.length, offset + length - pos));
  }

  async trim(offset: number, length: number, _options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    this.stats.trims++;
    this.put(offset, null, length);
  }

  async flush(): Promise<void> {
    if (this.closed) throw ReplError.closed('memory device');
    this.stats.flushes++;
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length, false);
    const out: Extent[] = [];
    for (let pos = offset; pos < offset + length; ) {
      const idx = Math.floor(pos / CHUNK);
      const n = Math.min((idx + 1) * CHUNK - pos, offset + length - pos);
      const hole = !this.chunks.has(idx);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length += n;
      else out.push({ offset: pos, length: n, zero: hole, hole });
      pos += n;
    }
    return out;
  }
}
