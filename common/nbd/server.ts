/**
 * NbdServer: a TCP listener serving named exports over fixed-newstyle NBD.
 * The agent uses it as a front end for the live volume; the hub adds and
 * removes one export per recovery view at run time.
 *
 * Invariants:
 *  - every connection to an export uses the export's one BlockDevice, so all
 *    connections share one consistency domain (we advertise CAN_MULTI_CONN);
 *  - the server never closes devices: whoever added an export owns it;
 *  - removeExport() first hides the export from new handshakes, then drains
 *    and closes the connections serving it; close() does the same for all.
 * Per-connection protocol handling lives in connection.ts; a misbehaving
 * client only ever loses its own connection.
 */
import * as net from 'node:net';
import { BlockDevice } from '../block/device';
import { listenOn, serverAddress } from '../listen';
import { ReplError } from '../errors';
import { Logger, silentLogger } from '../log';
import { ConnectionLimits, NbdConnection } from './connection';
import { ExportLookup, ServedExport } from './handshake';
import { MAX_STRING_LENGTH } from './protocol';
import { DEFAULT_READER_LIMITS } from './server-reader';

export interface NbdExportConfig {
  name: string;
  device: BlockDevice;
  description?: string;
  readOnly?: boolean;
}

export interface NbdServerOptions {
  logger?: Logger;
  maxConnections?: number;
  handshakeTimeoutMs?: number;
  /** Static-buffer socket reads (default true; false: Node's stream reads, slower). */
  staticReads?: boolean;
}

export const DEFAULT_MAX_CONNECTIONS = 256;
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

export class NbdServer {
  private readonly exports = new Map<string, ServedExport>();
  private readonly connections = new Set<NbdConnection>();
  private readonly logger: Logger;
  private readonly maxConnections: number;
  private readonly limits: ConnectionLimits;
  private server: net.Server | null = null;
  private closing: Promise<void> | null = null;
  private readonly counters = { requests: 0, protocolErrors: 0 };
  private readonly lookup: ExportLookup = {
    resolve: (name) => this.resolve(name),
    list: () => [...this.exports.values()],
  };

  constructor(options: NbdServerOptions = {}) {
    this.logger = options.logger ?? silentLogger;
    this.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.limits = {
      ...DEFAULT_READER_LIMITS,
      handshakeTimeoutMs: options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
      maxOptions: 1024,
      maxInFlight: 128,
      maxInFlightBytes: 64 * 1024 * 1024,
      drainTimeoutMs: 10_000,
      staticReads: options.staticReads ?? true,
    };
  }

  addExport(config: NbdExportConfig): void {
    const bytes = Buffer.byteLength(config.name, 'utf8');
    if (bytes > MAX_STRING_LENGTH || config.name.includes('\0')) {
      throw ReplError.invalid(`invalid NBD export name '${config.name.slice(0, 64)}'`);
    }
    if (this.exports.has(config.name)) throw ReplError.invalid(`NBD export '${config.name}' already exists`);
    const description = config.description ?? '';
    if (Buffer.byteLength(description, 'utf8') > MAX_STRING_LENGTH) {
      throw ReplError.invalid(`description of NBD export '${config.name}' is too long`);
    }
    this.exports.set(config.name, {
      name: config.name,
      device: config.device,
      description,
      readOnly: (config.readOnly ?? false) || config.device.info.readOnly,
    });
    this.logger.info({ export: config.name, size: config.device.info.size }, 'nbd export added');
  }

  async removeExport(name: string): Promise<void> {
    if (!this.exports.delete(name)) return;
    const victims = [...this.connections].filter((c) => c.exportName === name);
    await Promise.all(victims.map((c) => c.shutdown()));
    this.logger.info({ export: name, connections: victims.length }, 'nbd export removed');
  }

  hasExport(name: string): boolean {
    return this.exports.has(name);
  }

  listen(host: string, port: number): Promise<{ host: string; port: number }> {
    if (this.server) return Promise.reject(ReplError.invalid('NBD server is already listening'));
    if (this.closing) return Promise.reject(ReplError.closed('NBD server'));
    // paused: NbdConnection moves the socket to static-buffer reads before it reads anything
    const server = net.createServer({ pauseOnConnect: true }, (socket) => this.onConnection(socket));
    this.server = server;
    return listenOn(server, host, port, this.logger, 'nbd server').catch((err: unknown) => {
      this.server = null;
      throw err;
    });
  }

  address(): { host: string; port: number } | null {
    return serverAddress(this.server);
  }

  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        const server = this.server;
        const stopped = server
          ? new Promise<void>((resolve) => server.close(() => resolve()))
          : Promise.resolve();
        await Promise.all([...this.connections].map((c) => c.shutdown()));
        await stopped;
        this.server = null;
      })();
    }
    return this.closing;
  }

  stats(): { connections: number; requests: number; protocolErrors: number } {
    return { connections: this.connections.size, ...this.counters };
  }

  private resolve(name: string): ServedExport | null {
    const exact = this.exports.get(name);
    if (exact) return exact;
    if (name === '' && this.exports.size === 1) return this.exports.values().next().value ?? null;
    return null;
  }

  private onConnection(socket: net.Socket): void {
    if (this.closing || this.connections.size >= this.maxConnections) {
      this.logger.warn({ peer: socket.remoteAddress }, 'nbd connection refused (limit or closing)');
      socket.destroy();
      return;
    }
    let conn: NbdConnection;
    try {
      conn = new NbdConnection(socket, {
        exports: this.lookup,
        logger: this.logger,
        limits: this.limits,
        onRequest: () => this.counters.requests++,
        onProtocolError: () => this.counters.protocolErrors++,
        onClosed: (c) => this.connections.delete(c),
      });
    } catch (err) {
      this.logger.error({ err, peer: socket.remoteAddress }, 'nbd connection setup failed');
      socket.destroy();
      return;
    }
    this.connections.add(conn);
  }
}
