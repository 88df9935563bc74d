/**
 * The narrow storage interface under the journal, and its first backend (a
 * local directory). The journal needs only: create-once segment files of a
 * fixed size, positional writes/reads, a durability barrier, delete, and one
 * small manifest replaced atomically. That maps onto object storage later
 * (sealed segments become immutable objects; the manifest a fenced key).
 *
 * Local layout of a volume's journal directory:
 *   manifest.json                 the manifest (JSON, see JournalManifest)
 *   seg-<ordinal:016x>-<owner>-<nonce:016x>.rjl   segment files
 * Manifest replacement: write manifest.json.tmp, fsync it, rename over
 * manifest.json, fsync the directory. A crash leaves either the old or the new
 * manifest, never a mix. Segment creation writes the header and sets the full
 * size with ftruncate (sparse: appends never change the file size, so an
 * fdatasync never has to persist a new size), fsyncs it and the directory
 * before the manifest may name it. Not zero-filled: writing 64 MiB of zeroes
 * per 64 MiB of journal doubled the hub's disk writes, and each zero-fill
 * burst plus its fsync stalled the journal's group commits behind it (lag p99
 * at 7000 paced 4 KiB writes/s: 58-187 ms zero-filled, 36-38 ms sparse; the
 * price, a block allocation in the fdatasync of newly reached blocks, is
 * smaller). A scan of never-written space reads zeroes: no valid record.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { asReplError } from '../common/errors';
import { AlignedAppender, StagingBuffer } from './aligned-appender';

export interface ManifestSegment {
  name: string;
  ordinal: number;
  salt: number;
  /** Byte offset just past the last record; null for the segment being appended to. */
  endOffset: number | null;
}

export interface JournalManifest {
  format: 1;
  owner: string;
  segments: ManifestSegment[];
  nextOrdinal: number;
  /** Newest durable seq/epoch when this manifest was written (a lower bound; the scan finds the rest). */
  durableSeq: number;
  durableEpoch: number;
  /** Opaque state of the journal's user (the replica store's base-image checkpoint). */
  meta: Record<string, unknown>;
}

export interface SegmentFile {
  readonly name: string;
  readonly size: number;
  /** Writes buffers back to back starting at position (within the preallocated size). */
  write(buffers: readonly Buffer[], position: number): Promise<void>;
  read(position: number, length: number): Promise<Buffer>;
  /** Durability barrier for every completed write (fdatasync). */
  sync(): Promise<void>;
  /** True while appends bypass the page cache (O_DIRECT). */
  readonly direct: boolean;
  close(): Promise<void>;
}

export interface JournalStorage {
  readonly description: string;
  loadManifest(): Promise<JournalManifest | null>;
  storeManifest(manifest: JournalManifest): Promise<void>;
  /** Creates a new segment of `size` bytes starting with `header`, durable on return. */
  createSegment(name: string, size: number, header: Buffer): Promise<SegmentFile>;
  openSegment(name: string): Promise<SegmentFile>;
  removeSegment(name: string): Promise<void>;
  listSegments(): Promise<string[]>;
}

const MANIFEST = 'manifest.json';

function call<T>(fn: (cb: (err: NodeJS.ErrnoException | null, value: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => fn((err, value) => (err ? reject(asReplError(err)) : resolve(value))));
}

class LocalSegmentFile implements SegmentFile {
  private readonly appender: AlignedAppender | null;

  /** `fd` serves reads, syncs and buffered writes; `directFd` (O_DIRECT, may be null) appends. */
  constructor(
    readonly name: string,
    readonly size: number,
    private readonly fd: number,
    private readonly directFd: number | null,
    staging: StagingBuffer,
  ) {
    // only a new, empty segment gets a direct descriptor (the header goes through writeBuffered)
    this.appender = directFd === null ? null : new AlignedAppender(directFd, size, staging);
  }

  get direct(): boolean {
    return this.appender?.enabled ?? false;
  }

  get directStats(): { direct: number; fallback: number } {
    return this.appender?.stats ?? { direct: 0, fallback: 0 };
  }

  async write(buffers: readonly Buffer[], position: number): Promise<void> {
    if (this.appender && (await this.appender.append(buffers, position))) return;
    await this.writeBuffered(buffers, position);
  }

  /** Writes through the page cache (segment headers; the appender's fallback). */
  async writeBuffered(buffers: readonly Buffer[], position: number): Promise<void> {
    this.appender?.wroteElsewhere(position, buffers.reduce((n, b) => n + b.length, 0));
    let pending = buffers.filter((b) => b.length > 0);
    let pos = position;
    while (pending.length > 0) {
      const n = await call<number>((cb) => fs.writev(this.fd, pending, pos, cb));
      pos += n;
      // a short writev (rare on regular files) continues with the remainder
      let skip = n;
      const rest: Buffer[] = [];
      for (const b of pending) {
        if (skip >= b.length) skip -= b.length;
        else {
          rest.push(skip > 0 ? b.subarray(skip) : b);
          skip = 0;
        }
      }
      pending = rest;
    }
  }

  async read(position: number, length: number): Promise<Buffer> {
    const buf = Buffer.allocUnsafe(length);
    let done = 0;
    while (done < length) {
      const n = await call<number>((cb) => fs.read(this.fd, buf, done, length - done, position + done, cb));
      if (n === 0) {
        buf.fill(0, done);
        break;
      }
      done += n;
    }
    return buf;
  }

  sync(): Promise<void> {
    return call<void>((cb) => fs.fdatasync(this.fd, (err) => cb(err, undefined)));
  }

  async close(): Promise<void> {
    if (this.directFd !== null) {
      const fd = this.directFd;
      await call<void>((cb) => fs.close(fd, (err) => cb(err, undefined))).catch(() => undefined);
    }
    await call<void>((cb) => fs.close(this.fd, (err) => cb(err, undefined)));
  }
}

export interface LocalJournalOptions {
  /**
   * Append through O_DIRECT (aligned-appender.ts) where the file system
   * allows it (default true); false writes through the page cache.
   */
  directIo?: boolean;
}

export class LocalJournalStorage implements JournalStorage {
  /** One staging buffer per journal: it writes one batch at a time. */
  private readonly staging = new StagingBuffer();
  private readonly directIo: boolean;

  constructor(
    readonly dir: string,
    options: LocalJournalOptions = {},
  ) {
    this.directIo = options.directIo ?? true;
  }

  get description(): string {
    return `local:${this.dir}${this.directIo ? '' : ' (buffered)'}`;
  }

  /** Why O_DIRECT appends are not in use although asked for (null: in use, or not asked for). */
  directRefused: string | null = null;

  /** A second, O_DIRECT descriptor of `file` for appends; null where refused or disabled. */
  private openDirect(file: string): number | null {
    if (!this.directIo) return null;
    try {
      const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
      this.directRefused = null;
      return fd;
    } catch (err) {
      // tmpfs before Linux 6.6 and some network file systems refuse it
      this.directRefused = (err as NodeJS.ErrnoException).code ?? String(err);
      return null;
    }
  }

  private async syncDir(): Promise<void> {
    const fd = await call<number>((cb) => fs.open(this.dir, 'r', cb));
    try {
      await call<void>((cb) => fs.fsync(fd, (err) => cb(err, undefined)));
    } finally {
      fs.closeSync(fd);
    }
  }

  async loadManifest(): Promise<JournalManifest | null> {
    let text: string;
    try {
      text = await fs.promises.readFile(path.join(this.dir, MANIFEST), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw asReplError(err);
    }
    return parseManifest(text);
  }

  async storeManifest(manifest: JournalManifest): Promise<void> {
    await fs.promises.mkdir(this.dir, { recursive: true });
    await writeFileAtomic(path.join(this.dir, MANIFEST), JSON.stringify(manifest, null, 1) + '\n');
  }

  async createSegment(name: string, size: number, header: Buffer): Promise<SegmentFile> {
    await fs.promises.mkdir(this.dir, { recursive: true });
    const full = path.join(this.dir, name);
    const fd = await call<number>((cb) => fs.open(full, 'wx+', 0o644, cb));
    const file = new LocalSegmentFile(name, size, fd, this.openDirect(full), this.staging);
    try {
      // buffered: the spare segment is created while the active one appends through the staging buffer
      await file.writeBuffered([header], 0);
      await call<void>((cb) => fs.ftruncate(fd, size, (err) => cb(err, undefined)));
      await file.sync();
      await this.syncDir();
    } catch (err) {
      await file.close().catch(() => undefined);
      throw asReplError(err);
    }
    return file;
  }

  async openSegment(name: string): Promise<SegmentFile> {
    const file = path.join(this.dir, name);
    const fd = await call<number>((cb) => fs.open(file, 'r+', cb));
    const st = fs.fstatSync(fd);
    // a reopened segment is only read (the journal never appends to it): no direct descriptor
    return new LocalSegmentFile(name, st.size, fd, null, this.staging);
  }

  async removeSegment(name: string): Promise<void> {
    try {
      await fs.promises.unlink(path.join(this.dir, name));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw asReplError(err);
    }
  }

  async listSegments(): Promise<string[]> {
    try {
      return (await fs.promises.readdir(this.dir)).filter((n) => n.endsWith('.rjl')).sort();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw asReplError(err);
    }
  }
}

/** tmp + fsync + rename + directory fsync. */
export async function writeFileAtomic(file: string, text: string): Promise<void> {
  const tmp = `${file}.tmp`;
  const handle = await fs.promises.open(tmp, 'w', 0o644);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await fs.promises.rename(tmp, file);
  const dir = await fs.promises.open(path.dirname(file), 'r');
  try {
    await dir.sync();
  } finally {
    await dir.close();
  }
}

function isNat(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Parses and checks a manifest; E_IO when it is not one of ours. */
export function parseManifest(text: string): JournalManifest {
  let m: Partial<JournalManifest>;
  try {
    m = JSON.parse(text) as Partial<JournalManifest>;
  } catch (err) {
    throw asReplError(new Error(`journal manifest is not JSON: ${(err as Error).message}`));
  }
  const ok =
    m !== null &&
    typeof m === 'object' &&
    m.format === 1 &&
    typeof m.owner === 'string' &&
    Array.isArray(m.segments) &&
    m.segments.every(
      (s) =>
        typeof s?.name === 'string' &&
        /^[\w.-]+\.rjl$/.test(s.name) &&
        isNat(s.ordinal) &&
        isNat(s.salt) &&
        (s.endOffset === null || isNat(s.endOffset)),
    ) &&
    isNat(m.nextOrdinal) &&
    isNat(m.durableSeq) &&
    isNat(m.durableEpoch) &&
    typeof m.meta === 'object' &&
    m.meta !== null;
  if (!ok) throw asReplError(Object.assign(new Error('journal manifest is malformed'), { code: 'EIO' }));
  return m as JournalManifest;
}
