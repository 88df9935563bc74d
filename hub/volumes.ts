/**
 * VolumeRegistry: the hub's set of replicated volumes (one ReplicaStore each,
 * under <dataDir>/volumes/<name>/), the admission of agent sessions
 * (SessionHost), the "latest" NBD export of each volume, and status snapshots.
 *
 * Admission is serialised per volume name: the name is reserved synchronously
 * before any await, so two Hellos for one volume can never both win (the
 * second is refused busy). A volume directory that fails to open is kept out
 * of service (its Hellos are refused) rather than silently replaced.
 * Exports: a volume is exported (read-only, following its newest recovery
 * point) from its first recovery point on; before that there is nothing
 * crash-consistent to serve, and NBD clients get "unknown export".
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { AgentStatus, Hello, PROTOCOL_VERSION, RefuseCode } from '../proto/codec';
import { CloseCode } from './close-codes';
import { decideHello } from './fencing';
import { HubMetrics } from './metrics';
import { RecoveryVolume } from './recovery-volume';
import { ReplicaStore, ReplicaStoreOptions } from './replica-store';
import { Admission, AgentSession, FailbackDriver, ResyncProgress, SessionHost } from './session';
import { VolumeStatus, buildVolumeStatus } from './status';
import { VOLUME_NAME_RE, VolumeMeta } from './volume-meta';

/** Where the "latest" views go (the NBD server in production). */
export interface VolumeExporter {
  add(name: string, device: RecoveryVolume): void;
  remove(name: string): Promise<void>;
}

/** What the registry asks about recovery views (hub/views.ts; set by the hub). */
export interface ViewInfo {
  failoverViewOf(volume: string): string | null;
  hasViews(volume: string): boolean;
  retentionBlocked(volume: string): boolean;
}

/** Failback admission (hub/failback.ts; set by the hub). */
export interface FailbackHook {
  /** A failback waits for this volume's agent. */
  pending(volume: string): boolean;
  /** The agent was welcomed with sync mode 'failback': the driver of its session. */
  attach(volume: string, session: AgentSession): FailbackDriver;
}

/** How long setFailedOver waits for the fenced session to go away. */
const FENCE_WAIT_MS = 10_000;

interface VolumeEntry {
  store: ReplicaStore;
  session: AgentSession | null;
  /** Agent facts of the current or last session. */
  agent: AgentStatus | null;
  progress: ResyncProgress | null;
  exported: RecoveryVolume | null;
  unsubscribe: () => void;
}

export interface VolumeRegistryOptions {
  dataDir: string;
  hubId: string;
  token: string | undefined;
  logger: Logger;
  store: Omit<ReplicaStoreOptions, 'logger'>;
  metrics: HubMetrics;
  exporter: VolumeExporter | null;
}

export class VolumeRegistry implements SessionHost {
  private readonly volumes = new Map<string, VolumeEntry>();
  /** Names whose admission is in progress (reserved synchronously). */
  private readonly admitting = new Set<string>();
  /** Volumes whose directory could not be opened: refused, never overwritten. */
  private readonly broken = new Map<string, string>();
  private readonly logger: Logger;
  private viewInfo: ViewInfo | null = null;
  private failbackHook: FailbackHook | null = null;

  constructor(private readonly options: VolumeRegistryOptions) {
    this.logger = options.logger;
  }

  get observer(): HubMetrics {
    return this.options.metrics;
  }

  private get root(): string {
    return path.join(this.options.dataDir, 'volumes');
  }

  /** Opens every volume found in the data directory. */
  async open(): Promise<void> {
    await fs.promises.mkdir(this.root, { recursive: true });
    for (const name of (await fs.promises.readdir(this.root)).sort()) {
      if (!VOLUME_NAME_RE.test(name)) continue;
      try {
        const store = await ReplicaStore.open(path.join(this.root, name), this.storeOptions());
        this.attach(name, store);
        this.logger.info({ volume: name, points: store.points().length, open: store.group !== null }, 'volume opened');
      } catch (err) {
        const message = asReplError(err).message;
        this.broken.set(name, message);
        this.logger.error({ volume: name, err }, 'volume cannot be opened; its agent will be refused');
      }
    }
  }

  setViewInfo(info: ViewInfo): void {
    this.viewInfo = info;
  }

  setFailback(hook: FailbackHook): void {
    this.failbackHook = hook;
  }

  /**
   * Sets or clears the persisted failed-over flag. Setting it fences the
   * volume: later Hellos are refused 'failed-over' (fencing.ts), an admission
   * already under way is waited for, and the current session is closed with
   * 4004; resolves once that session is released (or after FENCE_WAIT_MS).
   */
  async setFailedOver(name: string, failedOver: boolean): Promise<void> {
    const entry = this.volumes.get(name);
    if (!entry) throw new ReplError('E_NOT_FOUND', `unknown volume ${name}`);
    await entry.store.updateMeta({ flags: { failedOver } });
    if (!failedOver) return;
    const deadline = Date.now() + FENCE_WAIT_MS;
    const settle = async (done: () => boolean): Promise<void> => {
      while (!done() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    };
    await settle(() => !this.admitting.has(name));
    const session = this.volumes.get(name)?.session;
    if (!session) return;
    session.close(CloseCode.FENCED, `volume ${name} failed over`);
    await settle(() => this.volumes.get(name)?.session !== session);
    if (this.volumes.get(name)?.session === session) this.logger.warn({ volume: name }, 'fenced session did not close in time');
  }

  private storeOptions(): ReplicaStoreOptions {
    return { ...this.options.store, logger: this.logger.child({ component: 'store' }) };
  }

  private attach(name: string, store: ReplicaStore): VolumeEntry {
    const entry: VolumeEntry = { store, session: null, agent: null, progress: null, exported: null, unsubscribe: () => undefined };
    entry.unsubscribe = store.on((e) => {
      if (e.type === 'point' && !entry.exported) this.exportLatest(name, entry);
      if (e.type === 'history-shortened') this.options.metrics.shortened(name);
    });
    this.volumes.set(name, entry);
    this.exportLatest(name, entry);
    return entry;
  }

  private exportLatest(name: string, entry: VolumeEntry): void {
    if (!this.options.exporter || entry.exported || !entry.store.latestPoint()) return;
    entry.exported = RecoveryVolume.latest(entry.store);
    this.options.exporter.add(name, entry.exported);
  }

  private async detach(name: string, entry: VolumeEntry): Promise<void> {
    entry.unsubscribe();
    if (entry.exported) {
      await this.options.exporter?.remove(name);
      await entry.exported.close();
      entry.exported = null;
    }
    this.volumes.delete(name);
    await entry.store.close();
  }

  async admit(hello: Hello, session: AgentSession): Promise<Admission> {
    const name = hello.volumeName;
    const entry = this.volumes.get(name);
    const busy = this.admitting.has(name) || (entry?.session != null && entry.session !== session);
    const meta = entry?.store.meta;
    const decision = decideHello({
      hello,
      token: this.options.token,
      busy,
      volume: meta
        ? {
            uuid: meta.uuid,
            size: meta.size,
            blockSize: meta.blockSize,
            generation: meta.generation,
            failedOver: meta.flags.failedOver,
            agentId: meta.agentId,
            failbackPending: meta.flags.failedOver && (this.failbackHook?.pending(name) ?? false),
          }
        : null,
    });
    if (decision.action === 'welcome' && this.broken.has(name)) {
      return this.refuse('unspecified', `volume ${name} is unreadable on the hub: ${this.broken.get(name)}`);
    }
    if (decision.action === 'refuse') return this.refuse(decision.code, decision.message);
    if (decision.action === 'welcome' && decision.recreate && this.viewInfo?.hasViews(name)) {
      return this.refuse('busy', `volume ${name} has open recovery views; discard them before a forced full sync`);
    }
    this.admitting.add(name);
    try {
      let current = entry;
      if (current && decision.recreate) {
        this.logger.warn({ volume: name, oldUuid: current.store.meta.uuid }, 'forced full sync: re-creating replica');
        await this.detach(name, current);
        await fs.promises.rm(path.join(this.root, name), { recursive: true, force: true });
        current = undefined;
      }
      if (current?.store.failed) {
        this.logger.warn({ volume: name }, 'reopening volume after a journal failure');
        await this.detach(name, current);
        current = this.attach(name, await ReplicaStore.open(path.join(this.root, name), this.storeOptions()));
      }
      if (!current) {
        const created = await ReplicaStore.create(path.join(this.root, name), this.newMeta(hello, decision.generation), this.storeOptions());
        current = this.attach(name, created);
      } else if (current.store.meta.generation !== decision.generation || current.store.meta.agentId !== hello.agentId) {
        await current.store.updateMeta({ generation: decision.generation, agentId: hello.agentId });
      }
      current.session = session;
      current.agent = null;
      current.progress = null;
      const store = current.store;
      const failback = decision.mode === 'failback' ? this.failbackHook!.attach(name, session) : undefined;
      return {
        kind: 'welcome',
        store,
        failback,
        welcome: {
          protocolVersion: PROTOCOL_VERSION,
          hubId: this.options.hubId,
          generation: decision.generation,
          syncMode: decision.mode,
          durableEpoch: store.durableEpoch,
          durableSeq: store.durableSeq,
          resyncOpen: store.group !== null,
        },
      };
    } finally {
      this.admitting.delete(name);
    }
  }

  private refuse(code: RefuseCode, message: string): Admission {
    this.options.metrics.refused(code);
    return { kind: 'refuse', code, message };
  }

  private newMeta(hello: Hello, generation: number): VolumeMeta {
    return {
      format: 1,
      name: hello.volumeName,
      uuid: hello.volumeUuid,
      size: hello.volumeSize,
      blockSize: hello.blockSize,
      regionSize: hello.regionSize,
      generation,
      agentId: hello.agentId,
      flags: { failedOver: false },
      createdMs: Date.now(),
    };
  }

  release(session: AgentSession): void {
    for (const entry of this.volumes.values()) {
      if (entry.session !== session) continue;
      entry.agent = session.agentStatus;
      entry.progress = session.resync;
      entry.session = null;
    }
  }

  /** Every admitted session (for shutdown). */
  sessions(): AgentSession[] {
    return [...this.volumes.values()].flatMap((e) => (e.session ? [e.session] : []));
  }

  store(name: string): ReplicaStore | null {
    return this.volumes.get(name)?.store ?? null;
  }

  names(): string[] {
    return [...this.volumes.keys()].sort();
  }

  status(name: string, nowMs = Date.now()): VolumeStatus | null {
    const entry = this.volumes.get(name);
    if (!entry) return null;
    const { store, session } = entry;
    const point = store.latestPoint();
    return buildVolumeStatus({
      meta: store.meta,
      connected: session?.state === 'streaming',
      durableEpoch: store.durableEpoch,
      durableSeq: store.durableSeq,
      durableTimeMs: store.lastSealTimeMs,
      latestPoint: point,
      pointCount: store.points().length,
      group: store.group,
      progress: session ? session.resync : entry.progress,
      agent: session ? session.agentStatus : entry.agent,
      agentStatusAtMs: session?.statusAtMs ?? null,
      receivedSeq: session?.receivedSeq ?? -1,
      journalBytes: store.journalBytes,
      nowMs,
      failedOver: store.meta.flags.failedOver,
      failoverView: this.viewInfo?.failoverViewOf(name) ?? null,
      retentionBlocked: this.viewInfo?.retentionBlocked(name) ?? false,
    });
  }

  statuses(nowMs = Date.now()): VolumeStatus[] {
    return this.names().map((n) => this.status(n, nowMs)!);
  }

  async runRetention(nowMs: number): Promise<void> {
    for (const [name, entry] of this.volumes) {
      try {
        await entry.store.runRetention(nowMs);
      } catch (err) {
        this.logger.error({ volume: name, err }, 'retention pass failed');
      }
    }
  }

  /** Waits for all pending journal appends, then closes exports and stores. */
  async close(): Promise<void> {
    for (const [name, entry] of [...this.volumes]) {
      try {
        await entry.store.drain();
      } finally {
        await this.detach(name, entry);
      }
    }
  }
}
