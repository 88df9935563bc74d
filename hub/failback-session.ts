/**
 * FailbackShipper: the hub side of one failback attempt on one agent session
 * (replication.proto "failback"); hub/failback.ts owns the state and commits.
 *
 *   FailbackDirty*(last) -> union(recovery-side changes, replica records after
 *   the failover point, agent dirty set) -> FailbackBegin -> FailbackData* read
 *   from the frozen failover view (all-zero pieces as 'zeroes', no payload),
 *   at most WINDOW_BYTES ahead of the agent's FailbackAck -> FailbackEnd{G} ->
 *   FailbackApplied{G} -> host.commit (replica := recovery volume, unfenced,
 *   view retired) -> FailbackDone{G} -> the session streams normally.
 *
 * Any violation by the agent throws (the session closes with 4000 and the
 * attempt ends 'agent-gone': the agent reconnects and starts over); a failure
 * of our own (reading the view, the commit) ends it 'failed'.
 */
import { BlockDevice } from '../common/block/device';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { crc32c } from '../common/nvme-tcp/crc32c';
import { AgentFailbackMessage, FailbackApplied, FailbackDirty, Hello, HubMessage } from '../proto/codec';
import { CloseCode } from './close-codes';
import { ByteRange, isAllZero, mergeRanges, pieces, rangeBytes } from './failback-plan';

export const WINDOW_BYTES = 32 * 1024 * 1024;
export const MAX_PIECE_BYTES = 1024 * 1024;

/** What the shipper needs from its AgentSession. */
export interface FailbackSessionLink {
  readonly hello: Hello | null;
  send(m: HubMessage): void;
  /** Failback finished: the session streams like a RESUME session from now on. */
  endFailback(): void;
  close(code: number, reason: string): void;
}

/** What the shipper needs from the FailbackManager. */
export interface ShipperHost {
  /** Freezes the failover view and returns what to read and what the hub already knows changed. */
  prepare(volume: string): Promise<{ source: BlockDevice; hubRanges: ByteRange[]; changedBytes: number; hubAheadBytes: number }>;
  progress(volume: string, patch: { agentDirtyBytes?: number; shippedBytes?: number; changedBytes?: number; hubAheadBytes?: number }): void;
  /** Generation to resume at, above the hub's and the agent's. */
  nextGeneration(volume: string, agentGeneration: number): Promise<number>;
  /** Replica := recovery volume, fence lifted, view retired (persisted); the caller then sends FailbackDone. */
  commit(volume: string, generation: number): Promise<{ durableEpoch: number; durableSeq: number }>;
  /** The attempt is over without success. */
  ended(volume: string, shipper: FailbackShipper, outcome: 'agent-gone' | 'failed', reason: string): void;
  /** Success: FailbackDone was sent. */
  finished(volume: string, shipper: FailbackShipper): void;
}

type Phase = 'dirty' | 'shipping' | 'applying' | 'committing' | 'over';

export class FailbackShipper {
  private phase: Phase = 'dirty';
  private readonly dirty: ByteRange[] = [];
  private readonly maxDirtyRanges: number;
  private sent = 0;
  private acked = 0;
  private generation = 0;
  private roomWaiter: (() => void) | null = null;

  constructor(
    private readonly volume: string,
    private readonly size: number,
    private readonly session: FailbackSessionLink,
    private readonly host: ShipperHost,
    private readonly logger: Logger,
  ) {
    const region = session.hello?.regionSize ?? 4096;
    this.maxDirtyRanges = Math.ceil(size / region) + 1;
  }

  /** Feeds one failback message of the agent (throws on a protocol violation). */
  onMessage(msg: AgentFailbackMessage): void {
    switch (msg.type) {
      case 'failbackDirty':
        return this.onDirty(msg.failbackDirty);
      case 'failbackAck':
        if (this.phase !== 'shipping' && this.phase !== 'applying') throw ReplError.protocol('FailbackAck outside shipping');
        if (msg.failbackAck.appliedBytes > this.sent) throw ReplError.protocol('FailbackAck beyond what was shipped');
        this.acked = Math.max(this.acked, msg.failbackAck.appliedBytes);
        this.wake();
        return;
      case 'failbackApplied':
        return this.onApplied(msg.failbackApplied);
    }
  }

  /** The session ended. */
  onClosed(reason: string): void {
    const was = this.phase;
    if (was === 'over') return;
    this.wake();
    if (was === 'committing') return; // the commit is the hub's own work: it finishes regardless
    this.phase = 'over';
    this.host.ended(this.volume, this, 'agent-gone', reason);
  }

  private onDirty(d: FailbackDirty): void {
    if (this.phase !== 'dirty') throw ReplError.protocol('FailbackDirty after the dirty set was complete');
    if (this.dirty.length + d.ranges.length > this.maxDirtyRanges) throw ReplError.protocol('failback dirty set has too many ranges');
    for (const r of d.ranges) {
      if (r.length === 0 || r.offset + r.length > this.size) throw ReplError.protocol(`failback dirty range ${r.offset}+${r.length} outside the volume`);
      this.dirty.push(r);
    }
    if (!d.last) return;
    this.phase = 'shipping';
    this.ship().catch((err: unknown) => this.fail(err));
  }

  private async ship(): Promise<void> {
    const prep = await this.host.prepare(this.volume);
    const agentDirty = mergeRanges([this.dirty], this.size);
    const ranges = mergeRanges([prep.hubRanges, agentDirty], this.size);
    const totalBytes = rangeBytes(ranges);
    this.host.progress(this.volume, {
      agentDirtyBytes: rangeBytes(agentDirty),
      changedBytes: prep.changedBytes,
      hubAheadBytes: prep.hubAheadBytes,
      shippedBytes: 0,
    });
    this.logger.info({ totalBytes, ranges: ranges.length, changedBytes: prep.changedBytes, agentDirtyBytes: rangeBytes(agentDirty) }, 'failback: shipping the delta');
    this.session.send({ type: 'failbackBegin', failbackBegin: { totalBytes } });
    for (const p of pieces(ranges, MAX_PIECE_BYTES)) {
      await this.room(p.length);
      if (this.phase !== 'shipping') return;
      const data = await prep.source.read(p.offset, p.length);
      if (this.phase !== 'shipping') return;
      const zero = isAllZero(data);
      this.session.send({
        type: 'failbackData',
        failbackData: zero
          ? { offset: p.offset, length: p.length, kind: 'zeroes', data: Buffer.alloc(0), crc32c: 0 }
          : { offset: p.offset, length: p.length, kind: 'data', data, crc32c: crc32c(data) },
      });
      this.sent += p.length;
      this.host.progress(this.volume, { shippedBytes: this.sent });
    }
    const agentGeneration = this.session.hello?.generation ?? 0;
    this.generation = await this.host.nextGeneration(this.volume, agentGeneration);
    if (this.phase !== 'shipping') return;
    this.phase = 'applying';
    this.session.send({ type: 'failbackEnd', failbackEnd: { generation: this.generation, shippedBytes: this.sent } });
  }

  private room(bytes: number): Promise<void> {
    const fits = (): boolean => this.phase !== 'shipping' || this.sent === this.acked || this.sent - this.acked + bytes <= WINDOW_BYTES;
    if (fits()) return Promise.resolve();
    return new Promise<void>((resolve) => {
      this.roomWaiter = () => {
        if (!fits()) return;
        this.roomWaiter = null;
        resolve();
      };
    });
  }

  private wake(): void {
    this.roomWaiter?.();
  }

  private onApplied(a: FailbackApplied): void {
    if (this.phase !== 'applying') throw ReplError.protocol('FailbackApplied before FailbackEnd');
    if (a.generation !== this.generation || a.appliedBytes !== this.sent) {
      throw ReplError.protocol(`FailbackApplied{generation ${a.generation}, ${a.appliedBytes} bytes} does not match ${this.generation}, ${this.sent}`);
    }
    this.phase = 'committing';
    this.host
      .commit(this.volume, this.generation)
      .then((durable) => {
        if (this.phase !== 'committing') return;
        this.phase = 'over';
        this.session.send({ type: 'failbackDone', failbackDone: { generation: this.generation, ...durable } });
        this.session.endFailback();
        this.host.finished(this.volume, this);
      })
      .catch((err: unknown) => this.fail(err));
  }

  private fail(err: unknown): void {
    if (this.phase === 'over') return;
    this.phase = 'over';
    this.wake();
    const e = asReplError(err);
    this.logger.error({ err: e.message }, 'failback attempt failed');
    this.host.ended(this.volume, this, 'failed', e.message);
    this.session.close(CloseCode.INTERNAL, `failback failed: ${e.message}`);
  }
}
