/**
 * PduReader: streaming reassembly of NVMe/TCP PDUs from socket chunks.
 *
 *   'header' --(CH + rest of header [+HDGST] complete, validated)--> 'data'
 *   'data'   --(padding + data complete)--> 'digest' (DDGST negotiated) | emit
 *   'digest' --(4 bytes)--> emit, back to 'header'
 *
 * Invariants: nothing is allocated before the common header has been checked
 * against the per-type limits (PLEN is bounded by HLEN + digests + maxData), so
 * a peer lying about lengths costs at most one bounded buffer. A PDU that lies
 * entirely inside one chunk is returned as views of that chunk (no copy).
 * After an ICReq/ICResp the reader pauses until setDigests() is called, because
 * the digest negotiation decides how the following bytes are framed.
 * Violations throw PduError (FES/FEI for a TermReq); the reader is then dead.
 *
 * transientChunks (the target's static-buffer socket reads): a pushed chunk
 * is overwritten after push() returns, so the reader keeps no view of it:
 * data fields are always assembled in a buffer from `pool` (the consumer
 * releases it once the device is done with it, see buffer-pool.ts), the
 * header of a PDU whose data is still to come and bytes held while paused
 * are copied. The PDUs push() returns may still view the chunk (headers of
 * complete PDUs): the consumer handles them before its next push.
 */
import { BufferPool, payloadPool } from '../block/buffer-pool';
import { ReplError } from '../errors';
import { crc32c } from './crc32c';
import {
  CH_LEN,
  DIGEST_LEN,
  HeaderCheck,
  PduFlag,
  PduType,
  checkCommonHeader,
  decodeCommonHeader,
  pduSpec,
  Fes,
} from './pdu';

export interface Pdu {
  type: number;
  flags: number;
  hlen: number;
  pdo: number;
  plen: number;
  /** HLEN bytes (common header + type-specific header), digest excluded. */
  header: Buffer;
  /** Data part without padding and digest; null when the PDU carries none. */
  data: Buffer | null;
  /** False when DDGST was present and did not match the data. */
  dataDigestOk: boolean;
  /** True when `data` is the buffer the sink option supplied (already in place). */
  placed: boolean;
}

/**
 * Supplies the destination of a data PDU's payload (exactly dataLen bytes) so
 * it is assembled in place with a single copy; null lets the reader buffer it.
 */
export type DataSink = (header: Buffer, type: number, dataLen: number) => Buffer | null;

/** A fatal framing error; fes/fei go into the TermReq, header is the offending header bytes. */
export class PduError extends ReplError {
  constructor(
    message: string,
    readonly fes: number,
    readonly fei: number,
    readonly header: Buffer,
    readonly pduType: number,
  ) {
    super('E_PROTOCOL', message);
  }
}

export type ReaderState = 'header' | 'data' | 'digest';

export interface PduReaderOptions {
  role: 'target' | 'host';
  /** Largest in-capsule data (CapsuleCmd) the target accepts. */
  maxCapsuleData?: number;
  /** Largest data of one H2CData (target) / C2HData (host) PDU. */
  maxDataPdu: number;
  /** (PDA + 1) * 4 of the sender's PDO alignment. */
  pdoAlign?: number;
  sink?: DataSink;
  /** Pushed chunks are overwritten after push() returns (see the file header). */
  transientChunks?: boolean;
  /** Where data fields are assembled in transientChunks mode. */
  pool?: BufferPool;
}

const EMPTY = Buffer.alloc(0);

export class PduReader {
  private readonly check: HeaderCheck;
  private state_: ReaderState = 'header';
  private paused = false;
  private dead = false;
  /** Bytes received while paused, replayed by the next push(). */
  private held: Buffer | null = null;
  /** Gathering buffer for the current field when it spans chunks. */
  private acc: Buffer | null = null;
  private accLen = 0;
  /** Bytes the current field needs. */
  private need = CH_LEN;
  // the PDU under construction
  private header: Buffer = EMPTY;
  private cur = { type: 0, flags: 0, hlen: 0, pdo: 0, plen: 0, dataLen: 0, headerTotal: 0 };
  private data: Buffer | null = null;
  /** The data field is being assembled in a sink buffer (no zero-copy view). */
  private placing = false;
  /** The data field is being assembled in a pooled buffer (transientChunks). */
  private gathering = false;
  private readonly transient: boolean;
  private readonly pool: BufferPool;

  constructor(private readonly options: PduReaderOptions) {
    this.transient = options.transientChunks ?? false;
    this.pool = options.pool ?? payloadPool;
    const target = options.role === 'target';
    const maxCapsule = options.maxCapsuleData ?? 0;
    this.check = {
      hdgst: false,
      ddgst: false,
      pdoAlign: options.pdoAlign ?? 4,
      accept: (t) => (target ? t % 2 === 0 : t % 2 === 1),
      maxData: (t) =>
        t === PduType.H2C_DATA || t === PduType.C2H_DATA
          ? { limit: options.maxDataPdu, fes: Fes.DATA_LIMIT_EXCEEDED }
          : { limit: t === PduType.CAPSULE_CMD ? maxCapsule : 0, fes: Fes.INVALID_HEADER_FIELD },
    };
  }

  get state(): ReaderState {
    return this.state_;
  }

  /** True while bytes of an incomplete PDU are buffered (used to detect truncation). */
  get midPdu(): boolean {
    return this.state_ !== 'header' || this.accLen > 0 || this.held !== null;
  }

  /** Applies the negotiated digests and resumes after an IC PDU. */
  setDigests(hdgst: boolean, ddgst: boolean): void {
    this.check.hdgst = hdgst;
    this.check.ddgst = ddgst;
    this.paused = false;
  }

  push(chunk: Buffer): Pdu[] {
    if (this.dead) throw ReplError.protocol('PDU reader used after a fatal error');
    if (this.held) {
      chunk = chunk.length ? Buffer.concat([this.held, chunk]) : this.held;
      this.held = null;
    }
    const out: Pdu[] = [];
    let pos = 0;
    try {
      while (!this.paused && (pos < chunk.length || this.need === 0)) {
        pos = this.step(chunk, pos, out);
      }
    } catch (err) {
      this.dead = true;
      throw err;
    }
    if (pos < chunk.length) this.held = this.transient ? Buffer.from(chunk.subarray(pos)) : chunk.subarray(pos);
    return out;
  }

  /** Consumes bytes for the current field; returns the new position. */
  private step(chunk: Buffer, pos: number, out: Pdu[]): number {
    // fast path for a whole PDU header in this chunk
    if (this.state_ === 'header' && this.accLen === 0 && chunk.length - pos >= CH_LEN) {
      const total = this.startHeader(chunk.subarray(pos, pos + CH_LEN));
      if (chunk.length - pos >= total) {
        this.onHeader(chunk.subarray(pos, pos + total), out);
        return pos + total;
      }
      this.acc = Buffer.allocUnsafe(total);
      const n = chunk.copy(this.acc, 0, pos);
      this.accLen = n;
      this.need = total;
      return pos + n;
    }
    let field: Buffer | null = null;
    if (this.need === 0) {
      field = EMPTY;
    } else if (this.accLen === 0 && !this.placing && !this.gathering && chunk.length - pos >= this.need) {
      field = chunk.subarray(pos, pos + this.need);
      pos += this.need;
    } else {
      if (!this.acc) this.acc = Buffer.allocUnsafe(this.need);
      const n = Math.min(this.need - this.accLen, chunk.length - pos);
      chunk.copy(this.acc, this.accLen, pos, pos + n);
      this.accLen += n;
      pos += n;
      if (this.accLen === this.need) field = this.acc;
    }
    if (field) {
      this.acc = null;
      this.accLen = 0;
      this.onField(field, out);
    }
    return pos;
  }

  private onField(field: Buffer, out: Pdu[]): void {
    switch (this.state_) {
      case 'header':
        if (field.length === CH_LEN && this.need === CH_LEN) {
          // slow path: only the CH so far; now gather the whole header
          const total = this.startHeader(field);
          if (total > CH_LEN) {
            this.acc = Buffer.allocUnsafe(total);
            field.copy(this.acc, 0);
            this.accLen = CH_LEN;
            this.need = total;
            return;
          }
        }
        this.onHeader(field, out);
        return;
      case 'data':
        this.onData(field, out);
        return;
      case 'digest':
        this.onDigest(field, out);
        return;
    }
  }

  /** Validates the common header and returns HLEN + HDGST. */
  private startHeader(ch: Buffer): number {
    const c = decodeCommonHeader(ch);
    const fault = checkCommonHeader(c, this.check);
    if (fault) {
      throw new PduError(`invalid PDU header (type ${c.type}, FES ${fault.fes}, FEI ${fault.fei})`, fault.fes, fault.fei, Buffer.from(ch), c.type);
    }
    const spec = pduSpec(c.type)!;
    const hd = spec.digested && this.check.hdgst ? DIGEST_LEN : 0;
    const dd = c.flags & PduFlag.DDGST ? DIGEST_LEN : 0;
    const headerTotal = c.hlen + hd;
    const cur = this.cur;
    cur.type = c.type;
    cur.flags = c.flags;
    cur.hlen = c.hlen;
    cur.pdo = c.pdo;
    cur.plen = c.plen;
    cur.dataLen = spec.data === 'term' ? c.plen - c.hlen : c.pdo === 0 ? 0 : c.plen - c.pdo - dd;
    cur.headerTotal = headerTotal;
    return headerTotal;
  }

  private onHeader(full: Buffer, out: Pdu[]): void {
    const c = this.cur;
    if (full.length > c.hlen) {
      const got = full.readUInt32LE(c.hlen);
      if (crc32c(full, 0, 0, c.hlen) !== got) {
        throw new PduError('header digest mismatch', Fes.HEADER_DIGEST, got, Buffer.from(full.subarray(0, c.hlen)), c.type);
      }
    }
    this.header = full.subarray(0, c.hlen);
    // padding between header(+digest) and PDO is read with the data and dropped
    const pad = c.pdo === 0 ? 0 : c.pdo - c.headerTotal;
    this.need = c.dataLen === 0 ? 0 : pad + c.dataLen;
    this.state_ = 'data';
    if (this.need === 0) {
      this.emit(null, true, out);
      return;
    }
    // the data may arrive in a later chunk: the header must outlive this one
    if (this.transient) this.header = Buffer.from(this.header);
    const dest = pad === 0 && this.options.sink ? this.options.sink(this.header, c.type, c.dataLen) : null;
    if (dest && dest.length === c.dataLen) {
      this.acc = dest;
      this.accLen = 0;
      this.placing = true;
    } else if (this.transient) {
      // padding included; onData() returns the view past it
      this.acc = this.pool.acquire(this.need);
      this.accLen = 0;
      this.gathering = true;
    }
  }

  private onData(field: Buffer, out: Pdu[]): void {
    const c = this.cur;
    this.data = field.subarray(field.length - c.dataLen);
    if (c.flags & PduFlag.DDGST) {
      this.state_ = 'digest';
      this.need = DIGEST_LEN;
      return;
    }
    this.emit(this.data, true, out);
  }

  private onDigest(field: Buffer, out: Pdu[]): void {
    const data = this.data!;
    this.emit(data, crc32c(data) === field.readUInt32LE(0), out);
  }

  private emit(data: Buffer | null, ok: boolean, out: Pdu[]): void {
    const c = this.cur;
    out.push({ type: c.type, flags: c.flags, hlen: c.hlen, pdo: c.pdo, plen: c.plen, header: this.header, data, dataDigestOk: ok, placed: this.placing });
    this.placing = false;
    this.gathering = false;
    this.state_ = 'header';
    this.need = CH_LEN;
    this.data = null;
    if (c.type === PduType.IC_REQ || c.type === PduType.IC_RESP) this.paused = true;
  }
}
