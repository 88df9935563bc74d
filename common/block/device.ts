/**
 * The one block I/O interface of the project (nbdkit's next_ops, QEMU's
 * BlockDriver). Offsets and lengths are bytes. Every front end (NVMe/TCP, NBD)
 * accepts any BlockDevice; every filter (replication, overlay, recovery view)
 * is a BlockDevice wrapping another one.
 *
 * Ordering contract, which every implementation keeps:
 *  - mutating calls (write, writeZeroes, trim) whose ranges overlap complete
 *    in the order they were submitted (see WriteOrder);
 *  - flush() makes durable every mutating call that completed before flush()
 *    was called;
 *  - { fua: true } makes that one call durable before it completes.
 * Callers validate ranges before calling (front ends answer the initiator with
 * an error status); implementations still assert with checkRange().
 *
 * Buffer ownership: write() may read `data` until its promise settles and
 * keeps no reference to it afterwards; a device that needs the bytes later
 * copies them (MemoryDevice copies into its chunks, the replication filter's
 * replicator encodes the record and writes its reference log synchronously,
 * the hub overlay writes to a scratch FileDevice). The front ends rely on this
 * to recycle write payloads (common/block/buffer-pool.ts) once write() settled.
 */
import { ReplError } from '../errors';

export interface DeviceInfo {
  /** Size in bytes; a multiple of blockSize. */
  readonly size: number;
  /** Logical block size in bytes (512 or 4096). */
  readonly blockSize: number;
  readonly readOnly: boolean;
  readonly canTrim: boolean;
  readonly canWriteZeroes: boolean;
  /** Trimmed ranges read back as zeroes (NVMe DLFEAT / NBD trim semantics). */
  readonly trimReadsZeroes: boolean;
}

export interface WriteOptions {
  /** Forced unit access: durable before the call completes. */
  fua?: boolean;
  /**
   * writeZeroes only (NBD NO_HOLE): the range should stay allocated; the device
   * writes zero bytes rather than deallocating. Filters pass it on unchanged
   * (replication still ships a zeroes record, never zero data). FileDevice
   * always writes zeroes, so it needs no special case.
   */
  noHole?: boolean;
}

export interface Extent {
  offset: number;
  length: number;
  /** Range is known to read as zeroes. */
  zero: boolean;
  /** Range is unallocated (implies zero for our devices). */
  hole: boolean;
}

export interface BlockDevice {
  readonly info: DeviceInfo;
  read(offset: number, length: number): Promise<Buffer>;
  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void>;
  writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void>;
  trim(offset: number, length: number, options?: WriteOptions): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;
  /** Optional allocation map (NBD base:allocation); absent means "all data". */
  extents?(offset: number, length: number): Promise<Extent[]>;
}

/** The mutating methods of BlockDevice; filters must handle each one explicitly. */
export const MUTATING_METHODS = ['write', 'writeZeroes', 'trim'] as const;

export function checkRange(info: DeviceInfo, offset: number, length: number): void {
  if (
    !Number.isSafeInteger(offset) ||
    !Number.isSafeInteger(length) ||
    offset < 0 ||
    length < 0 ||
    offset + length > info.size
  ) {
    throw ReplError.range(offset, length, info.size);
  }
}

export function rangeValid(info: DeviceInfo, offset: number, length: number): boolean {
  return (
    Number.isSafeInteger(offset) &&
    Number.isSafeInteger(length) &&
    offset >= 0 &&
    length >= 0 &&
    offset + length <= info.size
  );
}
