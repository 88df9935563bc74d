/**
 * Composition root of rephub:
 *
 *   HubServer (http/ws, status API, /metrics) --> AgentSession per connection
 *        |                                              |
 *        v                                              v
 *   VolumeRegistry (fencing, admission) --> ReplicaStore per volume --> Journal
 *        |
 *        +--> NbdExporter --> NbdServer (latest recovery view of each volume)
 *        |
 *        +--> ViewManager (views.ts: test/failover views) --> NbdServer + NvmeTcpTarget
 *        +--> FailbackManager (failback.ts: ships the recovery side's delta back)
 *             recovery API (recovery-api.ts), LagHistory (lag-history.ts)
 *
 * Data directory: hub.json ({hubId}), hub.lock (pid of the running hub; a
 * stale lock of a dead process is taken over), volumes/<name>/ (see
 * replica-store.ts), views/<id>/ (see views.ts), failback/<volume>.json
 * (see failback.ts).
 * Start order: volumes, then views (their pins are in place before the first
 * retention pass), then failback records (an interrupted commit finishes),
 * then the listeners.
 * Stop order (style rule 16): stop accepting (HTTP listener, NBD server,
 * retention timer) -> drain (close agent sessions and wait for them) ->
 * flush/persist (each store drains its journal, finishes a running apply,
 * fsyncs base image and manifest) -> close files and sockets -> release lock.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { ReplError, asReplError } from '../common/errors';
import { Logger } from '../common/log';
import { NbdServer } from '../common/nbd/server';
import { NvmeTcpTarget } from '../common/nvme-tcp/target';
import { MAX_MESSAGE_BYTES } from '../proto/codec';
import { NbdExporter } from './export';
import { DEFAULT_MAX_RECORD_BYTES, DEFAULT_SEGMENT_BYTES } from './journal';
import { LagHistory } from './lag-history';
import { HubMetrics } from './metrics';
import { DEFAULT_RETENTION } from './retention';
import { registerRecoveryRoutes } from './recovery-api';
import { FailbackManager, registerFailbackRoutes } from './failback';
import { HubServer, RouteHandler } from './server';
import { AgentSession } from './session';
import { VolumeStatus } from './status';
import { Endpoint, ViewManager } from './views';
import { VolumeRegistry } from './volumes';
import { version as packageVersion } from '../package.json';

export interface HubConfig {
  listen: { host: string; port: number };
  dataDir: string;
  nbdListen: { host: string; port: number } | null;
  /** NVMe/TCP listener for recovery views (one subsystem per view); null/absent: none. */
  nvmeListen?: { host: string; port: number } | null;
  /**
   * Address put into view NBD URIs and the NVMe discovery log; default: the
   * listener's host, 127.0.0.1 when that is a wildcard (0.0.0.0 / ::).
   */
  advertiseAddress?: string;
  /** Shared secret agents must present; undefined accepts any agent. */
  token?: string;
  /** PEM text or file paths; HTTPS/WSS when given. */
  tls?: { cert: string; key: string };
  /** Window in which every recovery point is kept (default 1 h). */
  retentionMs?: number;
  /** Longer window kept with thinned points (default: none). */
  retentionLongMs?: number;
  /** Journal budget per volume; above it history is shortened (default 4 GiB). */
  journalBytes?: number;
  /** Journal appends through O_DIRECT where the file system allows it (default true). */
  journalDirectIo?: boolean;
  logger: Logger;
  /** Tuning (tests): segment file size, heartbeat and retention intervals. */
  segmentBytes?: number;
  heartbeatIntervalMs?: number;
  retentionIntervalMs?: number;
  /** Lag history sampling interval (default 5 s). */
  lagSampleIntervalMs?: number;
}

export interface HubPorts {
  httpPort: number;
  nbdPort: number | null;
  nvmePort: number | null;
}

export interface HubStatus {
  hubId: string;
  version: string;
  volumes: VolumeStatus[];
}

export interface Hub {
  readonly hubId: string;
  start(): Promise<HubPorts>;
  stop(): Promise<void>;
  status(): HubStatus;
  /** Volumes, stores and sessions (for hub-side extensions such as recovery views). */
  readonly volumes: VolumeRegistry;
  /** The NBD server (null when nbdListen is null). */
  readonly nbd: NbdServer | null;
  /** The NVMe/TCP target serving views (null when nvmeListen is not set). */
  readonly nvme: NvmeTcpTarget | null;
  /** Recovery views (test and failover). */
  readonly views: ViewManager;
  /** Failback of failed-over volumes. */
  readonly failback: FailbackManager;
  /** Adds a JSON route to the hub's HTTP server. */
  route(method: string, pattern: RegExp, handler: RouteHandler): void;
}

export const DEFAULT_JOURNAL_BYTES = 4 * 1024 ** 3;

export function createHub(config: HubConfig): Hub {
  return new HubImpl(config);
}

class HubImpl implements Hub {
  readonly hubId: string;
  readonly volumes: VolumeRegistry;
  readonly nbd: NbdServer | null;
  readonly nvme: NvmeTcpTarget | null;
  readonly views: ViewManager;
  readonly failback: FailbackManager;
  private readonly lag: LagHistory;
  private readonly endpoints: { nbd: Endpoint | null; nvme: Endpoint | null } = { nbd: null, nvme: null };
  private readonly server: HubServer;
  private readonly metrics: HubMetrics;
  private readonly logger: Logger;
  private retentionTimer: NodeJS.Timeout | null = null;
  private opening: Promise<HubPorts> | null = null;
  private closing: Promise<void> | null = null;
  private lockHeld = false;

  constructor(private readonly config: HubConfig) {
    this.logger = config.logger;
    this.hubId = loadHubId(config.dataDir);
    this.metrics = new HubMetrics(() => this.metricsSnapshot());
    this.nbd = config.nbdListen ? new NbdServer({ logger: this.logger.child({ component: 'nbd' }) }) : null;
    this.volumes = new VolumeRegistry({
      dataDir: config.dataDir,
      hubId: this.hubId,
      token: config.token,
      logger: this.logger,
      metrics: this.metrics,
      exporter: this.nbd ? new NbdExporter(this.nbd) : null,
      store: {
        owner: this.hubId,
        segmentBytes: config.segmentBytes ?? DEFAULT_SEGMENT_BYTES,
        maxRecordBytes: DEFAULT_MAX_RECORD_BYTES,
        journalDirectIo: config.journalDirectIo,
        policy: {
          retentionMs: config.retentionMs ?? DEFAULT_RETENTION.retentionMs,
          retentionLongMs: config.retentionLongMs,
          journalBytes: config.journalBytes ?? DEFAULT_JOURNAL_BYTES,
        },
      },
    });
    const advertise = config.advertiseAddress;
    this.nvme = config.nvmeListen
      ? new NvmeTcpTarget({
          logger: this.logger.child({ component: 'nvme' }),
          // the discovery log needs an IP; for a host name the target reports the connection's address
          advertiseAddress: advertise && net.isIP(advertise) && !isWildcard(advertise) ? advertise : undefined,
        })
      : null;
    this.views = new ViewManager({
      dataDir: config.dataDir,
      hubId: this.hubId,
      volumes: this.volumes,
      nbd: this.nbd,
      nvme: this.nvme,
      endpoints: () => this.endpoints,
      journalBytes: config.journalBytes ?? DEFAULT_JOURNAL_BYTES,
      logger: this.logger,
    });
    this.volumes.setViewInfo(this.views);
    this.failback = new FailbackManager({ dataDir: config.dataDir, volumes: this.volumes, views: this.views, logger: this.logger });
    this.volumes.setFailback(this.failback);
    this.lag = new LagHistory({
      source: () => this.volumes.statuses(),
      intervalMs: config.lagSampleIntervalMs,
    });
    this.server = new HubServer({
      logger: this.logger,
      tls: config.tls,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      onAgent: (transport, remote) =>
        new AgentSession(transport, this.volumes, {
          logger: this.logger.child({ component: 'session' }),
          maxRecordBytes: Math.min(DEFAULT_MAX_RECORD_BYTES, MAX_MESSAGE_BYTES),
          remote,
        }),
    });
    this.registerRoutes();
    registerRecoveryRoutes(this, { volumes: this.volumes, views: this.views, lag: this.lag });
    registerFailbackRoutes(this, this.failback);
  }

  route(method: string, pattern: RegExp, handler: RouteHandler): void {
    this.server.route(method, pattern, handler);
  }

  private registerRoutes(): void {
    this.server.route('GET', /^\/v1\/status$/, () => ({ status: 200, body: this.status() }));
    this.server.route('GET', /^\/v1\/volumes\/([^/]+)$/, (_req, m) => {
      const name = decodeURIComponent(m[1]!);
      const s = this.volumes.status(name);
      if (!s) throw new ReplError('E_NOT_FOUND', `unknown volume ${name}`);
      return { status: 200, body: s };
    });
    this.server.route('GET', /^\/metrics$/, async () => ({
      status: 200,
      body: null,
      text: await this.metrics.registry.metrics(),
      contentType: this.metrics.registry.contentType,
    }));
  }

  status(): HubStatus {
    return { hubId: this.hubId, version: packageVersion, volumes: this.volumes.statuses() };
  }

  private metricsSnapshot() {
    const statuses = this.volumes.statuses();
    return {
      connectedAgents: statuses.filter((s) => s.connected).length,
      volumes: statuses.map((s) => ({
        name: s.name,
        lagSeconds: s.lagSeconds,
        journalBytes: s.journalBytes,
        fsyncs: this.volumes.store(s.name)?.journalStats.fsyncs ?? 0,
        journalDirectIo: this.volumes.store(s.name)?.journalDirectIo ?? false,
      })),
    };
  }

  start(): Promise<HubPorts> {
    if (!this.opening) this.opening = this.doStart();
    return this.opening;
  }

  private async doStart(): Promise<HubPorts> {
    acquireLock(this.config.dataDir);
    this.lockHeld = true;
    try {
      await this.volumes.open();
      await this.views.open();
      await this.failback.open(); // finishes an interrupted failback commit before any agent can connect
      const { nbdListen, nvmeListen, advertiseAddress } = this.config;
      const nbdPort = this.nbd && nbdListen ? (await this.nbd.listen(nbdListen.host, nbdListen.port)).port : null;
      if (nbdListen && nbdPort !== null) this.endpoints.nbd = { host: advertiseHost(advertiseAddress, nbdListen.host), port: nbdPort };
      const nvmePort = this.nvme && nvmeListen ? (await this.nvme.listen(nvmeListen.host, nvmeListen.port)).port : null;
      if (nvmeListen && nvmePort !== null) this.endpoints.nvme = { host: advertiseHost(advertiseAddress, nvmeListen.host), port: nvmePort };
      this.lag.start();
      const http = await this.server.listen(this.config.listen.host, this.config.listen.port);
      const interval = this.config.retentionIntervalMs ?? 1000;
      this.retentionTimer = setInterval(() => void this.volumes.runRetention(Date.now()), interval);
      this.retentionTimer.unref();
      this.logger.info({ hubId: this.hubId, httpPort: http.port, nbdPort, nvmePort, tls: this.server.secure }, 'hub started');
      return { httpPort: http.port, nbdPort, nvmePort };
    } catch (err) {
      await this.stop().catch(() => undefined);
      throw asReplError(err);
    }
  }

  stop(): Promise<void> {
    if (!this.closing) this.closing = this.doStop();
    return this.closing;
  }

  private async doStop(): Promise<void> {
    try {
      // 1. stop accepting new work
      if (this.retentionTimer) clearInterval(this.retentionTimer);
      this.lag.stop();
      await this.server.stopAccepting();
      await this.nbd?.close();
      await this.nvme?.close();
      // 2. drain: end agent sessions (their appends stay queued in the journals)
      this.failback.close();
      await this.server.closeAgents();
      for (const s of this.volumes.sessions()) s.close(1001, 'hub stopping');
      // views read through the stores: close them (overlays flushed, files kept) first
      await this.views.close();
      // 3 + 4. flush and persist: journals drain, base images and manifests fsync, stores close
      await this.volumes.close();
    } finally {
      // 5. sockets, then the lock
      this.server.close();
      if (this.lockHeld) releaseLock(this.config.dataDir);
      this.lockHeld = false;
      this.logger.info({ hubId: this.hubId }, 'hub stopped');
    }
  }
}

function isWildcard(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '';
}

/** The address clients are told to use for a listener on `listenHost`. */
export function advertiseHost(advertise: string | undefined, listenHost: string): string {
  if (advertise) return advertise;
  return isWildcard(listenHost) ? '127.0.0.1' : listenHost;
}

/** Reads or creates the hub's persistent id (also the journal owner token). */
function loadHubId(dataDir: string): string {
  const file = path.join(dataDir, 'hub.json');
  try {
    const parsed = JSON.parse(fs.readFileSync(file, 'utf8')) as { hubId?: unknown };
    if (typeof parsed.hubId === 'string' && /^\w{1,20}$/.test(parsed.hubId)) return parsed.hubId;
    throw new ReplError('E_IO', `${file}: malformed hub id`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw asReplError(err);
  }
  fs.mkdirSync(dataDir, { recursive: true });
  const hubId = `hub_${crypto.randomBytes(6).toString('hex')}`;
  // tmp + fsync + rename (synchronous: runs once, in the constructor)
  const fd = fs.openSync(`${file}.tmp`, 'w');
  try {
    fs.writeFileSync(fd, JSON.stringify({ hubId }) + '\n');
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(`${file}.tmp`, file);
  return hubId;
}

function acquireLock(dataDir: string): void {
  const file = path.join(dataDir, 'hub.lock');
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      fs.writeFileSync(file, `${process.pid}\n`, { flag: 'wx' });
      return;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw asReplError(err);
    }
    const pid = Number(fs.readFileSync(file, 'utf8').trim());
    if (Number.isSafeInteger(pid) && pid > 0 && (pid === process.pid || processAlive(pid))) {
      throw new ReplError('E_BUSY', `data directory ${dataDir} is in use by hub process ${pid}`);
    }
    fs.rmSync(file, { force: true });
  }
  throw new ReplError('E_BUSY', `cannot lock data directory ${dataDir}`);
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function releaseLock(dataDir: string): void {
  fs.rmSync(path.join(dataDir, 'hub.lock'), { force: true });
}
