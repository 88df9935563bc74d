/**
 * FileDevice: a BlockDevice over a regular (sparse) file or a block device
 * node, using fd-based fs calls (no FileHandle promise overhead).
 *
 * Inline I/O: a read or write of up to inlineMaxBytes runs as a synchronous
 * pread/pwrite on the event loop. Against the page cache that takes a few
 * microseconds, while a thread-pool job costs two cross-thread wake-ups
 * (loop -> worker -> loop), which dominated request latency on small
 * machines (measured: 4k random write QD1 over NBD went from ~3k to ~12k
 * IOPS). Every inline call is timed; one that takes longer than the budget
 * (inlineSlowMs plus 1 ns per byte: a cache miss on a real disk, dirty-page
 * throttling) sends all I/O to the thread pool for a back-off period that
 * doubles while inline calls stay slow, so a slow disk never stalls the loop
 * for more than one call per period. fdatasync always uses the thread pool.
 *
 * Durability: write() returns when pwrite() returned (page cache). flush()
 * and { fua } call fdatasync(fd), which makes every completed write durable.
 * writeZeroes() and trim() write zeroes (Node has no fallocate/punch-hole), so
 * trimmed ranges read back as zeroes and a replica can match byte for byte.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockDevice, DeviceInfo, WriteOptions, checkRange } from './device';
import { WriteOrder } from './write-order';
import { ReplError, asReplError } from '../errors';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);

export interface FileDeviceOptions {
  /** Create the file (sparse) with this size when it does not exist. */
  createSize?: number;
  /** Expected size; an existing file of another size is an error. */
  expectSize?: number;
  readOnly?: boolean;
  blockSize?: number;
  /** Largest read/write that may run inline on the event loop; 0 = always the thread pool. */
  inlineMaxBytes?: number;
  /** Time budget (ms, plus 1 ns per byte) of one inline call before I/O moves to the thread pool. */
  inlineSlowMs?: number;
}

export const DEFAULT_INLINE_MAX_BYTES = 256 * 1024;
export const DEFAULT_INLINE_SLOW_MS = 0.25;
/** Back-off after a slow inline call: first period, and the cap while calls stay slow. */
const INLINE_BACKOFF_MIN_MS = 100;
const INLINE_BACKOFF_MAX_MS = 5000;
/** Slow inline calls (net of fast ones, see InlinePolicy) that start a back-off. */
const SLOW_DEBT_LIMIT = 3;

/** Counters of where I/O ran (for metrics and tests). */
export interface FileDeviceIoStats {
  inline: number;
  pooled: number;
  /** Inline calls over their time budget. */
  slowInline: number;
}

/**
 * Decides inline vs thread pool; see the file header. Slowness is a leaky
 * bucket: each over-budget call adds one, each call within budget drains
 * 1/16, and the bucket tripping at 3 starts a back-off period. Isolated
 * spikes (the loop thread preempted on a busy host: ~0.2% of calls) never
 * trip it; a disk that misses the cache on a fifth of the calls does.
 */
class InlinePolicy {
  readonly stats: FileDeviceIoStats = { inline: 0, pooled: 0, slowInline: 0 };
  /** performance.now() before which I/O goes to the pool. */
  private poolUntil = 0;
  private backoffMs = INLINE_BACKOFF_MIN_MS;
  private debt = 0;

  constructor(
    private readonly maxBytes: number,
    private readonly slowMs: number,
  ) {}

  /** True when an I/O of len bytes should run inline now. */
  allows(len: number): boolean {
    if (len > this.maxBytes) return false;
    if (this.poolUntil === 0) return true;
    if (performance.now() < this.poolUntil) return false;
    this.poolUntil = 0;
    return true;
  }

  /** Records an inline call that started at t0 (performance.now()). */
  observe(len: number, t0: number): void {
    this.stats.inline++;
    const now = performance.now();
    if (now - t0 <= this.slowMs + len * 1e-6) {
      if (this.debt > 0) {
        this.debt = Math.max(0, this.debt - 1 / 16);
        if (this.debt === 0) this.backoffMs = INLINE_BACKOFF_MIN_MS;
      }
      return;
    }
    this.stats.slowInline++;
    if (++this.debt < SLOW_DEBT_LIMIT) return;
    // one more slow call right after the back-off trips again, for twice as long
    this.debt = SLOW_DEBT_LIMIT - 1;
    this.poolUntil = now + this.backoffMs;
    this.backoffMs = Math.min(this.backoffMs * 2, INLINE_BACKOFF_MAX_MS);
  }
}

function pread(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

/** Fills buf from pos on the thread pool (several reads if short); zeroes past the end of the file. */
export async function preadFull(fd: number, buf: Buffer, pos: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await pread(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

function preadSync(fd: number, buf: Buffer, pos: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, pos + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

function pwriteSync(fd: number, data: Buffer, pos: number): void {
  let done = 0;
  while (done < data.length) done += fs.writeSync(fd, data, done, data.length - done, pos + done);
}

function pwrite(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.write(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** Size of a block device node from sysfs (Node cannot issue BLKGETSIZE64). */
function blockDeviceSize(file: string, st: fs.Stats): number {
  const major = Math.floor(st.rdev / 256) & 0xfff;
  const minor = (st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00);
  const sys = `/sys/dev/block/${major}:${minor}/size`;
  try {
    return Number(fs.readFileSync(sys, 'utf8').trim()) * 512;
  } catch (err) {
    throw ReplError.io(`cannot determine size of block device ${file}`, err);
  }
}

export class FileDevice implements BlockDevice {
  readonly info: DeviceInfo;
  private readonly order = new WriteOrder();
  private readonly inline: InlinePolicy;
  /** Set once close() starts; later calls fail with E_CLOSED. */
  private closing: Promise<void> | null = null;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    info: DeviceInfo,
    options: FileDeviceOptions,
  ) {
    this.info = info;
    this.inline = new InlinePolicy(
      options.inlineMaxBytes ?? DEFAULT_INLINE_MAX_BYTES,
      options.inlineSlowMs ?? DEFAULT_INLINE_SLOW_MS,
    );
  }

  /** Where I/O ran so far (inline on the loop or on the thread pool). */
  get ioStats(): Readonly<FileDeviceIoStats> {
    return this.inline.stats;
  }

  static async open(file: string, options: FileDeviceOptions = {}): Promise<FileDevice> {
    const blockSize = options.blockSize ?? 512;
    let created = false;
    if (!fs.existsSync(file)) {
      if (options.createSize === undefined) {
        throw new ReplError('E_NOT_FOUND', `volume file ${file} does not exist and no size was given`);
      }
      if (options.createSize <= 0 || options.createSize % blockSize !== 0) {
        throw ReplError.invalid(`volume size ${options.createSize} must be a positive multiple of ${blockSize}`);
      }
      await fs.promises.mkdir(path.dirname(file), { recursive: true });
      const fd = fs.openSync(file, 'wx', 0o644);
      try {
        fs.ftruncateSync(fd, options.createSize);
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      created = true;
    }
    const readOnly = options.readOnly ?? false;
    let fd: number;
    try {
      fd = fs.openSync(file, readOnly ? 'r' : 'r+');
    } catch (err) {
      throw asReplError(err);
    }
    const st = fs.fstatSync(fd);
    const size = st.isBlockDevice() ? blockDeviceSize(file, st) : st.size;
    const expected = options.expectSize ?? (created ? undefined : options.createSize);
    if (expected !== undefined && expected !== size) {
      fs.closeSync(fd);
      throw ReplError.invalid(`${file} is ${size} bytes but ${expected} was given`);
    }
    if (size === 0 || size % blockSize !== 0) {
      fs.closeSync(fd);
      throw ReplError.invalid(`${file}: size ${size} is not a positive multiple of ${blockSize}`);
    }
    return new FileDevice(file, fd, {
      size,
      blockSize,
      readOnly,
      canTrim: !readOnly,
      canWriteZeroes: !readOnly,
      trimReadsZeroes: true,
    }, options);
  }

  private checkOpen(): void {
    if (this.closing) throw ReplError.closed(this.path);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    checkRange(this.info, offset, length);
    const buf = Buffer.allocUnsafe(length);
    try {
      if (this.inline.allows(length)) {
        const t0 = performance.now();
        preadSync(this.fd, buf, offset);
        this.inline.observe(length, t0);
        return buf;
      }
      this.inline.stats.pooled++;
      await preadFull(this.fd, buf, offset);
    } catch (err) {
      throw asReplError(err);
    }
    return buf;
  }

  /** Writes data at offset, inline when the policy allows, else on the thread pool. */
  private async writeAll(offset: number, data: Buffer): Promise<void> {
    if (this.inline.allows(data.length)) {
      const t0 = performance.now();
      pwriteSync(this.fd, data, offset);
      this.inline.observe(data.length, t0);
      return;
    }
    this.inline.stats.pooled++;
    let done = 0;
    while (done < data.length) {
      done += await pwrite(this.fd, data, done, data.length - done, offset + done);
    }
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.checkOpen();
    if (this.info.readOnly) throw ReplError.readOnly(this.path);
    checkRange(this.info, offset, data.length);
    const fua = options?.fua === true;
    // Fast path: nothing overlapping in flight and the write can finish right
    // here, so it needs no WriteOrder entry (see write-order.ts). FUA writes
    // wait for fdatasync and therefore stay ordered.
    if (!fua && this.inline.allows(data.length) && !this.order.overlaps(offset, data.length)) {
      try {
        const t0 = performance.now();
        pwriteSync(this.fd, data, offset);
        this.inline.observe(data.length, t0);
      } catch (err) {
        throw asReplError(err);
      }
      return;
    }
    return this.order.run(offset, data.length, async () => {
      try {
        await this.writeAll(offset, data);
        if (fua) await fdatasync(this.fd);
      } catch (err) {
        throw asReplError(err);
      }
    });
  }

  async writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.checkOpen();
    if (this.info.readOnly) throw ReplError.readOnly(this.path);
    checkRange(this.info, offset, length);
    return this.order.run(offset, length, async () => {
      try {
        for (let pos = offset; pos < offset + length; ) {
          const n = Math.min(ZERO_CHUNK.length, offset + length - pos);
          await this.writeAll(pos, ZERO_CHUNK.subarray(0, n));
          pos += n;
        }
        if (options?.fua) await fdatasync(this.fd);
      } catch (err) {
        throw asReplError(err);
      }
    });
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.writeZeroes(offset, length, options);
  }

  async flush(): Promise<void> {
    this.checkOpen();
    if (this.info.readOnly) return;
    try {
      await fdatasync(this.fd);
    } catch (err) {
      throw asReplError(err);
    }
  }

  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        try {
          await this.order.drain();
          if (!this.info.readOnly) await fdatasync(this.fd);
        } finally {
          fs.closeSync(this.fd);
        }
      })();
    }
    return this.closing;
  }
}
