/**
 * Connection: one TCP connection = one NVMe queue (admin or I/O).
 *
 *   awaiting-icreq --ICReq--> awaiting-connect --Connect ok--> connected
 *         |                        |                              |
 *         +--------- fatal error (C2HTermReq) / Disconnect -------+--> closing --> closed
 *         (any state) --socket closed / teardown---------------------------------> closed
 *
 * Commands run concurrently and complete in any order. A write whose data is
 * not in the capsule is solicited with R2T (one R2T per command at a time,
 * R2TL <= MAXH2CDATA, so any MAXR2T and pre-5.16 hosts are fine); solicited
 * buffers per connection are bounded by maxR2TBuffer, beyond which commands
 * wait for their R2T. PDUs written within one event-loop turn (socket data and
 * device completions) are corked and leave in one writev, uncorked from
 * setImmediate; read data goes out as separate chunks (no copies). When
 * MAX_UNSENT_BYTES wait in the socket we stop reading until 'drain' (Node's
 * 16 KiB high-water mark would stall a QD32 read batch after a few replies).
 * Invariants: nothing is sent before ICReq; after a TermReq or in 'closed'
 * nothing more is processed; handler exceptions never escape onData().
 * Reads: the accepted socket (paused by the target) is moved to
 * static-buffer reads (block/static-reads.ts); the reader then copies what it
 * keeps, write data lands in pooled buffers, and complete() returns a
 * command's buffer to the pool once the command (and so the device write) is
 * done.
 */
import type { Socket } from 'node:net';
import { payloadPool } from '../block/buffer-pool';
import { adoptStaticReads } from '../block/static-reads';
import type { Logger } from '../log';
import { handleAdmin } from './admin';
import { Completion, QueueContext, TargetContext, fail } from './command';
import type { Controller, QueueHandle } from './controller';
import { handleFabrics } from './fabrics';
import { handleIo, precheckWrite } from './io';
import {
  CH_LEN,
  Fes,
  PduFlag,
  PduType,
  SQE_LEN,
  decodeIcReq,
  encodeCapsuleResp,
  encodeDataPdu,
  encodeIcResp,
  encodeR2t,
  encodeTermReq,
} from './pdu';
import { Pdu, PduError, PduReader } from './pdu-reader';
import { FABRICS_OPCODE, FabricsType, SglId, decodeSqe, directionOf } from './sqe';
import { PendingCommand, SolicitedWrites } from './solicited-writes';
import { Status, toNvmeStatus } from './status';

export type QueueState = 'awaiting-icreq' | 'awaiting-connect' | 'connected' | 'closing' | 'closed';

const TRANSITIONS: Record<QueueState, readonly QueueState[]> = {
  'awaiting-icreq': ['awaiting-connect', 'closing', 'closed'],
  'awaiting-connect': ['connected', 'closing', 'closed'],
  connected: ['closing', 'closed'],
  closing: ['closed'],
  closed: [],
};

/** Hard bound on commands outstanding on one queue (2 x the largest queue the host may create). */
const MAX_OUTSTANDING = 256;
/** How long a closing connection may linger before it is destroyed. */
const CLOSE_LINGER_MS = 1000;
/** Bytes queued in the socket beyond which we stop reading commands until 'drain'. */
const MAX_UNSENT_BYTES = 4 * 1024 * 1024;
const EMPTY = Buffer.alloc(0);

export class Connection implements QueueContext, QueueHandle {
  state: QueueState = 'awaiting-icreq';
  qid = -1;
  controller: Controller | null = null;
  readonly local: { address: string; port: number };
  readonly logger: Logger;
  private readonly reader: PduReader;
  private digests = { hdgst: false, ddgst: false };
  /** C2H data alignment asked by the host (HPDA). */
  private c2hAlign = 4;
  private sqsize = 31;
  private sqhd = 0;
  private sqFlowDisabled = false;
  /** Outstanding commands by CID. */
  private readonly commands = new Map<number, PendingCommand>();
  private readonly writes: SolicitedWrites;
  private corked = false;
  /** Reading is paused until the socket drains below MAX_UNSENT_BYTES. */
  private waitingDrain = false;
  private resumeAfterIc = false;
  /** ICReq deadline, then the deadline of a partially received PDU. */
  private timer: NodeJS.Timeout | null = null;

  private readonly socket: Socket;

  /** `accepted` comes from a server created with pauseOnConnect. */
  constructor(
    accepted: Socket,
    readonly target: TargetContext,
    private readonly onClosed: (c: Connection) => void,
  ) {
    const adopted = target.limits.staticReads ? adoptStaticReads(accepted, (chunk) => this.onData(chunk)) : null;
    const socket = adopted ?? accepted;
    this.socket = socket;
    const addr = socket.localAddress ?? '127.0.0.1';
    this.local = { address: addr.startsWith('::ffff:') ? addr.slice(7) : addr, port: socket.localPort ?? 0 };
    this.logger = target.logger.child({ peer: `${socket.remoteAddress}:${socket.remotePort}` });
    const limits = target.limits;
    this.reader = new PduReader({
      role: 'target',
      maxCapsuleData: limits.maxCapsuleData,
      maxDataPdu: limits.maxH2CData,
      sink: (header, type, dataLen) => (type === PduType.H2C_DATA ? this.writes.sink(header, dataLen) : null),
      transientChunks: adopted !== null,
      pool: payloadPool,
    });
    this.writes = new SolicitedWrites(limits.maxH2CData, limits.maxR2TBuffer, {
      sendR2T: (r) => this.send(encodeR2t(r, this.digests)),
      ready: (cmd) => (cmd.failStatus !== 0 ? this.complete(cmd, fail(cmd.failStatus)) : this.execute(cmd)),
    });
    socket.setNoDelay(true);
    if (!adopted) {
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      socket.resume();
    }
    socket.on('end', () => this.onEnd());
    socket.on('error', (err) => this.logger.debug({ err }, 'socket error'));
    socket.on('close', () => this.onSocketClose());
    this.setTimer(limits.icReqTimeoutMs, 'no ICReq within timeout');
  }

  get handle(): QueueHandle {
    return this;
  }

  // ------------------------------------------------------------ lifecycle

  private transition(to: QueueState, reason: string): void {
    if (!TRANSITIONS[this.state].includes(to)) {
      throw new Error(`internal: illegal queue transition ${this.state} -> ${to} (${reason})`);
    }
    this.logger.debug({ from: this.state, to, reason, qid: this.qid }, 'queue state');
    this.state = to;
  }

  /** Drops the connection at once (teardown, reset, H2CTermReq). */
  close(reason: string): void {
    if (this.state === 'closed') return;
    this.logger.info({ reason, qid: this.qid, cntlid: this.controller?.cntlid }, 'closing queue');
    this.socket.destroy();
    this.onSocketClose();
  }

  /** Flushes what is queued, then closes; destroys after a short linger. */
  private endGracefully(reason: string): void {
    if (this.state === 'closing' || this.state === 'closed') return;
    this.transition('closing', reason);
    this.socket.end();
    // keep reading (onData drops it now) so the peer's hang-up is seen even if
    // reading was paused for 'drain': a paused static-buffer socket misses EOF
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), CLOSE_LINGER_MS).unref();
  }

  private onEnd(): void {
    if (this.state !== 'closed' && this.reader.midPdu) this.logger.warn({ qid: this.qid }, 'peer closed in the middle of a PDU');
    this.socket.destroy();
  }

  private onSocketClose(): void {
    if (this.state === 'closed') return;
    this.transition('closed', 'socket closed');
    this.clearTimer();
    this.commands.clear();
    this.writes.clear();
    const ctrl = this.controller;
    if (ctrl) {
      if (this.qid === 0) ctrl.teardown('admin queue closed');
      else if (ctrl.ioQueues.get(this.qid) === this) ctrl.ioQueues.delete(this.qid);
    }
    this.onClosed(this);
  }

  /** True once nothing more may be processed (TermReq sent, Disconnect, closed). */
  private get finished(): boolean {
    return this.state === 'closing' || this.state === 'closed';
  }

  private setTimer(ms: number, reason: string): void {
    this.clearTimer();
    this.timer = setTimeout(() => {
      this.timer = null;
      this.logger.warn({ qid: this.qid, ms }, reason);
      this.target.countProtocolError();
      this.close(reason);
    }, ms);
    this.timer.unref();
  }

  private clearTimer(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  /** Sends a C2HTermReq and closes (crib §1.6). */
  private fatal(fes: number, fei: number, header: Buffer, reason: string): void {
    if (this.state === 'closing' || this.state === 'closed') return;
    this.target.countProtocolError();
    this.logger.warn({ fes, fei, qid: this.qid, reason }, 'fatal transport error; sending C2HTermReq');
    this.send([encodeTermReq(PduType.C2H_TERM_REQ, { fes, fei, header: Buffer.from(header) })]);
    this.endGracefully(reason);
  }

  // ------------------------------------------------------------ sending

  private readonly uncork = (): void => {
    this.corked = false;
    if (!this.socket.destroyed) this.socket.uncork();
  };

  private readonly onDrain = (): void => {
    this.waitingDrain = false;
    if (!this.socket.destroyed) this.socket.resume();
  };

  private send(parts: Buffer | Buffer[]): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    if (!this.corked) {
      this.socket.cork();
      this.corked = true;
      setImmediate(this.uncork);
    }
    let ok = true;
    if (Buffer.isBuffer(parts)) ok = this.socket.write(parts);
    else for (let i = 0; i < parts.length; i++) ok = this.socket.write(parts[i]!) && ok;
    // write() returned false, so 'drain' is due once the queue empties
    if (!ok && !this.waitingDrain && this.socket.writableLength >= MAX_UNSENT_BYTES) {
      this.waitingDrain = true;
      this.socket.pause();
      this.socket.once('drain', this.onDrain);
    }
  }

  // ------------------------------------------------------------ receiving

  private onData(chunk: Buffer): void {
    if (this.state === 'closing' || this.state === 'closed') return;
    let pdus: Pdu[];
    try {
      pdus = this.reader.push(chunk);
    } catch (err) {
      if (err instanceof PduError && err.pduType !== PduType.H2C_TERM_REQ) this.fatal(err.fes, err.fei, err.header, err.message);
      else this.close(`unreadable input: ${(err as Error).message}`);
      return;
    }
    try {
      for (const pdu of pdus) {
        if (this.finished) return;
        this.onPdu(pdu);
      }
    } catch (err) {
      this.logger.error({ err }, 'internal error handling a PDU');
      this.close('internal error');
      return;
    }
    if (this.state === 'awaiting-icreq') return;
    if (pdus.length > 0) this.clearTimer();
    if (this.reader.midPdu && !this.timer) this.setTimer(this.target.limits.pduTimeoutMs, 'PDU not completed within timeout');
    if (this.resumeAfterIc) {
      this.resumeAfterIc = false;
      this.onData(EMPTY);
    }
  }

  private onPdu(pdu: Pdu): void {
    if (pdu.type === PduType.H2C_TERM_REQ) {
      this.logger.warn({ fes: pdu.header.readUInt16LE(8) }, 'host sent H2CTermReq');
      this.close('H2CTermReq received');
      return;
    }
    if (pdu.type === PduType.IC_REQ) {
      if (this.state !== 'awaiting-icreq') return this.fatal(Fes.SEQUENCE_ERROR, 0, pdu.header, 'second ICReq');
      return this.onIcReq(pdu);
    }
    if (this.state === 'awaiting-icreq') return this.fatal(Fes.SEQUENCE_ERROR, 0, pdu.header, 'PDU before ICReq');
    if (pdu.type === PduType.CAPSULE_CMD) return this.onCapsule(pdu);
    if (pdu.type === PduType.H2C_DATA) return this.onH2CData(pdu);
    return this.fatal(Fes.INVALID_HEADER_FIELD, 0, pdu.header, `unexpected PDU type ${pdu.type}`);
  }

  private onIcReq(pdu: Pdu): void {
    const r = decodeIcReq(pdu.header);
    if (r.pfv !== 0) return this.fatal(Fes.UNSUPPORTED_PARAMETER, 8, pdu.header, `unsupported PFV ${r.pfv}`);
    if (r.hpda > 31) return this.fatal(Fes.INVALID_HEADER_FIELD, 10, pdu.header, `invalid HPDA ${r.hpda}`);
    const dgst = r.dgst & 3;
    this.digests = { hdgst: (dgst & 1) !== 0, ddgst: (dgst & 2) !== 0 };
    this.c2hAlign = (r.hpda + 1) * 4;
    this.send([encodeIcResp({ pfv: 0, cpda: 0, dgst, maxh2cdata: this.target.limits.maxH2CData })]);
    this.reader.setDigests(this.digests.hdgst, this.digests.ddgst);
    this.clearTimer();
    this.transition('awaiting-connect', 'ICReq');
    this.resumeAfterIc = true;
  }

  private onCapsule(pdu: Pdu): void {
    const sqe = decodeSqe(pdu.header.subarray(CH_LEN, CH_LEN + SQE_LEN));
    this.target.countCommand();
    this.sqhd = (this.sqhd + 1) % (this.sqsize + 1);
    if (this.commands.has(sqe.cid)) {
      this.sendResponse(sqe.cid, fail(Status.CID_CONFLICT));
      return;
    }
    if (this.commands.size >= MAX_OUTSTANDING) {
      return this.fatal(Fes.SEQUENCE_ERROR, 0, pdu.header, 'too many outstanding commands');
    }
    const fabrics = sqe.opcode === FABRICS_OPCODE;
    const cmd: PendingCommand = {
      sqe,
      data: null,
      dir: directionOf(fabrics ? sqe.fctype : sqe.opcode),
      received: 0,
      r2t: null,
      failStatus: 0,
      budget: 0,
    };
    this.commands.set(sqe.cid, cmd);
    if (this.state === 'awaiting-connect' && !(fabrics && sqe.fctype === FabricsType.CONNECT)) {
      return this.complete(cmd, fail(Status.COMMAND_SEQUENCE_ERROR));
    }
    const status = this.placeCapsuleData(cmd, pdu);
    if (status !== 0) return this.complete(cmd, fail(status));
    if (cmd.dir === 'h2c' && cmd.data === null && sqe.sglLength > 0) return this.solicit(cmd);
    this.execute(cmd);
  }

  /** Checks the SGL against where the data is (crib §2.3); returns a status, 0 if fine. */
  private placeCapsuleData(cmd: PendingCommand, pdu: Pdu): number {
    const s = cmd.sqe;
    if (pdu.data) {
      if (s.sglId !== SglId.DATA_BLOCK_OFFSET) return Status.SGL_DESCRIPTOR_TYPE_INVALID;
      if (s.sglAddress !== 0) return Status.SGL_OFFSET_INVALID;
      if (s.sglLength !== pdu.data.length) return Status.SGL_DATA_LENGTH_INVALID;
      if (cmd.dir !== 'h2c') return Status.INVALID_FIELD;
      if (!pdu.dataDigestOk) return Status.TRANSIENT_TRANSPORT_ERROR;
      cmd.data = pdu.data;
      return 0;
    }
    if (s.sglLength === 0) return 0;
    if (s.sglId !== SglId.TRANSPORT_DATA_BLOCK) return Status.SGL_DESCRIPTOR_TYPE_INVALID;
    if (s.sglAddress !== 0) return Status.SGL_OFFSET_INVALID;
    if (s.sglLength > this.target.limits.maxTransfer) return Status.SGL_DATA_LENGTH_INVALID;
    if (cmd.dir !== 'h2c' && cmd.dir !== 'c2h') return Status.INVALID_FIELD;
    return 0;
  }

  // ------------------------------------------------------------ R2T / H2CData

  private solicit(cmd: PendingCommand): void {
    if (this.state === 'connected' && this.qid > 0) {
      const status = precheckWrite(this, cmd);
      if (status !== 0) return this.complete(cmd, fail(status));
    }
    this.writes.start(cmd);
  }

  private onH2CData(pdu: Pdu): void {
    const fault = this.writes.onData(pdu);
    if (fault) this.fatal(fault.fes, fault.fei, pdu.header, fault.reason);
  }

  // ------------------------------------------------------------ execution and completion

  private execute(cmd: PendingCommand): void {
    let result: Completion | Promise<Completion>;
    try {
      result = this.dispatch(cmd);
    } catch (err) {
      this.logger.error({ err, opcode: cmd.sqe.opcode }, 'command handler threw');
      result = fail(toNvmeStatus(err));
    }
    if (result instanceof Promise) {
      result.then(
        (c) => this.complete(cmd, c),
        (err: unknown) => this.complete(cmd, fail(toNvmeStatus(err))),
      );
    } else this.complete(cmd, result);
  }

  private dispatch(cmd: PendingCommand): Completion | Promise<Completion> {
    if (cmd.sqe.opcode === FABRICS_OPCODE) return handleFabrics(this, cmd);
    const ctrl = this.controller;
    if (this.state !== 'connected' || !ctrl || !ctrl.ready) return fail(Status.COMMAND_SEQUENCE_ERROR);
    return this.qid === 0 ? handleAdmin(this, cmd) : handleIo(this, cmd);
  }

  private complete(cmd: PendingCommand, c: Completion): void {
    if (this.commands.get(cmd.sqe.cid) !== cmd) return; // connection was closed meanwhile
    this.commands.delete(cmd.sqe.cid);
    this.writes.release(cmd);
    // the handler has settled (a write's device call with it): nothing uses the data now
    if (cmd.data) payloadPool.release(cmd.data);
    cmd.data = null;
    if (this.state === 'closing' || this.state === 'closed') return;
    const withData = c.status === 0 && c.data !== undefined && c.data !== null && cmd.dir === 'c2h' && cmd.sqe.sglLength > 0;
    // SQ flow control disabled (Connect CATTR b2): a successful read ends with
    // SUCCESS on its last C2HData and no CapsuleResp (one PDU less per read;
    // there is no SQHD to report). Anything with completion dwords still gets a CQE.
    const successInData = withData && this.sqFlowDisabled && !c.dw0 && !c.dw1 && !c.closeAfter;
    if (withData) this.sendC2HData(cmd, c.data!, successInData);
    if (successInData) this.target.countSuccessRead();
    else this.sendResponse(cmd.sqe.cid, c);
    if (c.closeAfter) this.endGracefully('closed after command');
  }

  /** C2HData PDUs covering exactly the SGL length, LAST_PDU (and SUCCESS when asked) on the final one. */
  private sendC2HData(cmd: PendingCommand, data: Buffer, success: boolean): void {
    const total = cmd.sqe.sglLength;
    if (data.length > total) data = data.subarray(0, total);
    else if (data.length < total) {
      const padded = Buffer.alloc(total);
      data.copy(padded);
      data = padded;
    }
    const step = this.target.limits.maxC2HData;
    for (let off = 0; off < total; off += step) {
      const part = data.subarray(off, Math.min(total, off + step));
      const flags = off + part.length >= total ? PduFlag.LAST_PDU | (success ? PduFlag.SUCCESS : 0) : 0;
      this.send(encodeDataPdu(PduType.C2H_DATA, { cccid: cmd.sqe.cid, ttag: 0, datao: off }, part, flags, this.digests, this.c2hAlign));
    }
  }

  private sendResponse(cid: number, c: Completion): void {
    const cqe = {
      dw0: c.dw0 ?? 0,
      dw1: c.dw1 ?? 0,
      sqhd: this.sqFlowDisabled ? 0xffff : this.sqhd,
      sqid: Math.max(this.qid, 0),
      cid,
      status: c.status,
    };
    this.send(encodeCapsuleResp(cqe, this.digests));
  }

  // ------------------------------------------------------------ QueueContext

  bindAdmin(controller: Controller, sqsize: number, sqFlowDisabled: boolean): void {
    this.controller = controller;
    this.qid = 0;
    this.sqsize = sqsize;
    this.sqFlowDisabled = sqFlowDisabled;
    this.transition('connected', 'admin Connect');
  }

  bindIo(controller: Controller, qid: number, sqsize: number, sqFlowDisabled: boolean): void {
    this.controller = controller;
    this.qid = qid;
    this.sqsize = sqsize;
    this.sqFlowDisabled = sqFlowDisabled;
    controller.ioQueues.set(qid, this);
    this.transition('connected', `I/O Connect qid ${qid}`);
  }
}
