/**
 * SolicitedWrites: the target side of R2T / H2CData for one connection.
 *
 *   start(cmd) --budget ok--> R2T sent --H2CData...(LAST)--> next R2T | all data in -> hooks.ready(cmd)
 *        \--budget exhausted--> waiting (FIFO) --release() of another command--> R2T sent
 *
 * Invariants: one open R2T per command (valid for any MAXR2T), R2TL <=
 * MAXH2CDATA (pre-5.16 hosts answer one R2T with one PDU), TTAGs unique among
 * open R2Ts, and H2CData must continue exactly where the R2T's data stands.
 * Solicited buffers of one connection are bounded by maxBuffer bytes (a
 * single command may exceed it alone, it is bounded by MDTS).
 * A command's data buffer comes from `pool`; the connection releases it when
 * the command completed (buffer-pool.ts).
 */
import { BufferPool, payloadPool } from '../block/buffer-pool';
import type { Command } from './command';
import { Fes, HeaderFault, R2t, decodeDataPduHeader } from './pdu';
import type { Pdu } from './pdu-reader';
import type { Direction } from './sqe';
import { Status } from './status';

export interface PendingCommand extends Command {
  dir: Direction;
  /** Solicited bytes received so far. */
  received: number;
  /** The open R2T of this command, if any. */
  r2t: { ttag: number; offset: number; length: number; received: number } | null;
  /** Non-zero: complete with this status once the data is in (data digest error). */
  failStatus: number;
  /** Bytes of the connection's R2T budget held by this command. */
  budget: number;
}

export interface SolicitHooks {
  sendR2T(r: R2t): void;
  /** Every byte of the command's data arrived (check failStatus). */
  ready(cmd: PendingCommand): void;
}

export class SolicitedWrites {
  /** Commands with an open R2T, by TTAG. */
  private readonly open = new Map<number, PendingCommand>();
  private readonly waiting: PendingCommand[] = [];
  private nextTag = 0;
  /** Bytes of solicited data promised to commands now. */
  private buffered = 0;

  constructor(
    private readonly maxH2CData: number,
    private readonly maxBuffer: number,
    private readonly hooks: SolicitHooks,
    private readonly pool: BufferPool = payloadPool,
  ) {}

  start(cmd: PendingCommand): void {
    const len = cmd.sqe.sglLength;
    // FIFO: nobody overtakes a waiting command, so large writes cannot starve
    if (this.waiting.length > 0 || (this.buffered > 0 && this.buffered + len > this.maxBuffer)) {
      this.waiting.push(cmd);
      return;
    }
    this.buffered += len;
    cmd.budget = len;
    this.sendR2T(cmd);
  }

  private sendR2T(cmd: PendingCommand): void {
    const offset = cmd.received;
    const length = Math.min(cmd.sqe.sglLength - offset, this.maxH2CData);
    let ttag = this.nextTag;
    while (this.open.has(ttag)) ttag = (ttag + 1) & 0xffff;
    this.nextTag = (ttag + 1) & 0xffff;
    cmd.r2t = { ttag, offset, length, received: 0 };
    this.open.set(ttag, cmd);
    this.hooks.sendR2T({ cccid: cmd.sqe.cid, ttag, r2to: offset, r2tl: length });
  }

  /** Destination for a valid H2CData payload: the command buffer itself. Invalid PDUs are judged in onData. */
  sink(header: Buffer, dataLen: number): Buffer | null {
    const h = decodeDataPduHeader(header);
    const cmd = this.open.get(h.ttag);
    const r = cmd?.r2t;
    if (!cmd || !r || cmd.sqe.cid !== h.cccid || h.datal !== dataLen) return null;
    if (h.datao !== r.offset + r.received || h.datao + h.datal > r.offset + r.length) return null;
    if (!cmd.data) cmd.data = this.pool.acquire(cmd.sqe.sglLength);
    return cmd.data.subarray(h.datao, h.datao + h.datal);
  }

  /** Accepts one H2CData PDU; returns the fault to terminate the connection with, or null. */
  onData(pdu: Pdu): (HeaderFault & { reason: string }) | null {
    const h = decodeDataPduHeader(pdu.header);
    const cmd = this.open.get(h.ttag);
    if (!cmd) return { fes: Fes.INVALID_HEADER_FIELD, fei: 10, reason: `H2CData for unknown TTAG ${h.ttag}` };
    if (cmd.sqe.cid !== h.cccid) return { fes: Fes.INVALID_HEADER_FIELD, fei: 8, reason: 'H2CData CCCID mismatch' };
    const data = pdu.data!;
    if (h.datal !== data.length) return { fes: Fes.INVALID_HEADER_FIELD, fei: 16, reason: 'H2CData DATAL mismatch' };
    const r = cmd.r2t!;
    if (h.datao !== r.offset + r.received || h.datao + h.datal > r.offset + r.length) {
      return { fes: Fes.DATA_OUT_OF_RANGE, fei: 0, reason: 'H2CData outside the R2T' };
    }
    if (!pdu.dataDigestOk) cmd.failStatus = Status.TRANSIENT_TRANSPORT_ERROR;
    if (!pdu.placed) {
      if (h.datao === 0 && h.datal === cmd.sqe.sglLength) cmd.data = data;
      else {
        if (!cmd.data) cmd.data = this.pool.acquire(cmd.sqe.sglLength);
        data.copy(cmd.data, h.datao);
        // the reader's buffer for this PDU (if pooled) is no longer referenced
        this.pool.release(data);
      }
    }
    r.received += h.datal;
    cmd.received += h.datal;
    if (r.received < r.length) return null;
    this.open.delete(r.ttag);
    cmd.r2t = null;
    if (cmd.received < cmd.sqe.sglLength) this.sendR2T(cmd);
    else this.hooks.ready(cmd);
    return null;
  }

  /** The command completed: return its budget and solicit waiting commands that now fit. */
  release(cmd: PendingCommand): void {
    if (cmd.budget === 0) return;
    this.buffered -= cmd.budget;
    cmd.budget = 0;
    while (this.waiting.length > 0) {
      const next = this.waiting[0]!;
      if (this.buffered > 0 && this.buffered + next.sqe.sglLength > this.maxBuffer) break;
      this.waiting.shift();
      this.buffered += next.sqe.sglLength;
      next.budget = next.sqe.sglLength;
      this.sendR2T(next);
    }
  }

  clear(): void {
    this.open.clear();
    this.waiting.length = 0;
  }
}
