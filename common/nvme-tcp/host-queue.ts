/**
 * HostQueue: the host side of one NVMe/TCP queue (one TCP connection).
 *
 *   connecting --ICResp ok--> open --close()/error/TermReq--> closed
 *
 * Up to `depth` commands are outstanding at once (CIDs come from a free list;
 * further submissions wait in FIFO order), so callers can pipeline. Writes
 * that fit the in-capsule limit travel in the CapsuleCmd, larger ones answer
 * the target's R2Ts with H2CData PDUs of at most MAXH2CDATA bytes. Read data
 * (C2HData) is copied straight into the caller's buffer at DATAO after a
 * bounds check. Any protocol violation by the target closes the queue and
 * fails every outstanding command with E_PROTOCOL; a closed socket fails them
 * with E_CLOSED.
 * Reads land in the process-wide static buffer (block/static-reads.ts): the
 * reader copies what it keeps, and C2HData is placed in the caller's buffer.
 */
import * as net from 'node:net';
import { payloadPool } from '../block/buffer-pool';
import { staticReadOption } from '../block/static-reads';
import { ReplError } from '../errors';
import type { Logger } from '../log';
import {
  Digests,
  PduFlag,
  PduType,
  decodeCapsuleResp,
  decodeDataPduHeader,
  decodeIcResp,
  decodeR2t,
  decodeTermReq,
  encodeCapsuleCmd,
  encodeDataPdu,
  encodeIcReq,
  Cqe,
} from './pdu';
import { Pdu, PduReader } from './pdu-reader';
import { SglId, SqeFields, encodeSqe } from './sqe';
import { statusError } from './status';

export interface HostQueueOptions {
  host: string;
  port: number;
  qid: number;
  depth: number;
  digests: Digests;
  /** Largest C2HData PDU accepted. */
  maxDataPdu?: number;
  connectTimeoutMs?: number;
  /** A command outstanding longer than this closes the queue with E_TIMEOUT (default 30 s, like Linux). */
  commandTimeoutMs?: number;
  logger: Logger;
}

export interface SubmitOptions {
  /** Host-to-controller data. */
  data?: Buffer;
  /** Controller-to-host data is written here (its length is the transfer length). */
  readInto?: Buffer;
  /** Human-readable command name for errors. */
  what: string;
}

interface Outstanding {
  cid: number;
  data: Buffer | null;
  readInto: Buffer | null;
  received: number;
  /** Set when data arrived damaged (data digest mismatch); reported with the response. */
  failure: ReplError | null;
  /** Date.now() at submission, for the command timeout. */
  since: number;
  what: string;
  resolve(cqe: Cqe): void;
  reject(err: Error): void;
}

export class HostQueue {
  /** Bytes of in-capsule data the target accepts on this queue. */
  inCapsuleMax = 8192;
  maxH2CData = 4096;
  private readonly reader: PduReader;
  private readonly outstanding = new Map<number, Outstanding>();
  private readonly freeCids: number[] = [];
  private readonly waiters: Array<(cid: number) => void> = [];
  private closedError: ReplError | null = null;
  private corked = false;
  /** CID generation counter (bits 15:12), like Linux, to catch stale completions. */
  private generation = 0;
  private sweeper: NodeJS.Timeout | null = null;
  private readonly socket: net.Socket;
  /** Where socket chunks go: the ICResp wait of open(), then onData(). */
  private onChunk: (chunk: Buffer) => void = () => undefined;

  private constructor(readonly options: HostQueueOptions) {
    this.reader = new PduReader({
      role: 'host',
      maxDataPdu: options.maxDataPdu ?? 4 * 1024 * 1024,
      sink: (header, type, dataLen) => (type === PduType.C2H_DATA ? this.c2hSink(header, dataLen) : null),
      transientChunks: true,
      pool: payloadPool,
    });
    for (let i = 0; i < options.depth; i++) this.freeCids.push(i);
    this.socket = net.connect({ host: options.host, port: options.port, noDelay: true, onread: staticReadOption((c) => this.onChunk(c)) });
  }

  get qid(): number {
    return this.options.qid;
  }

  get isOpen(): boolean {
    return this.closedError === null;
  }

  /** Connects the socket and exchanges ICReq/ICResp. */
  static open(options: HostQueueOptions): Promise<HostQueue> {
    if (options.depth < 1 || options.depth > 4096) throw ReplError.invalid(`queue depth ${options.depth} out of range`);
    return new Promise((resolve, reject) => {
      const q = new HostQueue(options);
      const socket = q.socket;
      const timer = setTimeout(() => fail(new ReplError('E_TIMEOUT', 'NVMe/TCP connection setup timed out')), options.connectTimeoutMs ?? 10_000);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        socket.destroy();
        reject(err instanceof ReplError ? err : new ReplError('E_CLOSED', err.message, { cause: err }));
      };
      socket.once('error', fail);
      socket.once('close', () => fail(ReplError.closed('NVMe/TCP connection')));
      socket.once('connect', () => socket.write(encodeIcReq({ pfv: 0, hpda: 0, dgst: (options.digests.hdgst ? 1 : 0) | (options.digests.ddgst ? 2 : 0), maxr2t: 0 })));
      const onIc = (chunk: Buffer): void => {
        let pdus: Pdu[];
        try {
          pdus = q.reader.push(chunk);
        } catch (err) {
          fail(err as Error);
          return;
        }
        if (pdus.length === 0) return;
        q.onChunk = () => undefined;
        socket.removeAllListeners('error');
        socket.removeAllListeners('close');
        clearTimeout(timer);
        const pdu = pdus[0]!;
        try {
          q.onIcResp(pdu);
        } catch (err) {
          socket.destroy();
          reject(err);
          return;
        }
        q.attach();
        resolve(q);
      };
      q.onChunk = onIc;
    });
  }

  private onIcResp(pdu: Pdu): void {
    if (pdu.type !== PduType.IC_RESP) throw ReplError.protocol(`expected ICResp, got PDU type ${pdu.type}`);
    const r = decodeIcResp(pdu.header);
    const want = (this.options.digests.hdgst ? 1 : 0) | (this.options.digests.ddgst ? 2 : 0);
    if (r.pfv !== 0 || r.cpda !== 0 || r.dgst !== want || r.maxh2cdata < 4096 || r.maxh2cdata % 4 !== 0) {
      throw new ReplError('E_HANDSHAKE', `unacceptable ICResp ${JSON.stringify(r)}`);
    }
    this.maxH2CData = r.maxh2cdata;
    this.reader.setDigests(this.options.digests.hdgst, this.options.digests.ddgst);
  }

  private attach(): void {
    this.onChunk = (chunk) => this.onData(chunk);
    this.socket.on('error', (err) => this.options.logger.debug({ err, qid: this.qid }, 'socket error'));
    this.socket.on('close', () => this.shutdown(ReplError.closed(`NVMe/TCP queue ${this.qid}`)));
    const timeoutMs = this.options.commandTimeoutMs ?? 30_000;
    this.sweeper = setInterval(() => this.sweep(timeoutMs), Math.min(1000, timeoutMs));
    this.sweeper.unref();
    this.onData(Buffer.alloc(0));
  }

  /** Outstanding commands are in submission order (Map order), so the first one is the oldest. */
  private sweep(timeoutMs: number): void {
    const oldest = this.outstanding.values().next().value as Outstanding | undefined;
    if (oldest && Date.now() - oldest.since > timeoutMs) {
      this.options.logger.warn({ qid: this.qid, what: oldest.what, timeoutMs }, 'command timed out; closing queue');
      this.shutdown(new ReplError('E_TIMEOUT', `${oldest.what} timed out after ${timeoutMs} ms`));
    }
  }

  /** Submits one command and resolves with its CQE; rejects on a non-zero status. */
  submit(fields: Omit<SqeFields, 'cid' | 'dataLength' | 'inCapsule'>, opts: SubmitOptions): Promise<Cqe> {
    if (this.closedError) return Promise.reject(this.closedError);
    const slot = this.freeCids.pop();
    if (slot !== undefined) return this.issue(slot, fields, opts);
    return new Promise<number>((r) => this.waiters.push(r)).then((s) => this.issue(s, fields, opts));
  }

  private issue(slot: number, fields: Omit<SqeFields, 'cid' | 'dataLength' | 'inCapsule'>, opts: SubmitOptions): Promise<Cqe> {
    if (this.closedError) return Promise.reject(this.closedError);
    this.generation = (this.generation + 1) & 0xf;
    const cid = (this.generation << 12) | slot;
    const data = opts.data ?? null;
    const readInto = opts.readInto ?? null;
    const inCapsule = data !== null && data.length <= this.inCapsuleMax;
    const sqe = encodeSqe(fields);
    // CID and SGL are ours to fill in (no object spread on the hot path)
    sqe.writeUInt16LE(cid, 2);
    sqe.writeUInt32LE(data ? data.length : readInto ? readInto.length : 0, 32);
    sqe[39] = inCapsule ? SglId.DATA_BLOCK_OFFSET : SglId.TRANSPORT_DATA_BLOCK;
    return new Promise<Cqe>((resolve, reject) => {
      this.outstanding.set(cid, { cid, data, readInto, received: 0, failure: null, since: Date.now(), what: opts.what, resolve, reject });
      this.send(encodeCapsuleCmd(sqe, inCapsule ? data : null, this.options.digests));
    });
  }

  private release(o: Outstanding): void {
    this.outstanding.delete(o.cid);
    const slot = o.cid & 0x0fff;
    const waiter = this.waiters.shift();
    if (waiter) waiter(slot);
    else this.freeCids.push(slot);
  }

  private send(parts: Buffer[]): void {
    if (!this.corked) {
      this.socket.cork();
      this.corked = true;
      setImmediate(() => {
        this.corked = false;
        if (!this.socket.destroyed) this.socket.uncork();
      });
    }
    for (const p of parts) this.socket.write(p);
  }

  private onData(chunk: Buffer): void {
    if (this.closedError) return;
    try {
      for (const pdu of this.reader.push(chunk)) {
        if (this.closedError) return;
        this.onPdu(pdu);
      }
    } catch (err) {
      const e = err instanceof ReplError ? err : ReplError.protocol(String(err));
      this.options.logger.warn({ err: e, qid: this.qid }, 'protocol error from target');
      this.shutdown(e);
    }
  }

  private onPdu(pdu: Pdu): void {
    switch (pdu.type) {
      case PduType.CAPSULE_RESP:
        return this.onResponse(decodeCapsuleResp(pdu.header));
      case PduType.C2H_DATA:
        return this.onC2HData(pdu);
      case PduType.R2T:
        return this.onR2T(pdu);
      case PduType.C2H_TERM_REQ: {
        const t = decodeTermReq(pdu.header, pdu.data);
        throw ReplError.protocol(`target sent C2HTermReq (FES ${t.fes}, FEI ${t.fei})`);
      }
      default:
        throw ReplError.protocol(`unexpected PDU type ${pdu.type}`);
    }
  }

  private find(cid: number, what: string): Outstanding {
    const o = this.outstanding.get(cid);
    if (!o) throw ReplError.protocol(`${what} for unknown CID ${cid}`);
    return o;
  }

  private onResponse(cqe: Cqe): void {
    const o = this.find(cqe.cid, 'CapsuleResp');
    this.release(o);
    if (cqe.status >> 1 !== 0) o.reject(statusError(cqe.status, o.what));
    else if (o.failure) o.reject(o.failure);
    else if (o.readInto && o.received !== o.readInto.length) {
      o.reject(ReplError.protocol(`${o.what}: short read (${o.received} of ${o.readInto.length} bytes)`));
    } else o.resolve(cqe);
  }

  /** Valid C2HData payloads are assembled directly in the caller's read buffer. */
  private c2hSink(header: Buffer, dataLen: number): Buffer | null {
    const h = decodeDataPduHeader(header);
    const o = this.outstanding.get(h.cccid);
    if (!o || !o.readInto || h.datal !== dataLen || h.datao !== o.received || h.datao + h.datal > o.readInto.length) return null;
    return o.readInto.subarray(h.datao, h.datao + h.datal);
  }

  private onC2HData(pdu: Pdu): void {
    const h = decodeDataPduHeader(pdu.header);
    const o = this.find(h.cccid, 'C2HData');
    const data = pdu.data!;
    if (!o.readInto || h.datal !== data.length || h.datao !== o.received || h.datao + h.datal > o.readInto.length) {
      throw ReplError.protocol(`${o.what}: C2HData outside the command buffer`);
    }
    // damaged data fails the command once its response arrives (the Linux host's Data Transfer Error)
    if (!pdu.dataDigestOk) o.failure = ReplError.io(`${o.what}: C2H data digest mismatch`);
    if (!pdu.placed) {
      data.copy(o.readInto, h.datao);
      payloadPool.release(data);
    }
    o.received += h.datal;
    if (pdu.flags & PduFlag.SUCCESS) this.onResponse({ dw0: 0, dw1: 0, sqhd: 0, sqid: this.qid, cid: h.cccid, status: 0 });
  }

  private onR2T(pdu: Pdu): void {
    const r = decodeR2t(pdu.header);
    const o = this.find(r.cccid, 'R2T');
    if (!o.data || r.r2tl === 0 || r.r2to + r.r2tl > o.data.length) throw ReplError.protocol(`${o.what}: R2T outside the command buffer`);
    const end = r.r2to + r.r2tl;
    for (let off = r.r2to; off < end; off += this.maxH2CData) {
      const part = o.data.subarray(off, Math.min(end, off + this.maxH2CData));
      const flags = off + part.length >= end ? PduFlag.LAST_PDU : 0;
      this.send(encodeDataPdu(PduType.H2C_DATA, { cccid: r.cccid, ttag: r.ttag, datao: off }, part, flags, this.options.digests));
    }
  }

  /** Fails everything outstanding and closes the socket; idempotent. */
  private shutdown(err: ReplError): void {
    if (this.closedError) return;
    this.closedError = err;
    if (this.sweeper) clearInterval(this.sweeper);
    this.socket.destroy();
    for (const o of [...this.outstanding.values()]) o.reject(err);
    this.outstanding.clear();
    for (const w of this.waiters.splice(0)) w(0);
  }

  close(): void {
    this.shutdown(ReplError.closed(`NVMe/TCP queue ${this.qid}`));
  }
}
