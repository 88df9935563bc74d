/**
 * ViewManager: the hub's recovery views (test views and failover views), each
 *
 *   RecoveryVolume.atPoint(store, point)   read-only, pins the point, no copy
 *        └─ Overlay (persistent, <dataDir>/views/<id>/)   unless readOnly
 *             ├─ NBD export   name = view id
 *             └─ NVMe subsystem  nqn.2024-01.io.blockrep:view:<id>, nsid 1
 *
 * Creating a view copies nothing: the overlay is an empty sparse scratch file
 * plus an empty change map, so a view of any size is ready in milliseconds
 * (readyMs measures create + export).
 * Persistence: every view has <dataDir>/views/<id>/view.json, written once the
 * view is exported; every overlay is persistent (Overlay `persistent: true`,
 * base id "<volume>@<epoch>@<generation>"), so a restarted hub reopens every
 * view with its writes and re-exports it under the same id, export name, NQN
 * and namespace ids (view-record.ts). A directory without view.json is a view
 * whose creation never finished (never reported to a client): removed on
 * start. Discard deletes view.json first, then the overlay and the directory,
 * so a crash mid-discard never resurrects half a view.
 * Failover: the volume is fenced first (flag persisted in volume.json, the
 * agent session closed with 4004, later Hellos refused 'failed-over'), the
 * journal drained, then the point is chosen and a writable 'failover' view
 * made; at most one per volume. If the view cannot be made, a fence this call
 * set is lifted again. Failover views are released by failback, not DELETE.
 * Retention: the pin of each view keeps the applier from folding history past
 * its point; when that keeps a journal above its byte budget the volume's
 * status says so (retentionBlocked) and replication carries on.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { performance } from 'node:perf_hooks';
import { BlockDevice } from '../common/block/device';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { NbdServer } from '../common/nbd/server';
import { NvmeTcpTarget } from '../common/nvme-tcp/target';
import { Overlay } from './overlay';
import { RecoveryVolume } from './recovery-volume';
import { RecoveryPoint, ReplicaStore } from './replica-store';
import { PointJson } from './status';
import {
  PointSelector,
  VIEW_ID_RE,
  ViewIdentity,
  ViewKind,
  ViewRecord,
  newViewId,
  pointJson,
  readViewRecord,
  selectPoint,
  viewIdentity,
  writeViewRecord,
} from './view-record';
import { VolumeRegistry } from './volumes';

export interface ViewJson {
  id: string;
  volume: string;
  kind: ViewKind;
  readOnly: boolean;
  point: PointJson;
  createdAt: string;
  readyMs: number;
  nbd: { uri: string; host: string; port: number; export: string } | null;
  nvme: { traddr: string; trsvcid: string; nqn: string } | null;
  overlayBytes: number;
}

export interface Endpoint {
  host: string;
  port: number;
}

export interface ViewManagerOptions {
  dataDir: string;
  hubId: string;
  volumes: VolumeRegistry;
  nbd: NbdServer | null;
  nvme: NvmeTcpTarget | null;
  /** Addresses clients should use (known once the listeners are up). */
  endpoints: () => { nbd: Endpoint | null; nvme: Endpoint | null };
  /** Journal budget per volume (for retentionBlocked). */
  journalBytes: number;
  logger: Logger;
}

interface LiveView {
  record: ViewRecord;
  dir: string;
  identity: ViewIdentity;
  base: RecoveryVolume;
  overlay: Overlay | null;
  discarding: Promise<{ discarded: string; overlayBytes: number }> | null;
}

export const VIEWS_DIR = 'views';

export class ViewManager {
  private readonly views = new Map<string, LiveView>();
  /** Volumes with a failover in progress. */
  private readonly failingOver = new Set<string>();
  /** Views unexported by freeze() (failback). */
  private readonly frozen = new Set<string>();
  private readonly logger: Logger;
  private closing: Promise<void> | null = null;

  constructor(private readonly options: ViewManagerOptions) {
    this.logger = options.logger.child({ component: 'views' });
  }

  private get root(): string {
    return path.join(this.options.dataDir, VIEWS_DIR);
  }

  /** Reloads and re-exports every persisted view (hub start, after the volumes are open). */
  async open(): Promise<void> {
    await fs.promises.mkdir(this.root, { recursive: true });
    for (const id of (await fs.promises.readdir(this.root)).sort()) {
      if (!VIEW_ID_RE.test(id)) continue;
      const dir = path.join(this.root, id);
      try {
        const record = await readViewRecord(dir);
        if (!record) {
          this.logger.warn({ view: id }, 'removing a view whose creation never finished');
          await fs.promises.rm(dir, { recursive: true, force: true });
          continue;
        }
        if (record.id !== id) throw ReplError.io(`view.json names view ${record.id}`);
        const store = this.requireStore(record.volume);
        const point = store.points().find((p) => p.position === record.point.position && p.epoch === record.point.epoch);
        if (!point) throw new ReplError('E_RANGE', `point epoch ${record.point.epoch} of ${record.volume} is no longer retained`);
        await this.materialize(record, store, point);
        this.logger.info({ view: id, volume: record.volume, kind: record.kind, epoch: point.epoch }, 'view restored');
      } catch (err) {
        // files stay untouched: an operator can inspect them; nothing is deleted on a guess
        this.logger.error({ view: id, err: asReplError(err).message }, 'view cannot be restored; left on disk, not exported');
      }
    }
  }

  private requireStore(volume: string): ReplicaStore {
    const store = this.options.volumes.store(volume);
    if (!store) throw new ReplError('E_NOT_FOUND', `unknown volume ${volume}`);
    return store;
  }

  private checkOpen(): void {
    if (this.closing) throw ReplError.closed('hub recovery views');
  }

  /** The selector's point of a volume (404 unknown volume, 416 outside retention). */
  resolvePoint(volume: string, selector: PointSelector): RecoveryPoint {
    return selectPoint(this.requireStore(volume).points(), selector, volume);
  }

  /** Creates a test view (no copy: ready as soon as it is exported). */
  async create(volume: string, selector: PointSelector, readOnly: boolean): Promise<ViewJson> {
    this.checkOpen();
    const store = this.requireStore(volume);
    const point = selectPoint(store.points(), selector, volume);
    return this.json(await this.build(store, point, 'test', readOnly));
  }

  /** Fences the volume and opens a writable failover view at the selected point. */
  async failover(volume: string, selector: PointSelector): Promise<ViewJson> {
    this.checkOpen();
    const store = this.requireStore(volume);
    const busy = this.failoverViewOf(volume);
    if (busy || this.failingOver.has(volume)) {
      throw new ReplError('E_BUSY', `volume ${volume} is already failed over${busy ? ` (view ${busy})` : ''}`);
    }
    selectPoint(store.points(), selector, volume); // refuse a bad point before fencing anything
    this.failingOver.add(volume);
    const wasFenced = store.meta.flags.failedOver;
    try {
      await this.options.volumes.setFailedOver(volume, true);
      await store.drain(); // what the agent sent before the fence counts for "latest"
      const point = selectPoint(store.points(), selector, volume);
      const view = await this.build(store, point, 'failover', false);
      this.logger.warn({ volume, view: view.record.id, epoch: point.epoch }, 'volume failed over');
      return this.json(view);
    } catch (err) {
      if (!wasFenced) await this.options.volumes.setFailedOver(volume, false).catch(() => undefined);
      throw err;
    } finally {
      this.failingOver.delete(volume);
    }
  }

  private async build(store: ReplicaStore, point: RecoveryPoint, kind: ViewKind, readOnly: boolean): Promise<LiveView> {
    const started = performance.now();
    const volume = store.meta.name;
    const id = newViewId(volume, kind, (c) => this.taken(c));
    const record: ViewRecord = {
      format: 1, id, volume, kind, readOnly, point: { ...point },
      generation: store.meta.generation, createdMs: Date.now(), readyMs: 0,
    };
    let view: LiveView;
    try {
      view = await this.materialize(record, store, point);
    } catch (err) {
      // the id was fresh: whatever materialize left in its directory is ours to remove
      await fs.promises.rm(path.join(this.root, id), { recursive: true, force: true }).catch(() => undefined);
      throw err;
    }
    try {
      record.readyMs = Math.round((performance.now() - started) * 1000) / 1000;
      await writeViewRecord(view.dir, record); // the view exists from here on
    } catch (err) {
      await this.teardown(view, true).catch(() => undefined);
      throw err;
    }
    this.logger.info({ view: id, volume, kind, readOnly, epoch: point.epoch, readyMs: record.readyMs }, 'view created');
    return view;
  }

  private taken(id: string): boolean {
    return (
      this.views.has(id) ||
      this.options.volumes.store(id) !== null ||
      (this.options.nbd?.hasExport(id) ?? false) ||
      fs.existsSync(path.join(this.root, id))
    );
  }

  /** Opens base + overlay and exports them; undoes everything on failure. */
  private async materialize(record: ViewRecord, store: ReplicaStore, point: RecoveryPoint): Promise<LiveView> {
    const dir = path.join(this.root, record.id);
    const identity = viewIdentity(this.options.hubId, record.id);
    const base = RecoveryVolume.atPoint(store, point);
    const view: LiveView = { record, dir, identity, base, overlay: null, discarding: null };
    try {
      await fs.promises.mkdir(dir, { recursive: true });
      if (!record.readOnly) {
        view.overlay = await Overlay.open(dir, base, {
          persistent: true,
          baseId: `${record.volume}@${point.epoch}@${record.generation}`,
          logger: this.logger,
        });
      }
      this.export(view);
    } catch (err) {
      await this.teardown(view, false).catch(() => undefined);
      throw asReplError(err);
    }
    this.views.set(record.id, view);
    return view;
  }

  private export(view: LiveView): void {
    const device: BlockDevice = view.overlay ?? view.base;
    const { record, identity } = view;
    const what = `${record.kind} view of ${record.volume} at epoch ${record.point.epoch}`;
    this.options.nbd?.addExport({ name: identity.exportName, device, readOnly: record.readOnly, description: what });
    try {
      this.options.nvme?.addSubsystem({
        nqn: identity.nqn,
        serial: identity.serial,
        model: 'blockrep recovery view',
        readOnly: record.readOnly,
        namespaces: [{ nsid: 1, device, nguid: identity.nguid, uuid: identity.uuid }],
      });
    } catch (err) {
      void this.options.nbd?.removeExport(identity.exportName);
      throw err;
    }
  }

  /** Unexports, closes (destroy: deletes the overlay and the directory) and unpins. */
  private async teardown(view: LiveView, destroy: boolean): Promise<void> {
    const { identity } = view;
    if (this.options.nbd?.hasExport(identity.exportName)) await this.options.nbd.removeExport(identity.exportName);
    await this.options.nvme?.removeSubsystem(identity.nqn).catch(() => undefined); // absent: never added
    try {
      if (destroy) {
        await fs.promises.rm(path.join(view.dir, 'view.json'), { force: true });
        await view.overlay?.destroy();
        await fs.promises.rm(view.dir, { recursive: true, force: true });
      } else await view.overlay?.close();
    } finally {
      await view.base.close();
      this.views.delete(view.record.id);
      this.frozen.delete(view.record.id);
    }
  }

  /**
   * Discards a view: exports closed, overlay deleted, point unpinned. A
   * failover view holds the recovery side's production writes: only failback
   * (allowFailover) may drop it.
   */
  discard(id: string, opts: { allowFailover?: boolean } = {}): Promise<{ discarded: string; overlayBytes: number }> {
    const view = this.views.get(id);
    if (!view) return Promise.reject(new ReplError('E_NOT_FOUND', `unknown view ${id}`));
    if (view.record.kind === 'failover' && !opts.allowFailover) {
      return Promise.reject(
        new ReplError('E_BUSY', `view ${id} is the failover view of ${view.record.volume}; failback releases it`),
      );
    }
    if (!view.discarding) {
      view.discarding = (async () => {
        const overlayBytes = view.overlay?.changedBytes() ?? 0;
        await this.teardown(view, true);
        this.logger.info({ view: id, overlayBytes }, 'view discarded');
        return { discarded: id, overlayBytes };
      })();
    }
    return view.discarding;
  }

  list(volume?: string): ViewJson[] {
    return [...this.views.values()]
      .filter((v) => !v.discarding && (volume === undefined || v.record.volume === volume))
      .sort((a, b) => a.record.createdMs - b.record.createdMs || a.record.id.localeCompare(b.record.id))
      .map((v) => this.json(v));
  }

  get(id: string): ViewJson {
    return this.json(this.live(id));
  }

  private live(id: string): LiveView {
    const view = this.views.get(id);
    if (!view || view.discarding) throw new ReplError('E_NOT_FOUND', `unknown view ${id}`);
    return view;
  }

  /** The device a view exports (overlay or read-only base), for checksums and failback. */
  device(id: string): BlockDevice {
    const v = this.live(id);
    return v.overlay ?? v.base;
  }

  /** The overlay of a writable view (failback ships its changedRanges()). */
  overlay(id: string): Overlay | null {
    return this.live(id).overlay;
  }

  /** The recovery point a view shows (failback: what the replica received after it is rolled back too). */
  pointOf(id: string): RecoveryPoint {
    return this.live(id).record.point;
  }

  /**
   * Failback hook (hub/failback.ts): stops serving a view (NBD export and NVMe
   * subsystem removed, their connections closed; overlay flushed) so its
   * content no longer changes while failback ships it. The device stays
   * readable. thaw() exports it again (failback failed); a hub restart
   * re-exports every view anyway.
   */
  async freeze(id: string): Promise<void> {
    const v = this.live(id);
    if (this.frozen.has(id)) return;
    this.frozen.add(id);
    const { identity } = v;
    if (this.options.nbd?.hasExport(identity.exportName)) await this.options.nbd.removeExport(identity.exportName);
    await this.options.nvme?.removeSubsystem(identity.nqn).catch(() => undefined); // absent: never added
    await v.overlay?.flush();
  }

  thaw(id: string): void {
    const v = this.live(id);
    if (!this.frozen.delete(id)) return;
    this.export(v);
  }

  regionSizeOf(id: string): number {
    return this.requireStore(this.live(id).record.volume).meta.regionSize;
  }

  failoverViewOf(volume: string): string | null {
    for (const v of this.views.values()) if (v.record.volume === volume && v.record.kind === 'failover') return v.record.id;
    return null;
  }

  hasViews(volume: string): boolean {
    for (const v of this.views.values()) if (v.record.volume === volume) return true;
    return false;
  }

  /** A view pins history older than the newest point while the journal is over its budget. */
  retentionBlocked(volume: string): boolean {
    const store = this.options.volumes.store(volume);
    const latest = store?.latestPoint();
    if (!store || !latest || store.journalBytes <= this.options.journalBytes) return false;
    for (const v of this.views.values()) {
      if (v.record.volume === volume && v.record.point.position < latest.position) return true;
    }
    return false;
  }

  private json(v: LiveView): ViewJson {
    const { record, identity } = v;
    const ep = this.options.endpoints();
    const host = ep.nbd ? (ep.nbd.host.includes(':') ? `[${ep.nbd.host}]` : ep.nbd.host) : '';
    return {
      id: record.id,
      volume: record.volume,
      kind: record.kind,
      readOnly: record.readOnly,
      point: pointJson(record.point),
      createdAt: new Date(record.createdMs).toISOString(),
      readyMs: record.readyMs,
      nbd:
        ep.nbd && this.options.nbd
          ? { uri: `nbd://${host}:${ep.nbd.port}/${identity.exportName}`, host: ep.nbd.host, port: ep.nbd.port, export: identity.exportName }
          : null,
      nvme: ep.nvme && this.options.nvme ? { traddr: ep.nvme.host, trsvcid: String(ep.nvme.port), nqn: identity.nqn } : null,
      overlayBytes: v.overlay?.changedBytes() ?? 0,
    };
  }

  /** Hub stop: unexport and close every view, keeping its files (it comes back on the next start). */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        for (const v of [...this.views.values()]) {
          await v.discarding?.catch(() => undefined);
          if (!this.views.has(v.record.id)) continue;
          await this.teardown(v, false).catch((err: unknown) =>
            this.logger.error({ view: v.record.id, err: asReplError(err).message }, 'view close failed'),
          );
        }
      })();
    }
    return this.closing;
  }
}
