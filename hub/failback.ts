/**
 * FailbackManager: failback of the delta after a failover (recovery-api.md
 * POST/GET /v1/volumes/NAME/failback). One record per volume, persisted in
 * <dataDir>/failback/<volume>.json (failback-plan.ts):
 *
 *   POST ─▶ waiting-for-agent ──Hello (same agent id + uuid)──▶ shipping
 *              ▲        Welcome{failback}; FailbackShipper (failback-session.ts)
 *              └──── agent gone / violation ──────────────────────┤
 *                                                                 ▼ FailbackApplied
 *   failed ◀── our own error (view unreadable, commit) ───────── resuming ──▶ done
 *
 * While waiting, the volume stays fenced: a Hello of another agent or uuid is
 * refused 'failed-over'; the recovery side keeps running on the failover view.
 * At shipping the view is frozen (exports removed, overlay flushed): what
 * ships is final. Commit ('resuming', the hub's own steps, redone from the
 * start by open() after a crash):
 *   1. replica := recovery volume: one staged resync group appended to the
 *      journal (ResyncBegin, the view's content for every range the overlay
 *      changed or the replica received after the failover point, ResyncEnd{E},
 *      Seal{E}); its Seal is the first recovery point of the new generation
 *      and equals the view. Redoing it after a crash just extends the group.
 *   2. volume.json: generation G (the one the agent adopted), fence lifted;
 *   3. record 'done' persisted; 4. the failover view discarded.
 * Only then FailbackDone goes to the agent, whose initiator I/O was held from
 * the failback Welcome until then, and the session streams on as a RESUME.
 */
import { BlockDevice } from '../common/block/device';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { crc32c } from '../common/nvme-tcp/crc32c';
import {
  ByteRange,
  FailbackJson,
  FailbackRecord,
  failbackJson,
  isAllZero,
  mergeRanges,
  pieces,
  rangeBytes,
  readFailbackRecords,
  writeFailbackRecord,
} from './failback-plan';
import { FailbackSessionLink, FailbackShipper, MAX_PIECE_BYTES, ShipperHost } from './failback-session';
import { Overlay } from './overlay';
import { RecoveryPoint, ReplicaStore } from './replica-store';
import { RouteHandler } from './server';
import { VolumeRegistry } from './volumes';

/** The part of the ViewManager (views.ts) failback uses. */
export interface FailbackViews {
  failoverViewOf(volume: string): string | null;
  device(id: string): BlockDevice;
  overlay(id: string): Overlay | null;
  pointOf(id: string): RecoveryPoint;
  freeze(id: string): Promise<void>;
  thaw(id: string): void;
  discard(id: string, opts: { allowFailover?: boolean }): Promise<unknown>;
}

export interface FailbackManagerOptions {
  dataDir: string;
  volumes: VolumeRegistry;
  views: FailbackViews;
  logger: Logger;
}

/** resync id of the hub's own group (agents count theirs from 1 per process). */
const FAILBACK_RESYNC_ID = 0;
/** Journal appends in flight during the commit (memory bound). */
const COMMIT_BATCH_BYTES = 16 * 1024 * 1024;

export class FailbackManager implements ShipperHost {
  private readonly records = new Map<string, FailbackRecord>();
  private readonly shippers = new Map<string, FailbackShipper>();
  private readonly writes = new Map<string, Promise<void>>();
  private readonly logger: Logger;
  private closed = false;

  constructor(private readonly o: FailbackManagerOptions) {
    this.logger = o.logger.child({ component: 'failback' });
  }

  /** Loads the records; finishes interrupted commits (before the listeners open: no agent can interfere). */
  async open(): Promise<void> {
    const records = await readFailbackRecords(this.o.dataDir, (file, err) =>
      this.logger.error({ file, err: err.message }, 'failback record unreadable; ignored'),
    );
    for (const rec of records) {
      this.records.set(rec.volume, rec);
      try {
        if (rec.state === 'resuming') {
          this.logger.warn({ volume: rec.volume }, 'finishing an interrupted failback commit');
          await this.finish(rec);
          rec.state = 'done';
          rec.finishedMs = Date.now();
        } else if (rec.state === 'shipping') {
          rec.state = 'waiting-for-agent';
          await this.persist(rec);
        } else if (rec.state === 'done' && this.o.views.failoverViewOf(rec.volume) === rec.viewId) {
          await this.o.views.discard(rec.viewId, { allowFailover: true }); // crash between steps 3 and 4
        }
      } catch (err) {
        await this.markFailed(rec, asReplError(err).message);
      }
    }
  }

  // ---- API ------------------------------------------------------------------

  /** POST: starts a failback, or returns the one running. */
  async start(volume: string): Promise<FailbackJson> {
    if (this.closed) throw ReplError.closed('failback');
    const store = this.o.volumes.store(volume);
    if (!store) throw new ReplError('E_NOT_FOUND', `unknown volume ${volume}`);
    const running = this.records.get(volume);
    if (running && (running.state === 'waiting-for-agent' || running.state === 'shipping' || running.state === 'resuming')) {
      return failbackJson(running);
    }
    const viewId = this.o.views.failoverViewOf(volume);
    if (!store.meta.flags.failedOver || !viewId) {
      throw new ReplError('E_BUSY', `volume ${volume} is not failed over: there is nothing to fail back`);
    }
    const rec: FailbackRecord = {
      format: 1,
      volume,
      viewId,
      state: 'waiting-for-agent',
      startedMs: Date.now(),
      finishedMs: null,
      changedBytes: this.o.views.overlay(viewId)?.changedBytes() ?? 0,
      agentDirtyBytes: 0,
      hubAheadBytes: 0,
      shippedBytes: 0,
      volumeSize: store.meta.size,
      generation: 0,
      attempts: 0,
      error: null,
    };
    await this.persist(rec);
    this.records.set(volume, rec);
    this.logger.warn({ volume, view: viewId }, 'failback requested: waiting for the protected side');
    return failbackJson(rec);
  }

  /** GET: the running or last failback of `volume`. */
  get(volume: string): FailbackJson {
    const rec = this.records.get(volume);
    if (!rec) {
      if (!this.o.volumes.store(volume)) throw new ReplError('E_NOT_FOUND', `unknown volume ${volume}`);
      throw new ReplError('E_NOT_FOUND', `volume ${volume} has no failback`);
    }
    if (rec.state === 'waiting-for-agent' && this.o.views.failoverViewOf(volume) === rec.viewId) {
      rec.changedBytes = this.o.views.overlay(rec.viewId)?.changedBytes() ?? rec.changedBytes;
    }
    return failbackJson(rec);
  }

  // ---- admission (volumes.ts) ----------------------------------------------------

  /** A failback waits for this volume's agent (fencing.ts then welcomes it with sync mode failback). */
  pending(volume: string): boolean {
    return this.records.get(volume)?.state === 'waiting-for-agent' && !this.shippers.has(volume) && !this.closed;
  }

  /** The agent was welcomed in failback mode: the session's driver. */
  attach(volume: string, session: FailbackSessionLink): FailbackShipper {
    const rec = this.records.get(volume);
    const store = this.o.volumes.store(volume);
    if (!rec || !store) throw ReplError.internal(`failback attach without a record for ${volume}`);
    const shipper = new FailbackShipper(volume, store.meta.size, session, this, this.logger.child({ volume }));
    this.shippers.set(volume, shipper);
    rec.state = 'shipping';
    rec.attempts++;
    rec.error = null;
    void this.persist(rec).catch((err: unknown) => this.logger.error({ volume, err: asReplError(err).message }, 'cannot persist failback state'));
    return shipper;
  }

  // ---- ShipperHost -------------------------------------------------------------

  async prepare(volume: string): Promise<{ source: BlockDevice; hubRanges: ByteRange[]; changedBytes: number; hubAheadBytes: number }> {
    const rec = this.require(volume);
    await this.o.views.freeze(rec.viewId);
    const store = this.o.volumes.store(volume)!;
    const overlay = this.o.views.overlay(rec.viewId);
    const changed = overlay ? mergeRanges([overlay.changedRanges()], store.meta.size) : [];
    const ahead = mergeRanges([store.rangesAfter(this.o.views.pointOf(rec.viewId).position)], store.meta.size);
    return {
      source: this.o.views.device(rec.viewId),
      hubRanges: mergeRanges([changed, ahead], store.meta.size),
      changedBytes: rangeBytes(changed),
      hubAheadBytes: rangeBytes(ahead),
    };
  }

  progress(volume: string, patch: Partial<Pick<FailbackRecord, 'agentDirtyBytes' | 'shippedBytes' | 'changedBytes' | 'hubAheadBytes'>>): void {
    Object.assign(this.require(volume), patch);
  }

  async nextGeneration(volume: string, agentGeneration: number): Promise<number> {
    const rec = this.require(volume);
    const store = this.o.volumes.store(volume)!;
    rec.generation = Math.max(store.meta.generation, agentGeneration, rec.generation) + 1;
    await this.persist(rec);
    return rec.generation;
  }

  async commit(volume: string, generation: number): Promise<{ durableEpoch: number; durableSeq: number }> {
    const rec = this.require(volume);
    if (rec.generation !== generation) throw ReplError.internal(`failback commit at generation ${generation}, record says ${rec.generation}`);
    return this.finish(rec);
  }

  ended(volume: string, shipper: FailbackShipper, outcome: 'agent-gone' | 'failed', reason: string): void {
    if (this.shippers.get(volume) !== shipper) return;
    this.shippers.delete(volume);
    const rec = this.records.get(volume);
    if (!rec || rec.state === 'done') return;
    if (outcome === 'failed') {
      void this.markFailed(rec, reason);
      return;
    }
    if (rec.state === 'shipping') {
      this.logger.warn({ volume, reason }, 'failback: agent gone; waiting for it to come back');
      rec.state = 'waiting-for-agent';
      rec.error = `last attempt: ${reason}`;
      void this.persist(rec).catch(() => undefined);
    }
  }

  finished(volume: string, shipper: FailbackShipper): void {
    if (this.shippers.get(volume) === shipper) this.shippers.delete(volume);
    const rec = this.records.get(volume);
    if (!rec) return;
    rec.state = 'done';
    rec.finishedMs = Date.now();
    rec.error = null;
    this.logger.warn({ volume, generation: rec.generation, shippedBytes: rec.shippedBytes, volumeSize: rec.volumeSize }, 'failback done: replication resumed');
  }

  // ---- commit ----------------------------------------------------------------------

  /** Steps 1..4 of the file header; idempotent (open() redoes it after a crash). */
  private async finish(rec: FailbackRecord): Promise<{ durableEpoch: number; durableSeq: number }> {
    rec.state = 'resuming';
    await this.persist(rec);
    const store = this.o.volumes.store(rec.volume);
    if (!store) throw new ReplError('E_NOT_FOUND', `volume ${rec.volume} is gone`);
    if (store.meta.flags.failedOver) {
      if (this.o.views.failoverViewOf(rec.volume) !== rec.viewId) throw new ReplError('E_NOT_FOUND', `failover view ${rec.viewId} is gone`);
      await this.rebase(store, rec.viewId);
      await store.updateMeta({ generation: rec.generation, flags: { failedOver: false } });
    }
    await this.persist(rec, { state: 'done', finishedMs: Date.now() });
    if (this.o.views.failoverViewOf(rec.volume) === rec.viewId) await this.o.views.discard(rec.viewId, { allowFailover: true });
    return { durableEpoch: store.durableEpoch, durableSeq: store.durableSeq };
  }

  /** Appends the staged group that makes the replica's newest point equal the failover view. */
  private async rebase(store: ReplicaStore, viewId: string): Promise<void> {
    const size = store.meta.size;
    const overlay = this.o.views.overlay(viewId);
    const ranges = mergeRanges(
      [overlay ? overlay.changedRanges() : [], store.rangesAfter(this.o.views.pointOf(viewId).position)],
      size,
    );
    const source = this.o.views.device(viewId);
    const now = Date.now();
    const epoch = store.durableEpoch + 1;
    let seq = store.durableSeq + 1;
    await store.appendResyncBegin({ resyncId: FAILBACK_RESYNC_ID, full: false, totalBytes: rangeBytes(ranges) }, now);
    let batch: Promise<void>[] = [];
    let batchBytes = 0;
    for (const p of pieces(ranges, MAX_PIECE_BYTES)) {
      const data = await source.read(p.offset, p.length);
      const zero = isAllZero(data);
      const crc = zero ? 0 : crc32c(data);
      batch.push(
        store.appendWrite(
          { seq: seq++, epoch, offset: p.offset, length: p.length, kind: zero ? 'zeroes' : 'data', origin: 'resync', data: zero ? Buffer.alloc(0) : data, crc32c: crc, timeMs: now },
          zero ? undefined : crc,
        ),
      );
      batchBytes += zero ? 0 : p.length;
      if (batchBytes >= COMMIT_BATCH_BYTES) {
        await Promise.all(batch);
        batch = [];
        batchBytes = 0;
      }
    }
    batch.push(store.appendResyncEnd({ resyncId: FAILBACK_RESYNC_ID, epoch }, now));
    batch.push(store.appendSeal({ epoch, lastSeq: seq - 1, timeMs: now, reason: 'resync-end' }));
    await Promise.all(batch);
    if (store.group !== null) throw ReplError.internal(`failback group of ${store.meta.name} did not complete`);
    this.logger.info({ volume: store.meta.name, epoch, bytes: rangeBytes(ranges) }, 'failback: replica rebased on the recovery volume');
  }

  // ---- helpers ---------------------------------------------------------------------

  private require(volume: string): FailbackRecord {
    const rec = this.records.get(volume);
    if (!rec) throw ReplError.internal(`no failback record for ${volume}`);
    return rec;
  }

  /** Writes a snapshot of `rec` (+ patch); writes of one volume are serialised (they share a tmp file). */
  private persist(rec: FailbackRecord, patch: Partial<FailbackRecord> = {}): Promise<void> {
    const snapshot = { ...rec, ...patch };
    const prev = this.writes.get(rec.volume) ?? Promise.resolve();
    const next = prev.catch(() => undefined).then(() => writeFailbackRecord(this.o.dataDir, snapshot));
    this.writes.set(rec.volume, next);
    return next;
  }

  private async markFailed(rec: FailbackRecord, reason: string): Promise<void> {
    rec.state = 'failed';
    rec.error = reason;
    rec.finishedMs = Date.now();
    this.logger.error({ volume: rec.volume, err: reason }, 'failback failed; the failover view is served again');
    if (this.o.views.failoverViewOf(rec.volume) === rec.viewId) {
      try {
        this.o.views.thaw(rec.viewId);
      } catch (err) {
        this.logger.error({ volume: rec.volume, err: asReplError(err).message }, 'cannot re-export the failover view');
      }
    }
    await this.persist(rec).catch((err: unknown) => this.logger.error({ err: asReplError(err).message }, 'cannot persist failback state'));
  }

  /** Hub stop: no new attempts (running sessions are closed by the hub and end 'agent-gone'). */
  close(): void {
    this.closed = true;
  }
}

type Router = { route(method: string, pattern: RegExp, handler: RouteHandler): void };

/** POST/GET /v1/volumes/NAME/failback (recovery-api.md). */
export function registerFailbackRoutes(router: Router, manager: FailbackManager): void {
  const name = (m: RegExpMatchArray): string => {
    try {
      return decodeURIComponent(m[1]!);
    } catch {
      throw ReplError.invalid('malformed percent-encoding in path');
    }
  };
  router.route('POST', /^\/v1\/volumes\/([^/]+)\/failback$/, async (_req, m) => ({ status: 202, body: await manager.start(name(m)) }));
  router.route('GET', /^\/v1\/volumes\/([^/]+)\/failback$/, (_req, m) => ({ status: 200, body: manager.get(name(m)) }));
}
