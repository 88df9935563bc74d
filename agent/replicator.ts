/**
 * Replicator: the replication stream of one volume. Owns sequence numbers,
 * epochs and seals, the session lifecycle on top of HubLink (Welcome ->
 * ResyncBegin -> resync interleaved with live writes -> ResyncEnd + Seal),
 * ahead mode, Ack processing and AgentStatus. The ReplicationFilter calls
 * recordWrite()/seal()/waitDurable(); RegionState decides bits.
 *
 * Stream rules we keep (replication-spec.md):
 * - A live write gets its seq/epoch in recordWrite(), synchronously right
 *   after it completed locally, so stream order = local completion order; the
 *   reference log entry is written in the same step, before the send.
 * - Seal(E) on flush, FUA, and epochIntervalMs (<= 1 s) after the first record
 *   of an epoch; in sync mode on the next turn of the event loop.
 * - Outside a resync group every seal is a recovery point, so live payloads
 *   are either all sent or the stream stops being a prefix: on overflow we
 *   seal what was sent (a prefix of completion order), then open a resync
 *   group at once and drop payloads (bits -> resend) until the queue falls
 *   under half the bound ("ahead"). Inside a group dropping is harmless: the
 *   group ends only when resend is empty and nothing is being dropped.
 * - On disconnect nothing is replayed: awaiting regions go to resend, sync
 *   waiters resolve ('degrade') or fail ('fail-writes'); the next Welcome
 *   starts a new ResyncBegin that extends the hub's open group.
 * - A Welcome with sync mode 'failback' first hands the session to the
 *   failback participant (agent/failback.ts); when it finishes, the session
 *   goes on as a RESUME at the generation the failback adopted.
 */
import { EventEmitter } from 'node:events';
import { crc32c } from '../common/nvme-tcp/crc32c';
import { ReplError } from '../common/errors';
import { PROTOCOL_VERSION, SealReason, Welcome, WriteKind, WriteOrigin } from '../proto/codec';
import { HubLink } from './hub-link';
import { FailbackParticipant, ReplicationEvent, ReplicationStatus, ReplicatorOptions, ResyncProgress } from './replicator-types';
import { alignedBuffer } from '../common/block/direct-reader';
import { DEFAULT_MAX_READ_BYTES, DEFAULT_READS_IN_FLIGHT, ResyncPiece, runResync, TokenBucket } from './resync';

export type { AckMode, FailbackParticipant, LinkFailurePolicy, ReplicationEvent, ReplicationStatus, ReplicatorOptions, ResyncProgress } from './replicator-types';

/** Sequence/epoch numbers reserved in identity.json above what a session uses. */
const RESERVE = 1 << 24;
const DEFAULT_MAX_RECORD_BYTES = 1024 * 1024;
/** Bytes a resync may have queued or in the socket before it reads more. */
export const RESYNC_WINDOW_BYTES = 16 * 1024 * 1024;

interface Session {
  id: number;
  abort: AbortController;
  /** A resync group is open (ResyncBegin sent, ResyncEnd not yet). */
  groupOpen: boolean;
  /** ResyncBegin was sent: live writes may flow. */
  started: boolean;
}

export class Replicator extends EventEmitter<{ event: [ReplicationEvent] }> {
  readonly link: HubLink;
  private seq: number;
  private epoch: number;
  /** Records in the open epoch. */
  private epochRecords = 0;
  private lastAckedEpoch: number;
  private lastAckedSeq = 0;
  /** Epoch whose ack makes a bitmap save worthwhile (the end of a resync group). */
  private persistAfterEpoch: number | null = null;
  /** Newest live seq and its time (AgentStatus.ackedSeq). */
  private lastLiveSeq = 0;
  private lastLiveTimeMs = 0;
  private session: Session | null = null;
  private sessions = 0;
  private resyncs = 0;
  /** Payloads are being dropped (queue over bound, or no session). */
  private dropping = true;
  private sealTimer: NodeJS.Timeout | null = null;
  private sealSoon: NodeJS.Immediate | null = null;
  private statusTimer: NodeJS.Timeout | null = null;
  private syncWaiters: { epoch: number; resolve: () => void; reject: (e: unknown) => void }[] = [];
  private progress: ResyncProgress | null = null;
  private readonly maxRecord: number;
  private closed = false;
  private failback: FailbackParticipant | null = null;
  /** Resync read buffers for the bulk reader (allocated on first use, kept). */
  private bulkBuffers: Buffer[] | null = null;

  constructor(private readonly o: ReplicatorOptions) {
    super();
    const id = o.identity;
    this.seq = id.nextSeq;
    this.epoch = id.nextEpoch;
    this.lastAckedEpoch = id.durableEpoch;
    this.maxRecord = o.maxRecordBytes ?? DEFAULT_MAX_RECORD_BYTES;
    this.link = new HubLink({
      url: o.url,
      ca: o.ca,
      logger: o.logger,
      hello: () => ({
        protocolVersion: PROTOCOL_VERSION,
        agentId: o.agentId,
        volumeName: id.name,
        volumeUuid: id.uuid,
        volumeSize: o.device.info.size,
        blockSize: o.device.info.blockSize,
        regionSize: o.regions.bitmap.regionSize,
        generation: id.generation,
        durableEpoch: this.lastAckedEpoch,
        token: o.token ?? '',
        forceFullSync: o.forceFullSync ?? false,
        nextSeq: this.seq,
        nextEpoch: this.epoch,
      }),
      heartbeatIntervalMs: o.heartbeatIntervalMs,
      backoffPolicy: o.backoffPolicy,
      refuseBackoffMs: o.refuseBackoffMs,
      highWaterMark: o.highWaterMark,
    });
    const volume = id.name;
    this.link.on('state', (to, from, reason) => this.emitEvent({ type: 'state', volume, from, to, reason }));
    this.link.on('welcome', (w) => void this.onWelcome(w));
    this.link.on('ack', (a) => this.onAck(a.durableEpoch, a.durableSeq));
    this.link.on('down', (reason) => this.onDown(reason));
    this.link.on('drain', () => this.onDrain());
    this.link.on('refuse', (r) => this.emitEvent({ type: 'refused', volume, code: r.code, message: r.message }));
  }

  private emitEvent(e: ReplicationEvent): void {
    this.emit('event', e);
  }

  start(): void {
    this.link.start();
  }

  /** Wires the failback participant (agent.ts; it needs this.link, hence not a constructor option). */
  setFailback(participant: FailbackParticipant): void {
    this.failback = participant;
  }

  // ---- filter-facing API -------------------------------------------------

  /** False when a write could not be replicated now (for onLinkFailure 'fail-writes'). */
  canReplicate(): boolean {
    return this.session?.started === true && !this.dropping;
  }

  /**
   * A write completed locally: give its records stream positions (or drop the
   * payload). Returns the epoch holding them, or null when dropped. Synchronous.
   */
  recordWrite(offset: number, length: number, kind: WriteKind, data: Buffer | null): number | null {
    const s = this.session;
    const bytes = kind === 'data' ? length : 0;
    if (s?.started && !this.dropping && this.link.queuedBytes + bytes > this.o.queueBytes) this.enterAhead('send queue full');
    if (!s?.started || this.dropping) {
      this.o.referenceLog?.write(0, -1, offset, length, kind, data);
      return null;
    }
    const now = Date.now();
    const region = this.o.regions.bitmap.regionSize;
    const stop = offset + length;
    for (let pos = offset; pos < stop; ) {
      // pieces hold at most maxRecord bytes and end on a region boundary (or at the end)
      let end = Math.min(stop, pos + this.maxRecord);
      if (end < stop) end = Math.max((Math.floor(pos / region) + 1) * region, end - (end % region));
      const piece = kind === 'data' && data ? data.subarray(pos - offset, end - offset) : null;
      const seq = this.sendWrite(pos, end - pos, kind, 'live', piece, now);
      this.o.referenceLog?.write(seq, this.epoch, pos, end - pos, kind, piece);
      this.lastLiveSeq = seq;
      pos = end;
    }
    this.lastLiveTimeMs = now;
    this.armSeal();
    return this.epoch;
  }

  private sendWrite(offset: number, length: number, kind: WriteKind, origin: WriteOrigin, data: Buffer | null, timeMs: number): number {
    const seq = this.seq++;
    const payload = data ?? Buffer.alloc(0);
    this.link.send({
      type: 'write',
      write: { seq, epoch: this.epoch, offset, length, kind, origin, data: payload, crc32c: data ? crc32c(payload) : 0, timeMs },
    });
    this.epochRecords++;
    if (this.seq >= this.o.identity.nextSeq) this.reserve();
    return seq;
  }

  /** Closes the open epoch if it holds records (flush, FUA, timer, shutdown). */
  seal(reason: SealReason): number | null {
    this.clearSealTimers();
    const s = this.session;
    if (!s?.started || this.epochRecords === 0) return null;
    const epoch = this.epoch;
    this.link.send({ type: 'seal', seal: { epoch, lastSeq: this.seq - 1, timeMs: Date.now(), reason } });
    this.o.referenceLog?.seal(epoch, !s.groupOpen || reason === 'resync-end');
    this.epoch++;
    this.epochRecords = 0;
    if (this.epoch >= this.o.identity.nextEpoch) this.reserve();
    return epoch;
  }

  /** Sync mode: resolves when the hub acked `epoch` (or per onLinkFailure when the session ends). */
  waitDurable(epoch: number): Promise<void> {
    if (epoch <= this.lastAckedEpoch) return Promise.resolve();
    if (!this.sealSoon && !this.sealTimer) this.armSeal();
    return new Promise((resolve, reject) => this.syncWaiters.push({ epoch, resolve, reject }));
  }

  private armSeal(): void {
    if (this.o.ackMode === 'sync') {
      if (!this.sealSoon) this.sealSoon = setImmediate(() => ((this.sealSoon = null), this.seal('timer')));
    } else if (!this.sealTimer) {
      const ms = Math.min(this.o.epochIntervalMs ?? 20, 1000);
      this.sealTimer = setTimeout(() => ((this.sealTimer = null), this.seal('timer')), ms);
    }
  }

  private clearSealTimers(): void {
    if (this.sealTimer) clearTimeout(this.sealTimer);
    if (this.sealSoon) clearImmediate(this.sealSoon);
    this.sealTimer = null;
    this.sealSoon = null;
  }

  /** Persists a new seq/epoch ceiling so a crash can never reuse numbers. */
  private reserve(): void {
    const id = this.o.identity;
    id.nextSeq = this.seq + RESERVE;
    id.nextEpoch = this.epoch + RESERVE;
    this.o.identityStore.saveVolume(id);
  }

  // ---- session lifecycle -------------------------------------------------

  private async onWelcome(welcome: Welcome): Promise<void> {
    const s: Session = { id: ++this.sessions, abort: new AbortController(), groupOpen: false, started: false };
    this.session = s;
    const id = this.o.identity;
    let w = welcome;
    try {
      if (w.syncMode === 'failback') {
        if (!this.failback) throw ReplError.invalid('the hub asked for a failback but this replicator has no failback participant');
        this.emitEvent({ type: 'failback', volume: id.name, phase: 'start', generation: w.generation });
        const r = await this.failback.run(w, s.abort.signal);
        this.emitEvent({ type: 'failback', volume: id.name, phase: 'done', generation: r.generation });
        w = { ...w, syncMode: 'resume', generation: r.generation, durableEpoch: r.durableEpoch, durableSeq: r.durableSeq, resyncOpen: false };
      } else {
        await this.failback?.onNormalWelcome(w);
      }
      if (w.syncMode === 'full') {
        // bits first (stamped with the new generation), then identity: a crash in
        // between still resends everything (see identity.ts / bitmap-store.ts)
        this.o.regions.markAllForResend();
        id.generation = w.generation;
        await this.o.persistBitmap();
      }
      id.generation = w.generation;
      this.seq = Math.max(this.seq, w.durableSeq + 1);
      this.epoch = Math.max(this.epoch, w.durableEpoch + 1);
      this.epochRecords = 0;
      this.lastAckedEpoch = Math.max(this.lastAckedEpoch, w.durableEpoch);
      id.durableEpoch = this.lastAckedEpoch;
      this.reserve();
    } catch (err) {
      if (s.abort.signal.aborted) return; // the session ended under us (link down, agent stopping)
      this.o.logger.error({ err: (err as Error).message }, 'cannot start replication session');
      this.link.disconnect(`session start failed: ${(err as Error).message}`);
      return;
    }
    if (this.session !== s || !this.link.streaming) return;
    const full = w.syncMode === 'full';
    this.emitEvent({ type: 'connected', volume: id.name, generation: w.generation, syncMode: full ? 'full' : 'resume' });
    this.beginGroup(s, full);
    this.exitAhead('session started');
    this.statusTimer = setInterval(() => this.sendStatus(), this.o.statusIntervalMs ?? 500);
    this.sendStatus();
  }

  private beginGroup(s: Session, full: boolean): void {
    const resyncId = ++this.resyncs;
    const totalBytes = this.o.regions.resendBytes;
    this.link.send({ type: 'resyncBegin', resyncBegin: { resyncId, full, totalBytes } });
    s.groupOpen = true;
    s.started = true;
    this.progress = { active: true, full, resyncId, doneBytes: 0, totalBytes };
    this.emitEvent({ type: 'resync-start', volume: this.o.identity.name, resyncId, full, totalBytes });
    void this.driveResync(s, resyncId);
  }

  private async driveResync(s: Session, resyncId: number): Promise<void> {
    const bucket = new TokenBucket(this.o.resyncRate, Math.max(1024 * 1024, this.o.resyncRate / 10));
    try {
      for (;;) {
        await runResync({
          regions: this.o.regions,
          device: this.o.device,
          bulk: this.bulk(),
          bucket,
          signal: s.abort.signal,
          send: (p) => this.sendResyncPiece(s, p),
          // resync reads stay at most RESYNC_WINDOW_BYTES ahead of the socket: the
          // slabs they are encoded into get recycled warm, and live writes queued
          // behind them wait less (queueBytes bounds live overflow, not this)
          waitForRoom: (bytes, signal) => this.waitForRoom(bytes, signal, Math.min(this.o.queueBytes, RESYNC_WINDOW_BYTES)),
          onProgress: (bytes) => this.onResyncProgress(resyncId, bytes),
        });
        if (this.dropping) {
          // ahead inside the group: end it only once live payloads flow again
          await this.waitForRoom(this.o.queueBytes / 2, s.abort.signal);
          this.exitAhead('queue drained');
          continue;
        }
        if (this.o.regions.resendBytes === 0) break;
      }
      if (this.session !== s || s.abort.signal.aborted) return;
      this.endGroup(s, resyncId);
    } catch (err) {
      if (s.abort.signal.aborted || this.session !== s) return;
      this.o.logger.error({ err: (err as Error).message }, 'resync failed; restarting the session');
      this.link.disconnect(`resync failed: ${(err as Error).message}`);
    }
  }

  private bulk(): { reader: NonNullable<ReplicatorOptions['bulkReader']>; buffers: Buffer[] } | undefined {
    const reader = this.o.bulkReader;
    if (!reader) return undefined;
    if (!this.bulkBuffers) {
      const all = alignedBuffer(DEFAULT_READS_IN_FLIGHT * DEFAULT_MAX_READ_BYTES);
      this.bulkBuffers = Array.from({ length: DEFAULT_READS_IN_FLIGHT }, (_, i) =>
        all.subarray(i * DEFAULT_MAX_READ_BYTES, (i + 1) * DEFAULT_MAX_READ_BYTES),
      );
    }
    return { reader, buffers: this.bulkBuffers };
  }

  private sendResyncPiece(s: Session, p: ResyncPiece): number | null {
    if (this.session !== s || !this.link.streaming) return null;
    this.sendWrite(p.offset, p.length, p.kind, 'resync', p.data, Date.now());
    this.armSeal();
    return this.epoch;
  }

  /**
   * A region went to resend outside the stream (a failed local write): make
   * sure a resync group will ship it.
   */
  resendNeeded(): void {
    const s = this.session;
    if (s?.started && !s.groupOpen) {
      this.seal('timer');
      this.beginGroup(s, false);
    }
  }

  private endGroup(s: Session, resyncId: number): void {
    const epoch = this.epoch;
    this.link.send({ type: 'resyncEnd', resyncEnd: { resyncId, epoch } });
    this.epochRecords++; // the resync-end seal is sent even for an empty epoch
    s.groupOpen = false;
    this.seal('resync-end');
    // once this epoch is acked the group's bits are clear: save the bitmap then,
    // so a crash soon after a (full) resync does not resend what was just shipped
    this.persistAfterEpoch = epoch;
    if (this.progress) this.progress.active = false;
    this.emitEvent({ type: 'resync-end', volume: this.o.identity.name, resyncId, epoch });
  }

  private onResyncProgress(resyncId: number, bytes: number): void {
    const p = this.progress;
    if (!p || p.resyncId !== resyncId) return;
    p.doneBytes += bytes;
    p.totalBytes = Math.max(p.totalBytes, p.doneBytes + this.o.regions.resendBytes);
    this.emitEvent({ type: 'resync-progress', volume: this.o.identity.name, resyncId, doneBytes: p.doneBytes, totalBytes: p.totalBytes });
  }

  private waitForRoom(bytes: number, signal: AbortSignal, limit = this.o.queueBytes): Promise<void> {
    const fits = (): boolean => this.link.queuedBytes === 0 || this.link.queuedBytes + bytes <= limit;
    if (fits()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = (): void => {
        if (signal.aborted) return done(ReplError.closed('session'));
        if (fits()) done(null);
      };
      const done = (err: ReplError | null): void => {
        this.link.off('drain', check);
        signal.removeEventListener('abort', check);
        if (err) reject(err);
        else resolve();
      };
      this.link.on('drain', check);
      signal.addEventListener('abort', check);
    });
  }

  private enterAhead(reason: string): void {
    if (this.dropping) return;
    this.dropping = true;
    const s = this.session;
    if (s?.started && !s.groupOpen) {
      this.seal('timer'); // what was sent is a prefix of completion order: a valid point
      this.beginGroup(s, false);
    }
    this.o.logger.warn({ volume: this.o.identity.name, reason }, 'replication ahead: dropping payloads, tracking in the bitmap');
    this.emitEvent({ type: 'ahead', volume: this.o.identity.name, ahead: true, reason });
  }

  private exitAhead(reason: string): void {
    if (!this.dropping) return;
    this.dropping = false;
    this.emitEvent({ type: 'ahead', volume: this.o.identity.name, ahead: false, reason });
  }

  private onDrain(): void {
    const s = this.session;
    if (this.dropping && s?.started && this.link.queuedBytes <= this.o.queueBytes / 2) this.exitAhead('queue drained');
  }

  private onAck(epoch: number, seq: number): void {
    if (epoch < this.lastAckedEpoch) return;
    this.lastAckedEpoch = epoch;
    this.lastAckedSeq = Math.max(this.lastAckedSeq, seq);
    this.o.identity.durableEpoch = epoch;
    this.o.regions.onAck(epoch);
    if (this.persistAfterEpoch !== null && epoch >= this.persistAfterEpoch) {
      this.persistAfterEpoch = null;
      this.o.persistBitmap().catch((err: Error) => this.o.logger.error({ err: err.message }, 'bitmap save after resync failed'));
    }
    const keep: typeof this.syncWaiters = [];
    for (const w of this.syncWaiters) (w.epoch <= epoch ? w.resolve() : keep.push(w));
    this.syncWaiters = keep;
    this.emitEvent({ type: 'ack', volume: this.o.identity.name, epoch, seq, dirtyBytes: this.o.regions.bitmap.dirtyBytes() });
    if (this.link.queuedBytes === 0) this.sendStatus();
  }

  private onDown(reason: string): void {
    const s = this.session;
    this.session = null;
    s?.abort.abort();
    this.clearSealTimers();
    if (this.statusTimer) clearInterval(this.statusTimer);
    this.statusTimer = null;
    this.o.regions.onDisconnect();
    this.epochRecords = 0;
    this.epoch++; // never reuse a partly sent epoch number
    if (this.progress) this.progress.active = false;
    const waiters = this.syncWaiters.splice(0);
    for (const w of waiters) {
      if (this.o.onLinkFailure === 'fail-writes') w.reject(ReplError.io(`replication link lost (${reason})`));
      else w.resolve();
    }
    if (!this.dropping) {
      this.dropping = true;
      this.emitEvent({ type: 'ahead', volume: this.o.identity.name, ahead: true, reason: 'hub disconnected' });
    }
    this.emitEvent({ type: 'disconnect', volume: this.o.identity.name, reason });
  }

  private sendStatus(): void {
    if (!this.session?.started) return;
    const p = this.progress;
    this.link.send({
      type: 'status',
      status: {
        ackedSeq: this.lastLiveSeq,
        ackedTimeMs: this.lastLiveTimeMs,
        dirtyBytes: this.o.regions.bitmap.dirtyBytes(),
        queueBytes: this.link.queuedBytes,
        ahead: this.dropping,
        resyncDoneBytes: p?.active ? p.doneBytes : 0,
        resyncTotalBytes: p?.active ? p.totalBytes : 0,
      },
    });
  }

  status(): ReplicationStatus {
    const l = this.link.status();
    return {
      volume: this.o.identity.name,
      state: l.state,
      generation: this.o.identity.generation,
      dirtyBytes: this.o.regions.bitmap.dirtyBytes(),
      queueBytes: this.link.queuedBytes,
      lastAckedEpoch: this.lastAckedEpoch,
      lastAckedSeq: this.lastAckedSeq,
      reconnects: l.reconnects,
      ahead: this.dropping,
      resync: this.progress ? { ...this.progress } : null,
      refused: l.lastRefuse ? { code: l.lastRefuse.code, message: l.lastRefuse.message, atMs: l.lastRefuse.atMs } : null,
      lastError: l.lastError,
    };
  }

  /**
   * Clean stop (after the filter drained): seal what is open, give the hub a
   * moment to ack it (fewer bits to resend next time), say goodbye, close the
   * link and persist counters. Bits not acked stay set in the bitmap.
   */
  async close(ackWaitMs = 2000): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const epoch = this.seal('shutdown');
    if (epoch !== null && this.link.streaming) {
      await Promise.race([this.waitDurable(epoch).catch(() => undefined), new Promise((r) => setTimeout(r, ackWaitMs).unref())]);
    }
    this.link.send({ type: 'goodbye', goodbye: { reason: 'agent stopping' } });
    this.clearSealTimers();
    await this.link.close();
    const id = this.o.identity;
    id.nextSeq = this.seq;
    id.nextEpoch = this.epoch;
    id.durableEpoch = this.lastAckedEpoch;
    this.o.identityStore.saveVolume(id);
    for (const w of this.syncWaiters.splice(0)) w.resolve();
  }
}

