/**
 * NvmeTcpHost: a small NVMe/TCP host (initiator) library. connect() runs the
 * same sequence as the Linux host: admin queue (ICReq, Connect with dynamic
 * CNTLID, CC enable, wait for CSTS.RDY, Identify, Number of Queues), then one
 * TCP connection per I/O queue, then a keep-alive timer (KATO / 2).
 *
 * I/O takes byte offsets, converts them to SLBA/NLB, splits at the
 * controller's maximum transfer, and spreads commands over the I/O queues
 * round-robin; each queue pipelines up to queueDepth commands. Failed
 * commands reject with NvmeStatusError (a ReplError carrying the status).
 * close() shuts the controller down (CC.SHN) and closes every queue.
 */
import * as crypto from 'node:crypto';
import { ReplError } from '../errors';
import { Logger, silentLogger } from '../log';
import { HostQueue } from './host-queue';
import {
  AssociationParams,
  ControllerInfo,
  NamespaceInfo,
  associate,
  connectQueue,
  defaultHostNqn,
  parseController,
  parseNamespace,
  propertyGet,
  shutdownController,
} from './host-session';
import { Cns, DISCOVERY_HEADER_LEN, DISCOVERY_NQN, DiscoveryEntry, IDENTIFY_LEN, LogId, bytesToUuid, parseDiscoveryLog } from './identify';
import { AdminOpcode, FeatureId, IoOpcode, encodeDsmRanges, SqeFields } from './sqe';

export type { DiscoveryEntry } from './identify';
export type { ControllerInfo, NamespaceInfo } from './host-session';
export { NvmeTcpBlockDevice } from './host-device';

export interface NvmeHostOptions {
  host: string;
  port: number;
  subnqn: string;
  hostnqn?: string;
  /** Canonical UUID. */
  hostid?: string;
  ioQueues?: number;
  queueDepth?: number;
  headerDigest?: boolean;
  dataDigest?: boolean;
  /** Keep-alive timeout in ms (default 5000; 0 disables keep alive). */
  kato?: number;
  /**
   * Disable SQ flow control (Connect CATTR b2, like `nvme connect --disable-sqflow`): successful reads
   * then complete with their last C2HData PDU (SUCCESS flag) instead of a separate CapsuleResp.
   */
  disableSqFlow?: boolean;
  logger?: Logger;
}

export class NvmeTcpHost {
  private readonly io: HostQueue[] = [];
  private rr = 0;
  private kaTimer: NodeJS.Timeout | null = null;
  private closing: Promise<void> | null = null;
  private readonly geometry = new Map<number, Promise<NamespaceInfo>>();

  private constructor(
    private readonly admin: HostQueue,
    readonly cntlid: number,
    readonly controller: ControllerInfo,
    private readonly params: AssociationParams,
  ) {}

  /** Connects a controller with `ioQueues` I/O queues (default 1) of `queueDepth` entries (default 32). */
  static async connect(options: NvmeHostOptions): Promise<NvmeTcpHost> {
    const hostid = options.hostid ?? crypto.randomUUID();
    const params: AssociationParams = {
      host: options.host,
      port: options.port,
      subnqn: options.subnqn,
      hostid,
      hostnqn: options.hostnqn ?? defaultHostNqn(hostid),
      kato: options.kato ?? 5000,
      headerDigest: options.headerDigest ?? false,
      dataDigest: options.dataDigest ?? false,
      disableSqFlow: options.disableSqFlow ?? false,
      logger: options.logger ?? silentLogger,
    };
    const { admin, cntlid, controller } = await associate(params);
    const host = new NvmeTcpHost(admin, cntlid, controller, params);
    try {
      await host.createIoQueues(options.ioQueues ?? 1, options.queueDepth ?? 32);
    } catch (err) {
      await host.close().catch(() => undefined);
      throw err;
    }
    host.startKeepAlive();
    return host;
  }

  /** Reads the discovery log page of a target and returns its entries. */
  static async discover(options: { host: string; port: number; hostnqn?: string }): Promise<DiscoveryEntry[]> {
    const hostid = crypto.randomUUID();
    const params: AssociationParams = {
      host: options.host,
      port: options.port,
      subnqn: DISCOVERY_NQN,
      hostid,
      hostnqn: options.hostnqn ?? defaultHostNqn(hostid),
      kato: 0,
      headerDigest: false,
      dataDigest: false,
      logger: silentLogger,
    };
    const { admin, cntlid, controller } = await associate(params);
    const host = new NvmeTcpHost(admin, cntlid, controller, params);
    try {
      const header = await host.getLogPage(LogId.DISCOVERY, DISCOVERY_HEADER_LEN, { rae: true });
      const numrec = Number(header.readBigUInt64LE(8));
      const total = DISCOVERY_HEADER_LEN * (1 + Math.min(numrec, 4096));
      const page = Buffer.alloc(total);
      header.copy(page);
      const step = Math.min(controller.maxTransfer, 64 * 1024);
      for (let off = DISCOVERY_HEADER_LEN; off < total; off += step) {
        const part = await host.getLogPage(LogId.DISCOVERY, Math.min(step, total - off), { lpo: off, rae: true });
        part.copy(page, off);
      }
      return parseDiscoveryLog(page).entries;
    } finally {
      await host.close();
    }
  }

  private async createIoQueues(wanted: number, queueDepth: number): Promise<void> {
    if (!Number.isInteger(wanted) || wanted < 1 || wanted > 0xfffe) throw ReplError.invalid(`ioQueues ${wanted} out of range`);
    const dw0 = await this.setFeatures(FeatureId.NUMBER_OF_QUEUES, ((wanted - 1) | ((wanted - 1) << 16)) >>> 0);
    const granted = Math.min(wanted, (dw0 & 0xffff) + 1, (dw0 >>> 16) + 1);
    const cap = await propertyGet(this.admin, 0x00, true);
    const depth = Math.max(2, Math.min(queueDepth, Number(cap & 0xffffn) + 1, this.controller.maxcmd || 4096));
    for (let qid = 1; qid <= granted; qid++) {
      const q = await HostQueue.open({
        host: this.params.host,
        port: this.params.port,
        qid,
        depth,
        digests: { hdgst: this.params.headerDigest, ddgst: this.params.dataDigest },
        maxDataPdu: this.controller.maxTransfer,
        logger: this.params.logger,
      });
      this.io.push(q);
      q.inCapsuleMax = Math.max(0, this.controller.ioccsz * 16 - 64);
      await connectQueue(q, this.params, qid, depth - 1, this.cntlid);
    }
  }

  private startKeepAlive(): void {
    if (this.params.kato === 0) return;
    this.kaTimer = setInterval(() => {
      this.admin.submit({ opcode: AdminOpcode.KEEP_ALIVE }, { what: 'keep alive' }).catch((err) => {
        this.params.logger.warn({ err }, 'keep alive failed');
      });
    }, Math.max(100, Math.floor(this.params.kato / 2)));
    this.kaTimer.unref();
  }

  get ioQueueCount(): number {
    return this.io.length;
  }

  /** Submits a raw admin command (tests, tools); resolves with DW0. */
  async adminCommand(fields: Omit<SqeFields, 'cid' | 'dataLength' | 'inCapsule'>, opts: { data?: Buffer; readInto?: Buffer } = {}): Promise<number> {
    const cqe = await this.admin.submit(fields, { ...opts, what: `admin opcode 0x${fields.opcode.toString(16)}` });
    return cqe.dw0;
  }

  /** Submits a raw I/O command on the next I/O queue; resolves with DW0. */
  async ioCommand(fields: Omit<SqeFields, 'cid' | 'dataLength' | 'inCapsule'>, opts: { data?: Buffer; readInto?: Buffer } = {}): Promise<number> {
    const cqe = await this.nextQueue().submit(fields, { ...opts, what: `I/O opcode 0x${fields.opcode.toString(16)}` });
    return cqe.dw0;
  }

  async identifyController(): Promise<ControllerInfo> {
    const id = Buffer.alloc(IDENTIFY_LEN);
    await this.admin.submit({ opcode: AdminOpcode.IDENTIFY, cdw10: Cns.CONTROLLER }, { readInto: id, what: 'identify controller' });
    return parseController(id);
  }

  async identifyNamespace(nsid: number): Promise<NamespaceInfo> {
    const id = Buffer.alloc(IDENTIFY_LEN);
    await this.admin.submit({ opcode: AdminOpcode.IDENTIFY, nsid, cdw10: Cns.NAMESPACE }, { readInto: id, what: `identify namespace ${nsid}` });
    return parseNamespace(nsid, id);
  }

  /** Identify CNS 3: NGUID / UUID / CSI descriptors of a namespace. */
  async namespaceIds(nsid: number): Promise<{ nguid?: Buffer; uuid?: string; csi?: number }> {
    const b = Buffer.alloc(IDENTIFY_LEN);
    await this.admin.submit({ opcode: AdminOpcode.IDENTIFY, nsid, cdw10: Cns.NS_DESCRIPTORS }, { readInto: b, what: 'ns descriptors' });
    const out: { nguid?: Buffer; uuid?: string; csi?: number } = {};
    for (let off = 0; off + 4 <= b.length && b[off] !== 0; ) {
      const type = b[off]!;
      const len = b[off + 1]!;
      const id = b.subarray(off + 4, off + 4 + len);
      if (type === 2) out.nguid = Buffer.from(id);
      if (type === 3) out.uuid = bytesToUuid(id);
      if (type === 4) out.csi = id[0];
      off += 4 + len;
    }
    return out;
  }

  async activeNamespaces(): Promise<number[]> {
    const b = Buffer.alloc(IDENTIFY_LEN);
    await this.admin.submit({ opcode: AdminOpcode.IDENTIFY, nsid: 0, cdw10: Cns.ACTIVE_NS_LIST }, { readInto: b, what: 'active namespace list' });
    const out: number[] = [];
    for (let off = 0; off < b.length; off += 4) {
      const n = b.readUInt32LE(off);
      if (n === 0) break;
      out.push(n);
    }
    return out;
  }

  async getLogPage(lid: number, length: number, opts: { lpo?: number; nsid?: number; rae?: boolean } = {}): Promise<Buffer> {
    if (length <= 0 || length % 4 !== 0) throw ReplError.invalid(`log page length ${length} must be a positive multiple of 4`);
    const numd = length / 4 - 1;
    const lpo = opts.lpo ?? 0;
    const out = Buffer.alloc(length);
    await this.admin.submit(
      {
        opcode: AdminOpcode.GET_LOG_PAGE,
        nsid: opts.nsid ?? 0xffffffff,
        cdw10: (lid | (opts.rae ? 0x8000 : 0) | ((numd & 0xffff) << 16)) >>> 0,
        cdw11: numd >>> 16,
        cdw12: lpo % 2 ** 32,
        cdw13: Math.floor(lpo / 2 ** 32),
      },
      { readInto: out, what: `get log page 0x${lid.toString(16)}` },
    );
    return out;
  }

  async setFeatures(fid: number, cdw11: number): Promise<number> {
    const cqe = await this.admin.submit({ opcode: AdminOpcode.SET_FEATURES, cdw10: fid, cdw11 }, { what: `set features 0x${fid.toString(16)}` });
    return cqe.dw0;
  }

  async getFeatures(fid: number, sel = 0): Promise<number> {
    const cqe = await this.admin.submit({ opcode: AdminOpcode.GET_FEATURES, cdw10: fid | (sel << 8) }, { what: `get features 0x${fid.toString(16)}` });
    return cqe.dw0;
  }

  async keepAlive(): Promise<void> {
    await this.admin.submit({ opcode: AdminOpcode.KEEP_ALIVE }, { what: 'keep alive' });
  }

  private nextQueue(): HostQueue {
    if (this.closing) throw ReplError.closed('NVMe/TCP host');
    if (this.io.length === 0) throw ReplError.invalid('no I/O queues');
    const q = this.io[this.rr++ % this.io.length]!;
    return q;
  }

  private namespace(nsid: number): Promise<NamespaceInfo> {
    let p = this.geometry.get(nsid);
    if (!p) {
      p = this.identifyNamespace(nsid);
      this.geometry.set(nsid, p);
      p.catch(() => this.geometry.delete(nsid));
    }
    return p;
  }

  /** Converts a byte range to blocks; commands are at most `maxBlocks` long. */
  private async blocks(nsid: number, offset: number, length: number): Promise<{ lba: number; maxChunk: number }> {
    const ns = await this.namespace(nsid);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw ReplError.range(offset, length, Number(ns.nsze) * ns.lbaSize);
    }
    if (offset % ns.lbaSize !== 0 || length % ns.lbaSize !== 0) {
      throw ReplError.invalid(`offset ${offset} / length ${length} not aligned to the ${ns.lbaSize}-byte block size`);
    }
    return { lba: ns.lbaSize, maxChunk: Math.min(this.controller.maxTransfer, 65536 * ns.lbaSize) };
  }

  private static lbaFields(offset: number, lba: number, length: number, extra = 0): Pick<SqeFields, 'cdw10' | 'cdw11' | 'cdw12'> {
    const slba = offset / lba;
    return { cdw10: slba % 2 ** 32, cdw11: Math.floor(slba / 2 ** 32), cdw12: ((length / lba - 1) | extra) >>> 0 };
  }

  async read(nsid: number, offset: number, length: number): Promise<Buffer> {
    const { lba, maxChunk } = await this.blocks(nsid, offset, length);
    const out = Buffer.allocUnsafe(length);
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < length; pos += maxChunk) {
      const n = Math.min(maxChunk, length - pos);
      const fields = { opcode: IoOpcode.READ, nsid, ...NvmeTcpHost.lbaFields(offset + pos, lba, n) };
      parts.push(this.nextQueue().submit(fields, { readInto: out.subarray(pos, pos + n), what: 'read' }));
    }
    await Promise.all(parts);
    return out;
  }

  async write(nsid: number, offset: number, data: Buffer, options?: { fua?: boolean }): Promise<void> {
    const { lba, maxChunk } = await this.blocks(nsid, offset, data.length);
    const fua = options?.fua ? 1 << 30 : 0;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < data.length; pos += maxChunk) {
      const n = Math.min(maxChunk, data.length - pos);
      const fields = { opcode: IoOpcode.WRITE, nsid, ...NvmeTcpHost.lbaFields(offset + pos, lba, n, fua) };
      parts.push(this.nextQueue().submit(fields, { data: data.subarray(pos, pos + n), what: 'write' }));
    }
    await Promise.all(parts);
  }

  async writeZeroes(nsid: number, offset: number, length: number, options?: { fua?: boolean }): Promise<void> {
    const { lba } = await this.blocks(nsid, offset, length);
    const fua = options?.fua ? 1 << 30 : 0;
    const maxChunk = 65536 * lba;
    const parts: Promise<unknown>[] = [];
    for (let pos = 0; pos < length; pos += maxChunk) {
      const n = Math.min(maxChunk, length - pos);
      const fields = { opcode: IoOpcode.WRITE_ZEROES, nsid, ...NvmeTcpHost.lbaFields(offset + pos, lba, n, fua) };
      parts.push(this.nextQueue().submit(fields, { what: 'write zeroes' }));
    }
    await Promise.all(parts);
  }

  /** Dataset Management with the deallocate attribute (256 ranges per command). */
  async deallocate(nsid: number, offset: number, length: number): Promise<void> {
    const { lba } = await this.blocks(nsid, offset, length);
    const maxRange = 2 ** 31 * lba;
    const ranges = [];
    for (let pos = 0; pos < length; pos += maxRange) {
      const n = Math.min(maxRange, length - pos);
      ranges.push({ attributes: 0, blocks: n / lba, slba: BigInt((offset + pos) / lba) });
    }
    const parts: Promise<unknown>[] = [];
    for (let i = 0; i < ranges.length; i += 256) {
      const batch = ranges.slice(i, i + 256);
      const fields = { opcode: IoOpcode.DATASET_MANAGEMENT, nsid, cdw10: batch.length - 1, cdw11: 0x4 };
      parts.push(this.nextQueue().submit(fields, { data: encodeDsmRanges(batch), what: 'deallocate' }));
    }
    await Promise.all(parts);
  }

  async flush(nsid: number): Promise<void> {
    await this.nextQueue().submit({ opcode: IoOpcode.FLUSH, nsid }, { what: 'flush' });
  }

  /** Shuts the controller down (CC.SHN, bounded wait for SHST) and closes every queue; idempotent. */
  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        if (this.kaTimer) clearInterval(this.kaTimer);
        try {
          if (this.admin.isOpen) await shutdownController(this.admin);
        } catch (err) {
          this.params.logger.debug({ err }, 'shutdown handshake failed; closing anyway');
        } finally {
          for (const q of this.io) q.close();
          this.admin.close();
        }
      })();
    }
    return this.closing;
  }
}
