/**
 * ByteQueue: the bytes received so far, as a list of socket chunks. take(n)
 * returns a view (no copy) when the n bytes sit inside one chunk, which is the
 * common case for request headers and for write payloads that arrived in one
 * piece; otherwise it copies exactly once into a buffer of n bytes.
 * takeInto() copies into a caller's buffer (the NBD reader assembles large
 * payloads in pooled buffers as they arrive); detach() copies what is queued
 * out of the pushed chunks so their memory can be reused.
 */
export class ByteQueue {
  private readonly chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private head = 0;
  /** Bytes available (sum of chunk lengths minus head). */
  private total = 0;

  get length(): number {
    return this.total;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.total += chunk.length;
  }

  /** Removes and returns the next n bytes; the caller checks length first. */
  take(n: number): Buffer {
    if (n > this.total) throw new RangeError(`take(${n}) with ${this.total} bytes queued`);
    const first = this.chunks[0];
    if (n === 0 || first === undefined) return Buffer.alloc(0);
    if (first.length - this.head >= n) {
      const view = first.subarray(this.head, this.head + n);
      this.advance(n);
      return view;
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length - this.head, n - filled);
      c.copy(out, filled, this.head, this.head + k);
      filled += k;
      this.advance(k);
    }
    return out;
  }

  /** True when the next n bytes lie inside the first chunk (take(n) would return a view). */
  firstChunkHolds(n: number): boolean {
    const first = this.chunks[0];
    return first !== undefined && first.length - this.head >= n;
  }

  /** Removes up to n bytes into dest at offset `at`; returns how many were copied. */
  takeInto(dest: Buffer, at: number, n: number): number {
    let filled = 0;
    while (filled < n && this.chunks.length > 0) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length - this.head, n - filled);
      c.copy(dest, at + filled, this.head, this.head + k);
      filled += k;
      this.advance(k);
    }
    return filled;
  }

  /**
   * Replaces the queued bytes by one copy the queue owns, so the memory of
   * the pushed chunks may be reused (a socket reading into one static buffer).
   */
  detach(): void {
    if (this.total === 0) {
      this.chunks.length = 0;
      this.head = 0;
      return;
    }
    const own = Buffer.allocUnsafe(this.total);
    this.takeInto(own, 0, this.total);
    this.push(own);
  }

  /** Drops up to n bytes; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.chunks.length > 0) {
      const c = this.chunks[0] as Buffer;
      const k = Math.min(c.length - this.head, n - dropped);
      this.advance(k);
      dropped += k;
    }
    return dropped;
  }

  private advance(n: number): void {
    this.head += n;
    this.total -= n;
    const c = this.chunks[0];
    if (c !== undefined && this.head >= c.length) {
      this.chunks.shift();
      this.head = 0;
    }
  }
}
