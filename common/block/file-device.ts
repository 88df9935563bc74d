/**
 * FileDevice: a BlockDevice over a regular (sparse) file or a block device
 * node, using the fd-based fs callbacks (one libuv thread-pool job per call,
 * no FileHandle promise overhead).
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
}

function pread(fd: number, buf: Buffer, off: number, len: number, pos: number): Promise<number> {
  return new Promise((resolve, reject) =>
    fs.read(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))),
  );
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
  /** Set once close() starts; later calls fail with E_CLOSED. */
  private closing: Promise<void> | null = null;

  private constructor(
    readonly path: string,
    private readonly fd: number,
    info: DeviceInfo,
  ) {
    this.info = info;
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
    });
  }

  private checkOpen(): void {
    if (this.closing) throw ReplError.closed(this.path);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.checkOpen();
    checkRange(this.info, offset, length);
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    try {
      while (done < length) {
        const n = await pread(this.fd, buf, done, length - done, offset + done);
        if (n === 0) {
          buf.fill(0, done);
          break;
        }
        done += n;
      }
    } catch (err) {
      throw asReplError(err);
    }
    return buf;
  }

  private async writeAll(offset: number, data: Buffer): Promise<void> {
    let done = 0;
    while (done < data.length) {
      done += await pwrite(this.fd, data, done, data.length - done, offset + done);
    }
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.checkOpen();
    if (this.info.readOnly) throw ReplError.readOnly(this.path);
    checkRange(this.info, offset, data.length);
    return this.order.run(offset, data.length, async () => {
      try {
        await this.writeAll(offset, data);
        if (options?.fua) await fdatasync(this.fd);
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
