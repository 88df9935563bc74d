/**
 * NvmeTcpTarget: the TCP listener of the NVMe/TCP target. It owns the
 * subsystems (added/removed at run time, plus the built-in discovery
 * subsystem on the same listener) and the connections; each connection is one
 * queue (connection.ts) and each association a Controller.
 *
 * Lifecycle: listen() -> serving -> close() (stop accepting, close every
 * connection). removeSubsystem() refuses new Connects for that NQN first, then
 * tears its controllers down. Subsystem changes bump the discovery GENCTR and
 * raise a discovery-change AER on discovery controllers that asked for it.
 */
import * as net from 'node:net';
import { listenOn, serverAddress } from '../listen';
import { ReplError } from '../errors';
import { Logger, silentLogger } from '../log';
import type { BlockDevice } from '../block/device';
import { IN_CAPSULE_DATA } from './admin';
import { TargetContext, TargetLimits } from './command';
import { Connection } from './connection';
import { AsyncEvent } from './controller';
import { DISCOVERY_NQN, DiscoveryEntry, buildDiscoveryLog } from './identify';
import { Subsystem } from './subsystem';

export interface NvmeNamespaceConfig {
  nsid: number;
  device: BlockDevice;
  /** 16 bytes, stable across restarts. */
  nguid: Buffer;
  /** Canonical UUID text, stable across restarts. */
  uuid: string;
}

export interface NvmeSubsystemConfig {
  nqn: string;
  serial: string;
  model?: string;
  firmware?: string;
  namespaces: NvmeNamespaceConfig[];
  readOnly?: boolean;
}

export interface NvmeTcpTargetOptions {
  logger?: Logger;
  /** TRADDR in the discovery log; default: the local address of the host's connection. */
  advertiseAddress?: string;
  /** MAXH2CDATA advertised in ICResp (default 1 MiB = the largest command, so one R2T per command). */
  maxH2CData?: number;
  /** I/O queues per controller (default 8). */
  maxIoQueues?: number;
  /** Concurrent TCP connections (default 256); more are refused. */
  maxConnections?: number;
  /** Time a new connection has to send its ICReq (default 10 s). */
  icReqTimeoutMs?: number;
  /** Added to KATO before a silent controller is torn down (default 10 s). */
  keepAliveGraceMs?: number;
  /** Time one PDU may take to arrive once it started (default 30 s). */
  pduTimeoutMs?: number;
  /** Static-buffer socket reads (default true; false: Node's stream reads, slower). */
  staticReads?: boolean;
}

const DEFAULTS = {
  maxH2CData: 1024 * 1024,
  maxIoQueues: 8,
  maxConnections: 256,
  icReqTimeoutMs: 10_000,
  keepAliveGraceMs: 10_000,
  pduTimeoutMs: 30_000,
};

/** Largest data transfer per command (MDTS = 8 with 4 KiB pages). */
const MAX_TRANSFER = 1024 * 1024;

export class NvmeTcpTarget {
  private readonly logger: Logger;
  private readonly limits: TargetLimits;
  private readonly subsystems = new Map<string, Subsystem>();
  private readonly discovery = Subsystem.discoveryService();
  private readonly connections = new Set<Connection>();
  private server: net.Server | null = null;
  private genctr = 1n;
  private commands = 0;
  private protocolErrors = 0;
  private successReads = 0;
  private closing: Promise<void> | null = null;
  private readonly context: TargetContext;

  constructor(private readonly options: NvmeTcpTargetOptions = {}) {
    this.logger = options.logger ?? silentLogger;
    const maxH2CData = options.maxH2CData ?? DEFAULTS.maxH2CData;
    if (!Number.isInteger(maxH2CData) || maxH2CData < 4096 || maxH2CData % 4 !== 0 || maxH2CData > MAX_TRANSFER) {
      throw ReplError.invalid(`maxH2CData ${maxH2CData} must be a multiple of 4 in [4096, ${MAX_TRANSFER}]`);
    }
    if (options.advertiseAddress !== undefined && (!net.isIP(options.advertiseAddress) || /^(0\.0\.0\.0|::)$/.test(options.advertiseAddress))) {
      throw ReplError.invalid(`advertiseAddress '${options.advertiseAddress}' must be a concrete IP address`);
    }
    const maxIoQueues = options.maxIoQueues ?? DEFAULTS.maxIoQueues;
    if (!Number.isInteger(maxIoQueues) || maxIoQueues < 1 || maxIoQueues > 0xfffe) {
      throw ReplError.invalid(`maxIoQueues ${maxIoQueues} out of range`);
    }
    this.limits = {
      maxH2CData,
      maxIoQueues,
      maxConnections: options.maxConnections ?? DEFAULTS.maxConnections,
      icReqTimeoutMs: options.icReqTimeoutMs ?? DEFAULTS.icReqTimeoutMs,
      keepAliveGraceMs: options.keepAliveGraceMs ?? DEFAULTS.keepAliveGraceMs,
      pduTimeoutMs: options.pduTimeoutMs ?? DEFAULTS.pduTimeoutMs,
      maxCapsuleData: IN_CAPSULE_DATA,
      maxTransfer: MAX_TRANSFER,
      maxC2HData: 128 * 1024,
      maxR2TBuffer: 32 * 1024 * 1024,
      staticReads: options.staticReads ?? true,
    };
    this.context = {
      logger: this.logger,
      limits: this.limits,
      findSubsystem: (nqn) => (nqn === DISCOVERY_NQN ? this.discovery : this.subsystems.get(nqn)),
      discoveryLog: (local) => this.discoveryLog(local),
      countCommand: () => void this.commands++,
      countProtocolError: () => void this.protocolErrors++,
      countSuccessRead: () => void this.successReads++,
    };
  }

  /** Exports a subsystem; throws ReplError E_INVALID on a duplicate NQN or bad namespace. */
  addSubsystem(config: NvmeSubsystemConfig): void {
    if (this.subsystems.has(config.nqn) || config.nqn === DISCOVERY_NQN) {
      throw ReplError.invalid(`subsystem ${config.nqn} already exists`);
    }
    if (config.nqn.length === 0 || Buffer.byteLength(config.nqn) > 223) throw ReplError.invalid(`invalid NQN '${config.nqn}'`);
    if (config.namespaces.length === 0) throw ReplError.invalid(`subsystem ${config.nqn} has no namespaces`);
    const sub = new Subsystem(
      {
        nqn: config.nqn,
        serial: config.serial,
        model: config.model ?? 'blockrep',
        firmware: config.firmware ?? '0.1',
        readOnly: config.readOnly ?? false,
      },
      false,
    );
    for (const ns of config.namespaces) sub.addNamespace(ns.nsid, ns.device, ns.nguid, ns.uuid);
    this.subsystems.set(config.nqn, sub);
    this.logger.info({ nqn: config.nqn, namespaces: config.namespaces.length }, 'subsystem added');
    this.discoveryChanged();
  }

  /** Removes a subsystem and tears down its controllers (their connections close). */
  async removeSubsystem(nqn: string): Promise<void> {
    const sub = this.subsystems.get(nqn);
    if (!sub) throw new ReplError('E_NOT_FOUND', `subsystem ${nqn} not found`);
    sub.removed = true;
    this.subsystems.delete(nqn);
    for (const ctrl of [...sub.controllers.values()]) ctrl.teardown('subsystem removed');
    this.logger.info({ nqn }, 'subsystem removed');
    this.discoveryChanged();
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    if (this.server) return Promise.reject(ReplError.invalid('target is already listening'));
    if (this.closing) return Promise.reject(ReplError.closed('target'));
    // paused: the Connection moves the socket to static-buffer reads before it reads anything
    const server = net.createServer({ noDelay: true, pauseOnConnect: true }, (socket) => this.onConnection(socket));
    this.server = server;
    return listenOn(server, host, port, this.logger, 'NVMe/TCP target').catch((err: unknown) => {
      this.server = null;
      throw err;
    });
  }

  address(): { host: string; port: number } | null {
    return serverAddress(this.server);
  }

  /** Stops listening and closes every connection; idempotent. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        const server = this.server;
        const closed = server ? new Promise<void>((r) => server.close(() => r())) : Promise.resolve();
        for (const sub of this.subsystems.values()) for (const c of [...sub.controllers.values()]) c.teardown('target closing');
        for (const c of [...this.discovery.controllers.values()]) c.teardown('target closing');
        for (const conn of [...this.connections]) conn.close('target closing');
        await closed;
      })();
    }
    return this.closing;
  }

  stats(): { connections: number; controllers: number; commands: number; protocolErrors: number; successReads: number } {
    let controllers = this.discovery.controllers.size;
    for (const sub of this.subsystems.values()) controllers += sub.controllers.size;
    return { connections: this.connections.size, controllers, commands: this.commands, protocolErrors: this.protocolErrors, successReads: this.successReads };
  }

  private onConnection(socket: net.Socket): void {
    if (this.closing || this.connections.size >= this.limits.maxConnections) {
      this.logger.warn({ remote: socket.remoteAddress, connections: this.connections.size }, 'connection refused (limit)');
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    let conn: Connection;
    try {
      conn = new Connection(socket, this.context, (c) => this.connections.delete(c));
    } catch (err) {
      this.logger.error({ err, remote: socket.remoteAddress }, 'connection setup failed');
      socket.on('error', () => undefined);
      socket.destroy();
      return;
    }
    this.connections.add(conn);
  }

  private discoveryChanged(): void {
    this.genctr++;
    for (const c of this.discovery.controllers.values()) c.raiseEvent(AsyncEvent.DISCOVERY_CHANGED);
  }

  private discoveryLog(local: { address: string; port: number }): Buffer {
    const traddr = this.options.advertiseAddress ?? local.address;
    const entries: DiscoveryEntry[] = [...this.subsystems.values()].map((sub) => ({
      subnqn: sub.identity.nqn,
      traddr,
      trsvcid: String(local.port),
      adrfam: net.isIPv6(traddr) ? 'ipv6' : 'ipv4',
      portid: 1,
      subtype: 2,
    }));
    return buildDiscoveryLog(this.genctr, entries);
  }
}
