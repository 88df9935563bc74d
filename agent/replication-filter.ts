/**
 * ReplicationFilter: a BlockDevice over `next` that tracks and streams every
 * mutating call. It observes data and never changes it.
 *
 * Order of one mutating call (write, writeZeroes, trim all go through the one
 * private trackWrite; style rule 4, DRBD al_begin_io/al_complete_io):
 *   beginWrite:    wait while a resync holds the regions; set the regions'
 *                  bits in memory (+ in-flight count); make the 4 MiB activity
 *                  extents durably hot (no I/O if hot, else wait for the next
 *                  group commit of the activity log)
 *   forward:       next.write / writeZeroes / trim
 *   completeWrite: give the records stream positions (seq, epoch) or drop the
 *                  payload (ahead) -> RegionState learns which -> in-flight
 *                  count falls; FUA seals the epoch
 *   acknowledge:   async mode at once; sync mode once the hub acked the epoch
 * A bit is cleared only by an Ack covering every record on its region
 * (region-state.ts). A failed forward leaves the regions marked for resend.
 *
 * flush(): next.flush(), then seal the epoch (reason 'flush').
 * onLinkFailure 'fail-writes': a write that cannot be replicated now fails
 * before it touches the volume; 'degrade' (default) writes locally and keeps
 * the bits.
 *
 * Failback pause (agent/failback.ts): pause() holds every new initiator call
 * (reads, writes, flushes: the volume is being rolled back underneath) in a
 * queue of promises and resolves once the calls already running have
 * finished; resume() lets the held calls run in arrival order. The front ends
 * just see a slow device (an NVMe host retries a command that times out).
 * drain() releases held calls, which then fail as closed.
 */
import { BlockDevice, DeviceInfo, Extent, WriteOptions, checkRange } from '../common/block/device';
import { ReplError } from '../common/errors';
import { WriteKind } from '../proto/codec';
import { ActivityLog } from './activity-log';
import { RegionState } from './region-state';

/** The part of the Replicator the filter uses (a fake in unit tests). */
export interface ReplicationSink {
  canReplicate(): boolean;
  recordWrite(offset: number, length: number, kind: WriteKind, data: Buffer | null): number | null;
  seal(reason: 'flush' | 'fua'): number | null;
  waitDurable(epoch: number): Promise<void>;
  resendNeeded(): void;
}

/** The part of the ActivityLog the filter uses. */
export type HotExtents = Pick<ActivityLog, 'ensureHot'>;

export interface ReplicationFilterOptions {
  mode: 'async' | 'sync';
  onLinkFailure: 'degrade' | 'fail-writes';
}

export class ReplicationFilter implements BlockDevice {
  readonly info: DeviceInfo;
  /** Mutating calls between entry and acknowledgement (drained by close()). */
  private readonly inflight = new Set<Promise<unknown>>();
  private closing: Promise<void> | null = null;
  /** Set while paused for failback: new calls wait for `released`. */
  private held: { released: Promise<void>; release: () => void } | null = null;
  /** Reads running (pause waits for them as well). */
  private reads = 0;
  private readsIdle: (() => void) | null = null;

  constructor(
    readonly next: BlockDevice,
    private readonly regions: RegionState,
    private readonly activity: HotExtents,
    private readonly sink: ReplicationSink,
    private readonly options: ReplicationFilterOptions = { mode: 'async', onLinkFailure: 'degrade' },
  ) {
    this.info = next.info;
  }

  read(offset: number, length: number): Promise<Buffer> {
    if (this.held) return this.held.released.then(() => this.read(offset, length));
    this.reads++;
    const op = this.next.read(offset, length);
    const done = (): void => {
      if (--this.reads === 0 && this.readsIdle) this.readsIdle();
    };
    op.then(done, done);
    return op;
  }

  /** True while initiator I/O is held for failback. */
  get paused(): boolean {
    return this.held !== null;
  }

  /** Holds new initiator calls; resolves when none is running any more. */
  async pause(): Promise<void> {
    if (!this.held) {
      let release!: () => void;
      const released = new Promise<void>((r) => (release = r));
      this.held = { released, release };
    }
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
    if (this.reads > 0) await new Promise<void>((r) => (this.readsIdle = r));
    this.readsIdle = null;
  }

  /** Lets held and new calls run again. */
  resume(): void {
    const h = this.held;
    this.held = null;
    h?.release();
  }

  write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    return this.trackWrite(offset, data.length, 'data', data, () => this.next.write(offset, data, options), options);
  }

  writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.trackWrite(offset, length, 'zeroes', null, () => this.next.writeZeroes(offset, length, options), options);
  }

  trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    return this.trackWrite(offset, length, 'trim', null, () => this.next.trim(offset, length, options), options);
  }

  async flush(): Promise<void> {
    while (this.held) await this.held.released;
    if (this.closing) throw ReplError.closed('replication filter');
    await this.next.flush();
    this.sink.seal('flush');
  }

  extents(offset: number, length: number): Promise<Extent[]> {
    if (this.held) return this.held.released.then(() => this.extents(offset, length));
    if (this.next.extents) return this.next.extents(offset, length);
    return Promise.resolve([{ offset, length, zero: false, hole: false }]);
  }

  private trackWrite(
    offset: number,
    length: number,
    kind: WriteKind,
    payload: Buffer | null,
    forward: () => Promise<void>,
    options?: WriteOptions,
  ): Promise<void> {
    if (this.closing) return Promise.reject(ReplError.closed('replication filter'));
    if (this.held) return this.held.released.then(() => this.trackWrite(offset, length, kind, payload, forward, options));
    const op = this.runWrite(offset, length, kind, payload, forward, options);
    this.inflight.add(op);
    const done = (): void => void this.inflight.delete(op);
    op.then(done, done);
    return op;
  }

  private async runWrite(
    offset: number,
    length: number,
    kind: WriteKind,
    payload: Buffer | null,
    forward: () => Promise<void>,
    options?: WriteOptions,
  ): Promise<void> {
    checkRange(this.info, offset, length);
    if (length === 0) return forward();
    if (this.options.onLinkFailure === 'fail-writes' && !this.sink.canReplicate()) {
      throw ReplError.io('replication link is down and onLinkFailure is fail-writes');
    }
    const { start, end } = this.regions.bitmap.regionsOf(offset, length);
    await this.beginWrite(offset, length, start, end);
    try {
      await forward();
    } catch (err) {
      this.regions.failWrite(start, end);
      this.sink.resendNeeded();
      throw err;
    }
    const epoch = this.completeWrite(offset, length, start, end, kind, payload, options?.fua === true);
    if (this.options.mode === 'sync' && epoch !== null) await this.sink.waitDurable(epoch);
  }

  private async beginWrite(offset: number, length: number, start: number, end: number): Promise<void> {
    for (let wait = this.regions.waitUnlocked(start, end); wait; wait = this.regions.waitUnlocked(start, end)) await wait;
    this.regions.beginWrite(start, end);
    const hot = this.activity.ensureHot(offset, length);
    if (hot) {
      try {
        await hot;
      } catch (err) {
        this.regions.failWrite(start, end);
        throw err;
      }
    }
  }

  private completeWrite(
    offset: number,
    length: number,
    start: number,
    end: number,
    kind: WriteKind,
    payload: Buffer | null,
    fua: boolean,
  ): number | null {
    const epoch = this.sink.recordWrite(offset, length, kind, payload);
    this.regions.completeWrite(start, end, epoch);
    if (fua) this.sink.seal('fua');
    return epoch;
  }

  /** Stops accepting mutating calls and waits for those in flight. */
  async drain(): Promise<void> {
    if (!this.closing) this.closing = Promise.resolve();
    this.resume(); // held calls fail as closed
    while (this.inflight.size > 0) await Promise.allSettled([...this.inflight]);
  }

  /** Drains, then closes `next` (the composition root persists metadata in between; see agent.ts). */
  async close(): Promise<void> {
    await this.drain();
    await this.next.close();
  }
}
