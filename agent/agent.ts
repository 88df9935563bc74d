/**
 * Composition root of repagent. For each volume:
 *
 *   initiator ─▶ NvmeTcpTarget (nsid n) ─┐
 *   initiator ─▶ NbdServer (export NAME) ─┴▶ ReplicationFilter ─▶ FileDevice
 *                                              │  RegionState + ActivityLog (bits, hot extents)
 *                                              └▶ Replicator ─▶ HubLink ─▶ hub
 *
 * Without a hub the front ends serve the FileDevice directly. One NVMe
 * subsystem holds every volume (one namespace each, identity from identity.ts).
 *
 * stop() order (style rule 16): close the front ends (no new I/O) -> drain the
 * filters -> flush the devices -> close the replicators (final seal, short ack
 * wait, counters saved) -> close the activity logs (bitmap persisted, CLEAN
 * record) -> close reference logs and devices.
 */
import * as fs from 'node:fs';
import { EventEmitter } from 'node:events';
import { BlockDevice } from '../common/block/device';
import { DirectReader } from '../common/block/direct-reader';
import { FileDevice } from '../common/block/file-device';
import { ReplError } from '../common/errors';
import { Logger } from '../common/log';
import { NbdServer } from '../common/nbd/server';
import { NvmeTcpTarget } from '../common/nvme-tcp/target';
import { ActivityLog } from './activity-log';
import { FailbackClient } from './failback';
import { IdentityStore, VolumeIdentity } from './identity';
import { ReferenceLogWriter } from './reference-log';
import { RegionState } from './region-state';
import { ReplicationFilter } from './replication-filter';
import { ReplicationEvent, ReplicationStatus, Replicator } from './replicator';

export interface AgentHubConfig {
  url: string;
  token?: string;
  caFile?: string;
  ackMode: 'async' | 'sync';
  /** Default 'degrade'. */
  onLinkFailure?: 'degrade' | 'fail-writes';
  queueBytes: number;
  /** Bytes per second, 0 = unlimited. */
  resyncRate: number;
  regionSize: number;
  extentSize?: number;
  hotExtents?: number;
  epochIntervalMs?: number;
  forceFullSync?: boolean;
  /** Periodic bitmap save (default 60 s; 0 = only on eviction and clean stop). */
  bitmapPersistIntervalMs?: number;
  /** Test tuning. */
  heartbeatIntervalMs?: number;
  statusIntervalMs?: number;
  reconnectBaseMs?: number;
  reconnectMaxMs?: number;
}

export interface AgentConfig {
  stateDir: string;
  volumes: { name: string; path: string; size?: number }[];
  nvmeListen: { host: string; port: number } | null;
  nbdListen: { host: string; port: number } | null;
  nqn?: string;
  /** Address written into the NVMe discovery log (default: the listener's local address). */
  advertiseAddress?: string;
  hub?: AgentHubConfig;
  /** Test mode: reference log path (one volume), or prefix (several: PATH.NAME). */
  referenceLog?: string;
  logger: Logger;
}

export interface VolumeStatus {
  name: string;
  path: string;
  size: number;
  uuid: string;
  nsid: number;
  replication: ReplicationStatus | null;
}

export interface AgentStatus {
  agentId: string;
  nqn: string;
  nvme: { host: string; port: number } | null;
  nbd: { host: string; port: number } | null;
  volumes: VolumeStatus[];
}

export type AgentEvent = ReplicationEvent;

export interface Agent {
  start(): Promise<AgentStatus>;
  stop(): Promise<void>;
  status(): AgentStatus;
  /** The device the front ends serve for `name` (tests and tools write through it). */
  device(name: string): BlockDevice;
  on(event: 'event', listener: (e: AgentEvent) => void): Agent;
  off(event: 'event', listener: (e: AgentEvent) => void): Agent;
}

interface Volume {
  config: AgentConfig['volumes'][number];
  id: VolumeIdentity;
  file: FileDevice;
  served: BlockDevice;
  filter: ReplicationFilter | null;
  activity: ActivityLog | null;
  replicator: Replicator | null;
  refLog: ReferenceLogWriter | null;
  /** Page-cache-bypassing reads of the volume file for resync. */
  bulk: DirectReader | null;
}

export function createAgent(config: AgentConfig): Agent {
  return new AgentImpl(config);
}

class AgentImpl extends EventEmitter implements Agent {
  private ids: IdentityStore | null = null;
  private volumes: Volume[] = [];
  private nvme: NvmeTcpTarget | null = null;
  private nbd: NbdServer | null = null;
  private addresses: { nvme: AgentStatus['nvme']; nbd: AgentStatus['nbd'] } = { nvme: null, nbd: null };
  private persistTimer: NodeJS.Timeout | null = null;
  private starting: Promise<AgentStatus> | null = null;
  private stopping: Promise<void> | null = null;

  constructor(private readonly config: AgentConfig) {
    super();
  }

  start(): Promise<AgentStatus> {
    if (!this.starting) {
      this.starting = this.open().catch(async (err) => {
        await this.shutdown().catch(() => undefined);
        throw err;
      });
    }
    return this.starting;
  }

  private async open(): Promise<AgentStatus> {
    const c = this.config;
    const names = new Set<string>();
    for (const v of c.volumes) {
      if (names.has(v.name)) throw ReplError.invalid(`volume ${v.name} is configured twice`);
      names.add(v.name);
    }
    this.ids = IdentityStore.open(c.stateDir, { nqn: c.nqn });
    for (const v of c.volumes) this.volumes.push(await this.openVolume(v));
    await this.openFrontEnds();
    for (const v of this.volumes) v.replicator?.start();
    const interval = c.hub?.bitmapPersistIntervalMs ?? 60_000;
    if (c.hub && interval > 0) {
      this.persistTimer = setInterval(() => {
        for (const v of this.volumes) v.activity?.persistBitmap().catch((err) => c.logger.error({ err: err.message, volume: v.id.name }, 'periodic bitmap save failed'));
      }, interval);
      this.persistTimer.unref();
    }
    return this.status();
  }

  private async openVolume(v: AgentConfig['volumes'][number]): Promise<Volume> {
    const c = this.config;
    const ids = this.ids!;
    const dir = ids.volumeDir(v.name);
    const file = await FileDevice.open(v.path, { createSize: v.size });
    const vol: Volume = { config: v, id: ids.volume(v.name, file.info.size), file, served: file, filter: null, activity: null, replicator: null, refLog: null, bulk: null };
    try {
      if (!c.hub) return vol;
      const h = c.hub;
      const { log, recovery } = await ActivityLog.open({
        dir,
        regionSize: h.regionSize,
        deviceSize: file.info.size,
        extentSize: h.extentSize,
        hotExtents: h.hotExtents,
        generation: () => vol.id.generation,
        logger: c.logger,
      });
      vol.activity = log;
      vol.id.generation = Math.max(vol.id.generation, recovery.bitmapGeneration);
      c.logger.info({ volume: v.name, ...recovery, hotExtents: recovery.hotExtents.length, dirtyBytes: log.bitmap.dirtyBytes() }, 'volume opened');
      const regions = new RegionState(log.bitmap);
      vol.bulk = DirectReader.open(v.path);
      if (c.referenceLog) vol.refLog = await openReferenceLog(c.referenceLog, c.volumes.length > 1 ? v.name : null, recovery.clean, regions, file);
      vol.replicator = new Replicator({
        agentId: ids.agent.agentId,
        identity: vol.id,
        identityStore: ids,
        device: file,
        bulkReader: vol.bulk,
        regions,
        persistBitmap: () => log.persistBitmap(),
        url: h.url,
        token: h.token,
        ca: h.caFile ? fs.readFileSync(h.caFile) : undefined,
        ackMode: h.ackMode,
        onLinkFailure: h.onLinkFailure ?? 'degrade',
        queueBytes: h.queueBytes,
        resyncRate: h.resyncRate,
        epochIntervalMs: h.epochIntervalMs,
        forceFullSync: h.forceFullSync,
        referenceLog: vol.refLog ?? undefined,
        logger: c.logger.child({ volume: v.name }),
        heartbeatIntervalMs: h.heartbeatIntervalMs,
        statusIntervalMs: h.statusIntervalMs,
        backoffPolicy:
          h.reconnectBaseMs !== undefined || h.reconnectMaxMs !== undefined
            ? { baseMs: h.reconnectBaseMs ?? 500, maxMs: h.reconnectMaxMs ?? 30_000, factor: 2, jitter: 0.2 }
            : undefined,
        refuseBackoffMs: h.reconnectMaxMs,
      });
      vol.replicator.on('event', (e) => this.emit('event', e));
      vol.filter = new ReplicationFilter(file, regions, log, vol.replicator, { mode: h.ackMode, onLinkFailure: h.onLinkFailure ?? 'degrade' });
      vol.served = vol.filter;
      // failback (agent/failback.ts): holds the filter's I/O while an interrupted failback is pending
      vol.replicator.setFailback(
        new FailbackClient({
          dir,
          device: file,
          regions,
          identity: vol.id,
          identityStore: ids,
          persistBitmap: () => log.persistBitmap(),
          gate: vol.filter,
          link: vol.replicator.link,
          logger: c.logger.child({ volume: v.name, component: 'failback' }),
        }),
      );
      return vol;
    } catch (err) {
      vol.activity?.abandon();
      vol.refLog?.close();
      await vol.bulk?.close();
      await file.close();
      throw err;
    }
  }

  private async openFrontEnds(): Promise<void> {
    const c = this.config;
    const ids = this.ids!;
    if (c.nvmeListen) {
      this.nvme = new NvmeTcpTarget({ logger: c.logger.child({ component: 'nvme-tcp' }), advertiseAddress: c.advertiseAddress });
      this.nvme.addSubsystem({
        nqn: ids.agent.nqn,
        serial: ids.agent.serial,
        model: 'blockrep agent',
        namespaces: this.volumes.map((v) => ({ nsid: v.id.nsid, device: v.served, nguid: Buffer.from(v.id.nguid, 'hex'), uuid: v.id.uuid })),
      });
      this.addresses.nvme = await this.nvme.listen(c.nvmeListen.host, c.nvmeListen.port);
    }
    if (c.nbdListen) {
      this.nbd = new NbdServer({ logger: c.logger.child({ component: 'nbd' }) });
      for (const v of this.volumes) this.nbd.addExport({ name: v.id.name, device: v.served, description: `blockrep volume ${v.id.name}` });
      this.addresses.nbd = await this.nbd.listen(c.nbdListen.host, c.nbdListen.port);
    }
  }

  device(name: string): BlockDevice {
    const v = this.volumes.find((x) => x.id.name === name);
    if (!v) throw new ReplError('E_NOT_FOUND', `no volume ${name}`);
    return v.served;
  }

  status(): AgentStatus {
    return {
      agentId: this.ids?.agent.agentId ?? '',
      nqn: this.ids?.agent.nqn ?? '',
      nvme: this.addresses.nvme,
      nbd: this.addresses.nbd,
      volumes: this.volumes.map((v) => ({
        name: v.id.name,
        path: v.config.path,
        size: v.file.info.size,
        uuid: v.id.uuid,
        nsid: v.id.nsid,
        replication: v.replicator?.status() ?? null,
      })),
    };
  }

  stop(): Promise<void> {
    if (!this.stopping) {
      this.stopping = (async () => {
        await this.starting?.catch(() => undefined);
        await this.shutdown();
      })();
    }
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    if (this.persistTimer) clearInterval(this.persistTimer);
    const errors: unknown[] = [];
    const step = async (fn: () => Promise<void> | void): Promise<void> => {
      try {
        await fn();
      } catch (err) {
        errors.push(err);
        this.config.logger.error({ err: (err as Error).message }, 'agent stop step failed');
      }
    };
    await step(() => this.nvme?.close());
    await step(() => this.nbd?.close());
    for (const v of this.volumes) await step(() => v.filter?.drain());
    for (const v of this.volumes) await step(() => v.file.flush());
    await Promise.all(this.volumes.map((v) => step(() => v.replicator?.close())));
    for (const v of this.volumes) await step(() => v.activity?.close());
    for (const v of this.volumes) {
      await step(() => v.refLog?.close());
      await step(() => v.bulk?.close());
      await step(() => v.file.close());
    }
    if (errors.length > 0) throw errors[0];
  }
}

/** Opens the test-mode reference log; after an unclean stop logs the recovered dirty regions as they are on disk. */
async function openReferenceLog(
  base: string,
  name: string | null,
  clean: boolean,
  regions: RegionState,
  device: BlockDevice,
): Promise<ReferenceLogWriter> {
  const log = new ReferenceLogWriter(name ? `${base}.${name}` : base);
  log.open(clean);
  if (!clean) {
    for (const run of regions.bitmap.extents()) {
      const { offset, length } = regions.bitmap.bytesOf(run.start, run.start + run.count);
      for (let pos = offset; pos < offset + length; pos += 1024 * 1024) {
        const n = Math.min(1024 * 1024, offset + length - pos);
        log.write(0, -1, pos, n, 'data', await device.read(pos, n), true);
      }
    }
  }
  return log;
}
