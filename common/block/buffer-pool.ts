/**
 * BufferPool: recycled buffers for write payloads that the front ends must
 * assemble from several socket chunks (an NBD WRITE or an NVMe/TCP capsule
 * larger than one chunk).
 *
 * Why: a fresh 128 KiB buffer per write is a glibc mmap (128 KiB is its mmap
 * threshold) whose pages fault in on the first copy, and the memory returns
 * only after a GC; measured over NBD, 4000 x 128 KiB writes spent ~0.7 s in
 * that copy and ~0.35 s in GC, while the same copy into warm memory takes a
 * few milliseconds. A pooled buffer stays mapped and warm.
 *
 * Safety rests on the BlockDevice contract (device.ts): a device keeps no
 * reference to write()'s `data` once the returned promise has settled. The
 * front end therefore releases a payload only after the device call that got
 * it settled (fulfilled or rejected), never earlier. release() ignores
 * buffers it did not hand out and second releases, so a stray call cannot put
 * one buffer in the free list twice (which would give it to two writes).
 *
 * Sizes: requests from minBytes to maxBytes are rounded up to a power of two
 * (one free list per size class); others are plain Buffer.allocUnsafe and
 * release() ignores them. Free buffers are bounded by maxFreeBytes in total;
 * beyond that a released buffer is left to the GC.
 */

export interface BufferPoolOptions {
  /** Smallest request served from the pool (rounded up to a power of two). */
  minBytes: number;
  /** Largest request served from the pool. */
  maxBytes: number;
  /** Bound on the bytes kept in free lists. */
  maxFreeBytes: number;
}

export interface BufferPoolStats {
  /** acquire() calls served from a free list. */
  reused: number;
  /** acquire() calls that allocated a new pooled buffer. */
  allocated: number;
  /** acquire() calls outside [minBytes, maxBytes]. */
  unpooled: number;
  /** Buffers handed out and not yet released (a buffer dropped without release stays counted). */
  leased: number;
  /** Bytes in free lists. */
  freeBytes: number;
}

function sizeClass(n: number): number {
  return 2 ** Math.ceil(Math.log2(n));
}

export class BufferPool {
  private readonly o: BufferPoolOptions;
  /** Size class -> free backing stores of exactly that size. */
  private readonly free = new Map<number, ArrayBuffer[]>();
  /** Backing stores handed out and not yet released (weak: a buffer never released is simply collected). */
  private readonly leased = new WeakSet<ArrayBuffer>();
  private leasedCount = 0;
  private freeBytes = 0;
  private readonly counts = { reused: 0, allocated: 0, unpooled: 0 };

  constructor(options: BufferPoolOptions) {
    if (!(options.minBytes > 0 && options.minBytes <= options.maxBytes)) {
      throw new RangeError(`buffer pool sizes ${options.minBytes}..${options.maxBytes}`);
    }
    this.o = options;
  }

  /** A buffer of exactly n bytes with unspecified contents. */
  acquire(n: number): Buffer {
    if (n < this.o.minBytes || n > this.o.maxBytes) {
      this.counts.unpooled++;
      return Buffer.allocUnsafe(n);
    }
    const size = sizeClass(n);
    let ab = this.free.get(size)?.pop();
    if (ab) {
      this.freeBytes -= size;
      this.counts.reused++;
    } else {
      ab = new ArrayBuffer(size);
      this.counts.allocated++;
    }
    this.leased.add(ab);
    this.leasedCount++;
    return Buffer.from(ab, 0, n);
  }

  /**
   * Gives back a buffer from acquire() (any view of it). The caller must hold
   * no other reference that is still used. Unknown buffers are ignored.
   */
  release(buf: Buffer): void {
    const ab = buf.buffer;
    if (!(ab instanceof ArrayBuffer) || !this.leased.delete(ab)) return;
    this.leasedCount--;
    const size = ab.byteLength;
    if (this.freeBytes + size > this.o.maxFreeBytes) return;
    let list = this.free.get(size);
    if (!list) {
      list = [];
      this.free.set(size, list);
    }
    list.push(ab);
    this.freeBytes += size;
  }

  get stats(): BufferPoolStats {
    return { ...this.counts, leased: this.leasedCount, freeBytes: this.freeBytes };
  }
}

/**
 * The process-wide pool of the NBD server and the NVMe/TCP target: payloads
 * from 16 KiB to 4 MiB, at most 32 MiB kept free (half the NBD server's
 * default in-flight byte bound of one connection).
 */
export const payloadPool = new BufferPool({ minBytes: 16 * 1024, maxBytes: 4 * 1024 * 1024, maxFreeBytes: 32 * 1024 * 1024 });
