/**
 * Overlay: a writable copy-on-write layer over a read-only base BlockDevice
 * (the hub's RecoveryVolume at a recovery point), Zerto's "scratch volume".
 * The recovery VM's writes land in a sparse scratch file in `dir`; an
 * OverlayMap (overlay-map.ts) records per block (`granularity` bytes, default
 * 4 KiB) whether it reads from the scratch file, as zeroes, or from the base.
 * The base is never written, flushed or closed by the overlay: its owner does.
 *
 *   read ──> OverlayMap.runs ──> scratch (data) | zero fill | base
 *   write/writeZeroes/trim ──> WriteOrder (block-aligned range lock)
 *        full blocks:    data -> scratch pwrite, then markData; zero -> markZero (no I/O)
 *        partial blocks: read-modify-write of the merged block, then markData
 *
 * Order of a mutation: scratch I/O completes first, then the map bit is set,
 * so a concurrent reader never sees a bit whose data is not yet in scratch.
 * Locking whole blocks makes read-modify-write of a partial block safe against
 * any concurrent mutation that touches the same block.
 *
 * Durability (persistent overlays, used for failover views): flush() takes a
 * snapshot of the map first, then fdatasyncs the scratch file, then writes the
 * snapshot atomically (tmp + fsync + rename + dir fsync). So every persisted
 * bit names data that was durable before the map was: after a crash a block
 * is old or new, never garbage. Flushes are serialised. Test views
 * (persistent: false) keep the map in memory only; open() wipes leftovers and
 * destroy() deletes the files.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockDevice, DeviceInfo, Extent, WriteOptions, checkRange } from '../common/block/device';
import { FileDevice, fdatasync } from '../common/block/file-device';
import { WriteOrder } from '../common/block/write-order';
import { ReplError, asReplError } from '../common/errors';
import { Logger, silentLogger } from '../common/log';
import { ChangedRange, OverlayMap, isPowerOfTwo } from './overlay-map';

export const SCRATCH_FILE = 'scratch.img';
export const MAP_FILE = 'overlay.map';
export const DEFAULT_OVERLAY_GRANULARITY = 4096;
const MAX_GRANULARITY = 1024 * 1024;

export interface OverlayOptions {
  /** Block size of the change map: a power of two, >= base blockSize, <= 1 MiB. Default 4 KiB. */
  granularity?: number;
  /** Map and scratch survive close/crash and are reopened by open() (failover views). Default false. */
  persistent?: boolean;
  /** Identifies the base (e.g. "vol1@epoch 42"); stored and checked on reopen. */
  baseId?: string;
  logger?: Logger;
}

/** A piece of a byte range: a whole block run, or the part of one block. */
interface Piece {
  offset: number;
  length: number;
  startBlock: number;
  endBlock: number;
  partial: boolean;
}

async function writeFileAtomic(file: string, data: Buffer): Promise<void> {
  const tmp = `${file}.tmp`;
  const fh = await fs.promises.open(tmp, 'w', 0o644);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await fs.promises.rename(tmp, file);
  const dirFd = fs.openSync(path.dirname(file), 'r');
  try {
    await fdatasync(dirFd);
  } finally {
    fs.closeSync(dirFd);
  }
}

export class Overlay implements BlockDevice {
  readonly info: DeviceInfo;
  /** Block-aligned range lock for mutations (read-modify-write safety). */
  private readonly order = new WriteOrder();
  /** Reads in flight, drained by close() before the scratch file closes. */
  private readonly reads = new Set<Promise<unknown>>();
  /** Tail of the flush chain: flushes run one after another. */
  private flushChain: Promise<void> = Promise.resolve();
  /** map.changeVersion persisted by the last completed flush. */
  private savedVersion: number;
  private closing: Promise<void> | null = null;

  private constructor(
    readonly dir: string,
    private readonly base: BlockDevice,
    private readonly scratch: FileDevice,
    private readonly map: OverlayMap,
    readonly persistent: boolean,
    readonly baseId: string,
    private readonly logger: Logger,
  ) {
    this.info = {
      size: base.info.size,
      blockSize: base.info.blockSize,
      readOnly: false,
      canTrim: true,
      canWriteZeroes: true,
      trimReadsZeroes: true,
    };
    this.savedVersion = map.changeVersion;
  }

  /**
   * Opens (persistent and already present: reopens) the overlay in `dir`.
   * A persistent overlay whose map names another base, size or granularity is
   * refused (E_INVALID); a corrupt map is E_BITMAP_CORRUPT, never silently reset.
   */
  static async open(dir: string, base: BlockDevice, options: OverlayOptions = {}): Promise<Overlay> {
    const granularity = options.granularity ?? DEFAULT_OVERLAY_GRANULARITY;
    const { size, blockSize } = base.info;
    if (!isPowerOfTwo(granularity) || granularity < blockSize || granularity > MAX_GRANULARITY) {
      throw ReplError.invalid(`overlay granularity ${granularity} must be a power of two in [${blockSize}, 1 MiB]`);
    }
    if (Math.ceil(size / granularity) > 0xffffffff) {
      throw ReplError.invalid(`overlay granularity ${granularity} is too small for ${size} bytes`);
    }
    const persistent = options.persistent ?? false;
    const baseId = options.baseId ?? '';
    const logger = options.logger ?? silentLogger;
    const scratchPath = path.join(dir, SCRATCH_FILE);
    const mapPath = path.join(dir, MAP_FILE);
    try {
      await fs.promises.mkdir(dir, { recursive: true });
      await fs.promises.rm(`${mapPath}.tmp`, { force: true });
      if (persistent && fs.existsSync(mapPath)) {
        const map = await Overlay.loadMap(mapPath, size, granularity, baseId);
        if (!fs.existsSync(scratchPath)) {
          throw ReplError.io(`overlay ${dir}: ${MAP_FILE} exists but ${SCRATCH_FILE} is missing`);
        }
        const scratch = await FileDevice.open(scratchPath, { expectSize: size, blockSize });
        logger.info({ dir, changedBytes: map.changedBytes() }, 'overlay reopened');
        return new Overlay(dir, base, scratch, map, true, baseId, logger);
      }
      await fs.promises.rm(mapPath, { force: true });
      await fs.promises.rm(scratchPath, { force: true });
      const scratch = await FileDevice.open(scratchPath, { createSize: size, blockSize });
      const overlay = new Overlay(dir, base, scratch, new OverlayMap(granularity, size), persistent, baseId, logger);
      // a persistent overlay records its geometry at once, so a reopen always finds a map
      if (persistent) await writeFileAtomic(mapPath, overlay.map.encode(baseId));
      return overlay;
    } catch (err) {
      throw asReplError(err);
    }
  }

  private static async loadMap(file: string, size: number, granularity: number, baseId: string): Promise<OverlayMap> {
    const { map, baseId: storedId } = OverlayMap.decode(await fs.promises.readFile(file));
    if (map.size !== size || map.granularity !== granularity || storedId !== baseId) {
      throw ReplError.invalid(
        `overlay ${file} belongs to base '${storedId}' (${map.size} bytes, granularity ${map.granularity}), ` +
          `not '${baseId}' (${size} bytes, granularity ${granularity})`,
      );
    }
    return map;
  }

  private checkOpen(): void {
    if (this.closing) throw ReplError.closed(`overlay ${this.dir}`);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    checkRange(this.info, offset, length);
    const op = this.readMerged(offset, length);
    this.reads.add(op);
    try {
      return await op;
    } finally {
      this.reads.delete(op);
    }
  }

  /** The overlay's current content of [offset, offset + length): scratch, zeroes or base per block. */
  private async readMerged(offset: number, length: number): Promise<Buffer> {
    if (length === 0) return Buffer.alloc(0);
    const { start, end } = this.map.blocksOf(offset, length);
    if (this.map.isUntouched(start, end)) return this.base.read(offset, length);
    const out = Buffer.allocUnsafe(length);
    const g = this.map.granularity;
    const stop = offset + length;
    await Promise.all(
      this.map.runs(start, end).map(async (r) => {
        const from = Math.max(offset, r.start * g);
        const to = Math.min(stop, (r.start + r.count) * g);
        if (r.source === 'zero') {
          out.fill(0, from - offset, to - offset);
          return;
        }
        const dev = r.source === 'data' ? this.scratch : this.base;
        (await dev.read(from, to - from)).copy(out, from - offset);
      }),
    );
    return out;
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.checkOpen();
    checkRange(this.info, offset, data.length);
    await this.mutate(offset, data.length, (p) => this.writePiece(p, data.subarray(p.offset - offset, p.offset - offset + p.length)));
    if (options?.fua) await this.flush();
  }

  async writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.checkOpen();
    checkRange(this.info, offset, length);
    await this.mutate(offset, length, (p) => this.zeroPiece(p));
    if (options?.fua) await this.flush();
  }

  /** Trim is recorded like writeZeroes (trimReadsZeroes): failback ships those blocks as zeroes. */
  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.checkOpen();
    checkRange(this.info, offset, length);
    await this.mutate(offset, length, (p) => this.zeroPiece(p));
    if (options?.fua) await this.flush();
  }

  /** Splits the range into partial head/tail blocks and whole-block middle; runs op per piece under the lock. */
  private mutate(offset: number, length: number, op: (piece: Piece) => Promise<void>): Promise<void> {
    if (length === 0) return Promise.resolve();
    const { start, end } = this.map.blocksOf(offset, length);
    const lock = this.map.bytesOf(start, end);
    return this.order.run(lock.offset, lock.length, async () => {
      try {
        for (const piece of this.pieces(offset, length)) await op(piece);
      } catch (err) {
        throw asReplError(err);
      }
    });
  }

  private pieces(offset: number, length: number): Piece[] {
    const out: Piece[] = [];
    const stop = offset + length;
    for (let pos = offset; pos < stop; ) {
      const block = Math.floor(pos / this.map.granularity);
      const b = this.map.bytesOf(block, block + 1);
      const blockEnd = b.offset + b.length;
      if (pos > b.offset || stop < blockEnd) {
        const to = Math.min(stop, blockEnd);
        out.push({ offset: pos, length: to - pos, startBlock: block, endBlock: block + 1, partial: true });
        pos = to;
        continue;
      }
      // whole blocks from pos up to the last block that ends at or before stop
      let endBlock = Math.floor(stop / this.map.granularity);
      if (stop === this.info.size) endBlock = this.map.blockCount;
      const r = this.map.bytesOf(block, endBlock);
      out.push({ offset: pos, length: r.length, startBlock: block, endBlock, partial: false });
      pos += r.length;
    }
    return out;
  }

  private async writePiece(p: Piece, data: Buffer): Promise<void> {
    if (p.partial) return this.modifyBlock(p, (buf, at) => data.copy(buf, at));
    await this.scratch.write(p.offset, data);
    this.map.markData(p.startBlock, p.endBlock);
  }

  private async zeroPiece(p: Piece): Promise<void> {
    if (!p.partial) return this.map.markZero(p.startBlock, p.endBlock);
    if (this.map.sourceOf(p.startBlock) === 'zero') return;
    return this.modifyBlock(p, (buf, at) => buf.fill(0, at, at + p.length));
  }

  /** Read-modify-write of one block (caller holds the block's lock). */
  private async modifyBlock(p: Piece, change: (buf: Buffer, at: number) => void): Promise<void> {
    const b = this.map.bytesOf(p.startBlock, p.endBlock);
    // copy: the base may hand out a buffer it keeps (e.g. a cache)
    const buf = Buffer.from(await this.readMerged(b.offset, b.length));
    change(buf, p.offset - b.offset);
    await this.scratch.write(b.offset, buf);
    this.map.markData(p.startBlock, p.endBlock);
  }

  /** Makes every completed mutation durable (persistent overlays also persist the map). */
  flush(): Promise<void> {
    this.checkOpen();
    return this.serialFlush();
  }

  private serialFlush(): Promise<void> {
    const run = this.flushChain.then(() => this.flushNow());
    this.flushChain = run.catch(() => undefined);
    return run;
  }

  private async flushNow(): Promise<void> {
    const version = this.map.changeVersion;
    // snapshot BEFORE the data sync: every bit in it names data the sync covers
    const snapshot = this.persistent && version !== this.savedVersion ? this.map.encode(this.baseId) : null;
    try {
      await this.scratch.flush();
      if (snapshot) {
        await writeFileAtomic(path.join(this.dir, MAP_FILE), snapshot);
        this.savedVersion = version;
      }
    } catch (err) {
      throw asReplError(err);
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    this.checkOpen();
    checkRange(this.info, offset, length);
    const out: Extent[] = [];
    const push = (e: Extent): void => {
      const last = out[out.length - 1];
      if (last && last.zero === e.zero && last.hole === e.hole && last.offset + last.length === e.offset) {
        last.length += e.length;
      } else if (e.length > 0) out.push({ ...e });
    };
    const { start, end } = this.map.blocksOf(offset, length);
    const g = this.map.granularity;
    for (const r of this.map.runs(start, end)) {
      const from = Math.max(offset, r.start * g);
      const to = Math.min(offset + length, (r.start + r.count) * g);
      if (r.source === 'data') push({ offset: from, length: to - from, zero: false, hole: false });
      else if (r.source === 'zero') push({ offset: from, length: to - from, zero: true, hole: true });
      else for (const e of await this.baseExtents(from, to - from)) push(e);
    }
    return out;
  }

  /** The base's allocation map clipped to exactly [offset, offset + length); unknown parts are data. */
  private async baseExtents(offset: number, length: number): Promise<Extent[]> {
    const stop = offset + length;
    const out: Extent[] = [];
    let pos = offset;
    if (this.base.extents) {
      for (const e of await this.base.extents(offset, length)) {
        const from = Math.max(pos, e.offset);
        const to = Math.min(stop, e.offset + e.length);
        if (from !== pos || to <= from) break;
        out.push({ offset: from, length: to - from, zero: e.zero, hole: e.hole });
        pos = to;
      }
    }
    if (pos < stop) out.push({ offset: pos, length: stop - pos, zero: false, hole: false });
    return out;
  }

  /** Coalesced byte ranges the recovery side changed (what failback ships), in offset order. */
  changedRanges(maxLength?: number): ChangedRange[] {
    return this.map.changedRanges(maxLength);
  }

  /** Bytes the recovery side changed so far (ViewJson.overlayBytes). */
  changedBytes(): number {
    return this.map.changedBytes();
  }

  /** Stops new I/O, drains, flushes (persistent only) and closes the scratch file. Idempotent. */
  close(): Promise<void> {
    return this.shutdown(this.persistent, false);
  }

  /** Closes without flushing and deletes the overlay's files (and `dir` when left empty). */
  async destroy(): Promise<void> {
    await this.shutdown(false, true).catch((err: unknown) => this.logger.warn({ err, dir: this.dir }, 'overlay close failed'));
    for (const f of [SCRATCH_FILE, MAP_FILE, `${MAP_FILE}.tmp`]) {
      await fs.promises.rm(path.join(this.dir, f), { force: true });
    }
    await fs.promises.rmdir(this.dir).catch(() => undefined); // not empty: someone else's files stay
    this.logger.info({ dir: this.dir }, 'overlay destroyed');
  }

  private shutdown(flush: boolean, discard: boolean): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        try {
          await this.order.drain();
          await Promise.allSettled([...this.reads]);
          await this.flushChain;
          if (flush) await this.flushNow();
          // dropping the pages first makes the scratch file's closing fdatasync trivial
          if (discard) await fs.promises.truncate(this.scratch.path, 0);
        } finally {
          await this.scratch.close();
        }
      })();
    }
    return this.closing;
  }
}
