/**
 * WriteOrder keeps the ordering contract of BlockDevice for implementations
 * whose I/O can be reordered underneath (the libuv thread pool runs pwrite
 * calls in parallel): a mutating call waits for every earlier in-flight
 * mutating call whose range overlaps its own, and only those. Disjoint writes
 * run concurrently.
 *
 * A caller that can finish an op synchronously (an inline pwrite) asks
 * overlaps() first: with no overlapping op in flight it may run the op at once
 * without registering it, because nothing submitted later can overtake an op
 * that is already complete.
 *
 * Cost: a linear scan of the in-flight list, which is bounded by the queue
 * depth of the front ends (a few hundred entries at most) and is empty while
 * I/O runs inline.
 */
interface InFlight {
  start: number;
  end: number;
  done: Promise<void>;
}

export class WriteOrder {
  /** Mutating calls submitted and not yet finished, in submission order. */
  private readonly inflight: InFlight[] = [];

  /** True when an op in flight overlaps [offset, offset+length). */
  overlaps(offset: number, length: number): boolean {
    const end = offset + Math.max(length, 1);
    for (const f of this.inflight) if (f.start < end && offset < f.end) return true;
    return false;
  }

  /** Runs op after all earlier overlapping ops finished; op's own failure is returned to the caller only. */
  run<T>(offset: number, length: number, op: () => Promise<T>): Promise<T> {
    const start = offset;
    const end = offset + Math.max(length, 1);
    const waits: Promise<void>[] = [];
    for (const f of this.inflight) if (f.start < end && start < f.end) waits.push(f.done);
    let release!: () => void;
    const entry: InFlight = { start, end, done: new Promise<void>((r) => (release = r)) };
    this.inflight.push(entry);
    const finish = (): void => {
      const i = this.inflight.indexOf(entry);
      if (i >= 0) this.inflight.splice(i, 1);
      release();
    };
    let started: Promise<T>;
    if (waits.length === 0) {
      try {
        started = op();
      } catch (err) {
        started = Promise.reject(err);
      }
    } else {
      started = (waits.length === 1 ? (waits[0] as Promise<void>) : Promise.all(waits)).then(op);
    }
    started.then(finish, finish);
    return started;
  }

  /** Resolves when every op submitted so far has finished. */
  async drain(): Promise<void> {
    await Promise.all(this.inflight.map((f) => f.done));
  }

  get size(): number {
    return this.inflight.length;
  }
}
