/**
 * BitmapStore: the persisted dirty bitmap of one volume (one file, replaced
 * atomically). The in-memory bitmap is DirtyBitmap; this module only owns the
 * file and its fsync discipline.
 *
 * File `dirty.bitmap` (all integers little-endian):
 *   off len field
 *     0   8 magic "RPBITMAP"
 *     8   4 version = 1
 *    12   4 regionSize (bytes, power of two)
 *    16   8 deviceSize (bytes)
 *    24   8 generation (replication generation when written; see identity.ts)
 *    32   8 counter (incremented by every save; newest file wins)
 *    40   4 payloadLength
 *    44   4 payloadCrc32c (CRC32C of the payload)
 *    48  12 reserved, zero
 *    60   4 headerCrc32c (CRC32C of bytes 0..59)
 *    64   n payload: the region set in roaring "portable" serialisation
 *
 * Save = write `dirty.bitmap.tmp`, fsync it, rename over `dirty.bitmap`, fsync
 * the directory. A crash leaves either the old or the new file, never a mix.
 * The snapshot is serialised synchronously when save() is called, so a caller
 * may note "every mark before this point is covered" (activity-log.ts does).
 * Saves are serialised; each writes its own snapshot in call order.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { crc32c } from '../common/nvme-tcp/crc32c';
import { ReplError } from '../common/errors';
import { Logger } from '../common/log';
import { DirtyBitmap } from './dirty-bitmap';

const MAGIC = Buffer.from('RPBITMAP', 'ascii');
const VERSION = 1;
export const BITMAP_HEADER_BYTES = 64;
export const BITMAP_FILE = 'dirty.bitmap';

export interface BitmapFileHeader {
  regionSize: number;
  deviceSize: number;
  generation: number;
  counter: number;
  payloadLength: number;
  payloadCrc: number;
}

export function encodeBitmapFile(bitmap: DirtyBitmap, generation: number, counter: number): Buffer {
  const payload = bitmap.serialize();
  const out = Buffer.alloc(BITMAP_HEADER_BYTES + payload.length);
  MAGIC.copy(out, 0);
  out.writeUInt32LE(VERSION, 8);
  out.writeUInt32LE(bitmap.regionSize, 12);
  out.writeBigUInt64LE(BigInt(bitmap.deviceSize), 16);
  out.writeBigUInt64LE(BigInt(generation), 24);
  out.writeBigUInt64LE(BigInt(counter), 32);
  out.writeUInt32LE(payload.length, 40);
  out.writeUInt32LE(crc32c(payload), 44);
  out.writeUInt32LE(crc32c(out.subarray(0, 60)), 60);
  payload.copy(out, BITMAP_HEADER_BYTES);
  return out;
}

/** Parses and verifies a whole bitmap file; throws E_BITMAP_CORRUPT on any mismatch. */
export function decodeBitmapFile(buf: Buffer): { header: BitmapFileHeader; payload: Buffer } {
  const corrupt = (why: string): ReplError => new ReplError('E_BITMAP_CORRUPT', `dirty bitmap file: ${why}`);
  if (buf.length < BITMAP_HEADER_BYTES) throw corrupt(`short file (${buf.length} bytes)`);
  if (!buf.subarray(0, 8).equals(MAGIC)) throw corrupt('bad magic');
  if (crc32c(buf.subarray(0, 60)) !== buf.readUInt32LE(60)) throw corrupt('header checksum mismatch');
  const version = buf.readUInt32LE(8);
  if (version !== VERSION) throw corrupt(`unsupported version ${version}`);
  const header: BitmapFileHeader = {
    regionSize: buf.readUInt32LE(12),
    deviceSize: Number(buf.readBigUInt64LE(16)),
    generation: Number(buf.readBigUInt64LE(24)),
    counter: Number(buf.readBigUInt64LE(32)),
    payloadLength: buf.readUInt32LE(40),
    payloadCrc: buf.readUInt32LE(44),
  };
  if (buf.length !== BITMAP_HEADER_BYTES + header.payloadLength) throw corrupt('length mismatch');
  const payload = buf.subarray(BITMAP_HEADER_BYTES);
  if (crc32c(payload) !== header.payloadCrc) throw corrupt('payload checksum mismatch');
  return { header, payload };
}

export type BitmapLoadStatus = 'missing' | 'ok' | 'corrupt' | 'geometry-changed';

export interface BitmapLoadResult {
  status: BitmapLoadStatus;
  /** The persisted set; for 'corrupt' and 'geometry-changed' every region is set (safe). */
  bitmap: DirtyBitmap;
  generation: number;
  counter: number;
}

export function fsyncDir(dir: string): void {
  const fd = fs.openSync(dir, 'r');
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

export class BitmapStore {
  readonly file: string;
  /** Counter of the newest file written or loaded. */
  private counter = 0;
  /** Tail of the save chain; saves run one at a time. */
  private chain: Promise<unknown> = Promise.resolve();

  constructor(
    readonly dir: string,
    private readonly logger: Logger,
  ) {
    this.file = path.join(dir, BITMAP_FILE);
  }

  /**
   * Reads the persisted bitmap. A damaged file or one written for another
   * geometry yields an all-set bitmap: resending everything is the only answer
   * that cannot lose a write.
   */
  load(regionSize: number, deviceSize: number): BitmapLoadResult {
    let buf: Buffer;
    try {
      buf = fs.readFileSync(this.file);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
        return { status: 'missing', bitmap: new DirtyBitmap(regionSize, deviceSize), generation: 0, counter: 0 };
      }
      throw ReplError.io(`cannot read ${this.file}`, err);
    }
    const all = (): DirtyBitmap => {
      const b = new DirtyBitmap(regionSize, deviceSize);
      b.setAll();
      return b;
    };
    try {
      const { header, payload } = decodeBitmapFile(buf);
      this.counter = header.counter;
      if (header.regionSize !== regionSize || header.deviceSize !== deviceSize) {
        this.logger.warn({ file: this.file, header, regionSize, deviceSize }, 'bitmap geometry changed: marking every region dirty');
        return { status: 'geometry-changed', bitmap: all(), generation: header.generation, counter: header.counter };
      }
      const bitmap = DirtyBitmap.deserialize(regionSize, deviceSize, payload);
      return { status: 'ok', bitmap, generation: header.generation, counter: header.counter };
    } catch (err) {
      if (!(err instanceof ReplError) || err.code !== 'E_BITMAP_CORRUPT') throw err;
      this.logger.error({ file: this.file, err: err.message }, 'dirty bitmap corrupt: marking every region dirty');
      return { status: 'corrupt', bitmap: all(), generation: 0, counter: 0 };
    }
  }

  /**
   * Persists a snapshot of `bitmap` taken now (synchronously). Resolves once
   * the new file is durable and visible under its final name.
   */
  save(bitmap: DirtyBitmap, generation: number): Promise<number> {
    const counter = ++this.counter;
    const bytes = encodeBitmapFile(bitmap, generation, counter);
    const run = this.chain.then(() => this.writeAtomically(bytes)).then(() => counter);
    this.chain = run.catch(() => undefined);
    return run;
  }

  private async writeAtomically(bytes: Buffer): Promise<void> {
    const tmp = `${this.file}.tmp`;
    try {
      const fh = await fs.promises.open(tmp, 'w', 0o600);
      try {
        await fh.writeFile(bytes);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await fs.promises.rename(tmp, this.file);
      fsyncDir(this.dir);
    } catch (err) {
      throw ReplError.io(`cannot persist dirty bitmap ${this.file}: ${(err as Error).message}`, err);
    }
  }
}
