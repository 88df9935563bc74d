/**
 * RegionState: when a dirty region may become clean (contract rule 6). Pure
 * in-memory bookkeeping beside the DirtyBitmap; no I/O, no timers.
 *
 * For each region we know:
 *   bit      set in `bitmap` while the hub may differ from the volume;
 *   resend   the region must be read back and shipped by a resync (a dropped
 *            payload, a disconnect, a crash, a FULL sync);
 *   awaiting newest epoch holding a record for the region in this session;
 *   inflight live writes between beginWrite and complete/failWrite.
 * Invariant: bit ⇐ resend ∨ awaiting ∨ inflight. A bit is cleared only by
 * onAck(E) when the region's newest queued epoch <= E, nothing is in flight on
 * it and it is not in resend. onDisconnect moves every awaiting region to
 * resend (nothing is replayed from memory; the next resync reads the volume).
 *
 * Resync range lock (contract rule 9): lockForResync(start, end) blocks new
 * writers of those regions and resolves once the writes in flight there have
 * completed; the resync reads, queues its records, then unlocks.
 */
import assert from 'node:assert';
import { DirtyBitmap, RegionRun } from './dirty-bitmap';

interface EpochRegions {
  epoch: number;
  regions: number[];
}

export class RegionState {
  /** Regions that must be read back from the volume (subset of the bitmap's bits). */
  readonly resend: DirtyBitmap;
  /** region -> newest epoch that carries a record for it in this session. */
  private readonly awaiting = new Map<number, number>();
  /** Queued regions per epoch, epochs ascending (they only grow). */
  private byEpoch: EpochRegions[] = [];
  private readonly inflight = new Map<number, number>();
  /** Regions held by the resync, or null. */
  private lock: { start: number; end: number; unlocked: Promise<void>; release: () => void } | null = null;
  /** Resolves the resync's wait for writes in flight on the locked range. */
  private drained: (() => void) | null = null;

  constructor(readonly bitmap: DirtyBitmap) {
    this.resend = new DirtyBitmap(bitmap.regionSize, bitmap.deviceSize);
    // every bit known at start (persisted, recovered) must be read back
    this.resend.union(bitmap);
  }

  /** Null when [start, end) is not locked, else a promise for the unlock (re-check after it). */
  waitUnlocked(start: number, end: number): Promise<void> | null {
    const l = this.lock;
    return l && l.start < end && start < l.end ? l.unlocked : null;
  }

  beginWrite(start: number, end: number): void {
    assert(this.waitUnlocked(start, end) === null, 'write began inside a resync lock');
    this.bitmap.setRange(start, end);
    for (let r = start; r < end; r++) this.inflight.set(r, (this.inflight.get(r) ?? 0) + 1);
  }

  /** The write completed locally; `epoch` is where its records went, or null when dropped. */
  completeWrite(start: number, end: number, epoch: number | null): void {
    this.endInflight(start, end);
    if (epoch === null) this.resend.setRange(start, end);
    else this.queued(start, end, epoch);
    this.checkDrained();
  }

  /** The local write failed: the region's content is unknown, ship it again. */
  failWrite(start: number, end: number): void {
    this.endInflight(start, end);
    this.resend.setRange(start, end);
    this.checkDrained();
  }

  private endInflight(start: number, end: number): void {
    for (let r = start; r < end; r++) {
      const n = this.inflight.get(r) ?? 0;
      assert(n > 0, `region ${r} had no write in flight`);
      if (n === 1) this.inflight.delete(r);
      else this.inflight.set(r, n - 1);
    }
  }

  private queued(start: number, end: number, epoch: number): void {
    let last = this.byEpoch[this.byEpoch.length - 1];
    assert(!last || last.epoch <= epoch, 'epochs go backwards');
    if (!last || last.epoch !== epoch) {
      last = { epoch, regions: [] };
      this.byEpoch.push(last);
    }
    for (let r = start; r < end; r++) {
      this.awaiting.set(r, epoch);
      last.regions.push(r);
    }
  }

  /** Takes the resync lock on [start, end); resolves when no write is in flight there. */
  async lockForResync(start: number, end: number): Promise<void> {
    assert(!this.lock, 'resync lock already held');
    let release!: () => void;
    const unlocked = new Promise<void>((r) => (release = r));
    this.lock = { start, end, unlocked, release };
    if (this.inflightIn(start, end)) await new Promise<void>((r) => (this.drained = r));
  }

  unlock(): void {
    const l = this.lock;
    assert(l, 'unlock without lock');
    this.lock = null;
    this.drained = null;
    l.release();
  }

  /** The resync read [start, end) under the lock and queued it at `epoch`. */
  resyncQueued(start: number, end: number, epoch: number): void {
    this.resend.clearRange(start, end);
    this.queued(start, end, epoch);
  }

  private inflightIn(start: number, end: number): boolean {
    for (let r = start; r < end; r++) if (this.inflight.has(r)) return true;
    return false;
  }

  private checkDrained(): void {
    const l = this.lock;
    if (this.drained && l && !this.inflightIn(l.start, l.end)) {
      const d = this.drained;
      this.drained = null;
      d();
    }
  }

  /** The hub acked every record of epochs <= `epoch`: clears what may be cleared. */
  onAck(epoch: number): number {
    let cleared = 0;
    let i = 0;
    for (; i < this.byEpoch.length && this.byEpoch[i]!.epoch <= epoch; i++) {
      for (const r of this.byEpoch[i]!.regions) {
        const newest = this.awaiting.get(r);
        if (newest === undefined || newest > epoch) continue; // requeued later; a later ack decides
        this.awaiting.delete(r);
        if (!this.inflight.has(r) && !this.resend.isSet(r) && this.bitmap.isSet(r)) {
          this.bitmap.clear(r);
          cleared++;
        }
      }
    }
    if (i > 0) this.byEpoch = this.byEpoch.slice(i);
    return cleared;
  }

  /** The session ended: every unacked record's region must be resent. */
  onDisconnect(): void {
    for (const r of this.awaiting.keys()) this.resend.set(r);
    this.awaiting.clear();
    this.byEpoch = [];
  }

  /** FULL sync: every region differs from the hub until shipped. */
  markAllForResend(): void {
    this.bitmap.setAll();
    this.resend.setAll();
  }

  resendRuns(): RegionRun[] {
    return [...this.resend.extents()];
  }

  get resendBytes(): number {
    return this.resend.dirtyBytes();
  }

  get awaitingCount(): number {
    return this.awaiting.size;
  }

  get inflightCount(): number {
    return this.inflight.size;
  }
}
