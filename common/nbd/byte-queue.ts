/**
 * ByteQueue: the bytes received so far, as a list of socket chunks. take(n)
 * returns a view (no copy) when the n bytes sit inside one chunk, which is the
 * common case for request headers and for write payloads that arrived in one
 * piece; otherwise it copies exactly once into a buffer of n bytes.
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
