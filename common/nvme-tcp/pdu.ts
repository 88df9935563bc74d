/**
 * Pure NVMe/TCP PDU codec: the 8-byte common header, one body layout per PDU
 * type, header validation (transport spec receive-side checks) and encoders
 * that return Buffer[] (header [+HDGST], data, [DDGST]) so the I/O layer can
 * write data buffers without concatenating them. No sockets, no timers here.
 */
import { crc32c } from './crc32c';

export const PduType = {
  IC_REQ: 0x00,
  IC_RESP: 0x01,
  H2C_TERM_REQ: 0x02,
  C2H_TERM_REQ: 0x03,
  CAPSULE_CMD: 0x04,
  CAPSULE_RESP: 0x05,
  H2C_DATA: 0x06,
  C2H_DATA: 0x07,
  R2T: 0x09,
} as const;

export const PduFlag = { HDGST: 0x01, DDGST: 0x02, LAST_PDU: 0x04, SUCCESS: 0x08 } as const;

/** Fatal error status values of a TermReq. */
export const Fes = {
  INVALID_HEADER_FIELD: 0x01,
  SEQUENCE_ERROR: 0x02,
  HEADER_DIGEST: 0x03,
  DATA_OUT_OF_RANGE: 0x04,
  DATA_LIMIT_EXCEEDED: 0x05,
  UNSUPPORTED_PARAMETER: 0x06,
} as const;

export const CH_LEN = 8;
export const DIGEST_LEN = 4;
export const SQE_LEN = 64;
export const CQE_LEN = 16;
export const IC_LEN = 128;
export const CAPSULE_CMD_HLEN = CH_LEN + SQE_LEN;
export const SHORT_HLEN = 24;
export const TERM_REQ_MAX_DATA = 128;

export const DGST_HEADER = 0x01;
export const DGST_DATA = 0x02;

interface TypeSpec {
  hlen: number;
  allowedFlags: number;
  data: 'never' | 'optional' | 'always' | 'term';
  digested: boolean;
}

/** Per-type layout rules (crib §1.2); TermReq data sits right after the header with PDO 0. */
const SPECS: Record<number, TypeSpec> = {
  [PduType.IC_REQ]: { hlen: IC_LEN, allowedFlags: 0, data: 'never', digested: false },
  [PduType.IC_RESP]: { hlen: IC_LEN, allowedFlags: 0, data: 'never', digested: false },
  [PduType.H2C_TERM_REQ]: { hlen: SHORT_HLEN, allowedFlags: 0, data: 'term', digested: false },
  [PduType.C2H_TERM_REQ]: { hlen: SHORT_HLEN, allowedFlags: 0, data: 'term', digested: false },
  [PduType.CAPSULE_CMD]: { hlen: CAPSULE_CMD_HLEN, allowedFlags: 0x03, data: 'optional', digested: true },
  [PduType.CAPSULE_RESP]: { hlen: SHORT_HLEN, allowedFlags: 0x01, data: 'never', digested: true },
  [PduType.H2C_DATA]: { hlen: SHORT_HLEN, allowedFlags: 0x07, data: 'always', digested: true },
  [PduType.C2H_DATA]: { hlen: SHORT_HLEN, allowedFlags: 0x0f, data: 'always', digested: true },
  [PduType.R2T]: { hlen: SHORT_HLEN, allowedFlags: 0x01, data: 'never', digested: true },
};

export function pduSpec(type: number): TypeSpec | undefined {
  return SPECS[type];
}

/** True for controller-to-host PDU types (odd numbers). */
export function isC2H(type: number): boolean {
  return (type & 1) === 1;
}

export interface CommonHeader {
  type: number;
  flags: number;
  hlen: number;
  pdo: number;
  plen: number;
}

export function decodeCommonHeader(buf: Buffer, off = 0): CommonHeader {
  return {
    type: buf[off]!,
    flags: buf[off + 1]!,
    hlen: buf[off + 2]!,
    pdo: buf[off + 3]!,
    plen: buf.readUInt32LE(off + 4),
  };
}

function writeCommonHeader(buf: Buffer, ch: CommonHeader): void {
  buf[0] = ch.type;
  buf[1] = ch.flags;
  buf[2] = ch.hlen;
  buf[3] = ch.pdo;
  buf.writeUInt32LE(ch.plen, 4);
}

export interface HeaderFault {
  fes: number;
  fei: number;
}

export interface HeaderCheck {
  /** Header / data digests negotiated for this connection. */
  hdgst: boolean;
  ddgst: boolean;
  /** Required PDO alignment in bytes ((PDA + 1) * 4). */
  pdoAlign: number;
  /** Types this side may receive. */
  accept: (type: number) => boolean;
  /** Largest data part accepted for a type, and the FES to use beyond it. */
  maxData: (type: number) => { limit: number; fes: number };
}

/** Receive-side validation of a common header (crib §1.8); null when acceptable. */
export function checkCommonHeader(ch: CommonHeader, ctx: HeaderCheck): HeaderFault | null {
  const spec = SPECS[ch.type];
  if (!spec || !ctx.accept(ch.type)) return { fes: Fes.INVALID_HEADER_FIELD, fei: 0 };
  if (ch.hlen !== spec.hlen) return { fes: Fes.INVALID_HEADER_FIELD, fei: 2 };
  if (spec.data === 'term') {
    if (ch.flags !== 0) return { fes: Fes.INVALID_HEADER_FIELD, fei: 1 };
    if (ch.pdo !== 0) return { fes: Fes.INVALID_HEADER_FIELD, fei: 3 };
    if (ch.plen < spec.hlen || ch.plen > spec.hlen + TERM_REQ_MAX_DATA) return { fes: Fes.INVALID_HEADER_FIELD, fei: 4 };
    return null;
  }
  const hd = spec.digested && ctx.hdgst ? DIGEST_LEN : 0;
  if ((ch.flags & ~spec.allowedFlags) !== 0) return { fes: Fes.INVALID_HEADER_FIELD, fei: 1 };
  if (ch.flags & PduFlag.SUCCESS && !(ch.flags & PduFlag.LAST_PDU)) return { fes: Fes.INVALID_HEADER_FIELD, fei: 1 };
  if (spec.digested && Boolean(ch.flags & PduFlag.HDGST) !== ctx.hdgst) return { fes: Fes.INVALID_HEADER_FIELD, fei: 1 };
  const hasData = ch.pdo !== 0;
  if (spec.digested && Boolean(ch.flags & PduFlag.DDGST) !== (ctx.ddgst && hasData)) {
    return { fes: Fes.INVALID_HEADER_FIELD, fei: 1 };
  }
  if (!hasData) {
    if (spec.data === 'always') return { fes: Fes.INVALID_HEADER_FIELD, fei: 3 };
    if (ch.plen !== spec.hlen + hd) return { fes: Fes.INVALID_HEADER_FIELD, fei: 4 };
    return null;
  }
  if (spec.data === 'never') return { fes: Fes.INVALID_HEADER_FIELD, fei: 3 };
  if (ch.pdo < spec.hlen + hd || ch.pdo % ctx.pdoAlign !== 0 || ch.pdo > ch.plen) {
    return { fes: Fes.INVALID_HEADER_FIELD, fei: 3 };
  }
  const dd = ch.flags & PduFlag.DDGST ? DIGEST_LEN : 0;
  const dataLen = ch.plen - ch.pdo - dd;
  if (dataLen <= 0) return { fes: Fes.INVALID_HEADER_FIELD, fei: 4 };
  const max = ctx.maxData(ch.type);
  if (dataLen > max.limit) return { fes: max.fes, fei: max.fes === Fes.INVALID_HEADER_FIELD ? 4 : 0 };
  return null;
}

// ---------------------------------------------------------------- digests

export interface Digests {
  hdgst: boolean;
  ddgst: boolean;
}

/** Allocates header + optional HDGST space; caller fills the body then calls sealHeader. */
function allocHeader(type: number, hlen: number, dg: Digests, dataLen: number, extraFlags: number, align = 4): Buffer {
  const spec = SPECS[type]!;
  const hd = spec.digested && dg.hdgst ? DIGEST_LEN : 0;
  const dd = spec.digested && dg.ddgst && dataLen > 0 ? DIGEST_LEN : 0;
  // data starts at the receiver's alignment; the zero padding is part of the header buffer
  const pdo = dataLen > 0 && spec.data !== 'term' ? Math.ceil((hlen + hd) / align) * align : 0;
  const flags = extraFlags | (hd ? PduFlag.HDGST : 0) | (dd ? PduFlag.DDGST : 0);
  // pooled allocation: one header per PDU on the hot path
  const buf = Buffer.allocUnsafe(Math.max(pdo, hlen + hd)).fill(0);
  writeCommonHeader(buf, { type, flags, hlen, pdo, plen: buf.length + dataLen + dd });
  return buf;
}

function sealHeader(buf: Buffer, hlen: number): Buffer {
  if (buf[1]! & PduFlag.HDGST) buf.writeUInt32LE(crc32c(buf, 0, 0, hlen), hlen);
  return buf;
}

function dataDigest(data: Buffer): Buffer {
  const d = Buffer.allocUnsafe(DIGEST_LEN);
  d.writeUInt32LE(crc32c(data), 0);
  return d;
}

// ---------------------------------------------------------------- ICReq / ICResp

export interface IcReq {
  pfv: number;
  hpda: number;
  dgst: number;
  maxr2t: number;
}

export interface IcResp {
  pfv: number;
  cpda: number;
  dgst: number;
  maxh2cdata: number;
}

export function encodeIcReq(r: IcReq): Buffer {
  const b = Buffer.alloc(IC_LEN);
  writeCommonHeader(b, { type: PduType.IC_REQ, flags: 0, hlen: IC_LEN, pdo: 0, plen: IC_LEN });
  b.writeUInt16LE(r.pfv, 8);
  b[10] = r.hpda;
  b[11] = r.dgst;
  b.writeUInt32LE(r.maxr2t >>> 0, 12);
  return b;
}

export function decodeIcReq(h: Buffer): IcReq {
  return { pfv: h.readUInt16LE(8), hpda: h[10]!, dgst: h[11]!, maxr2t: h.readUInt32LE(12) };
}

export function encodeIcResp(r: IcResp): Buffer {
  const b = Buffer.alloc(IC_LEN);
  writeCommonHeader(b, { type: PduType.IC_RESP, flags: 0, hlen: IC_LEN, pdo: 0, plen: IC_LEN });
  b.writeUInt16LE(r.pfv, 8);
  b[10] = r.cpda;
  b[11] = r.dgst;
  b.writeUInt32LE(r.maxh2cdata >>> 0, 12);
  return b;
}

export function decodeIcResp(h: Buffer): IcResp {
  return { pfv: h.readUInt16LE(8), cpda: h[10]!, dgst: h[11]!, maxh2cdata: h.readUInt32LE(12) };
}

// ---------------------------------------------------------------- TermReq

export interface TermReq {
  fes: number;
  fei: number;
  /** Copy of (the start of) the offending PDU header, at most 128 bytes. */
  header: Buffer;
}

export function encodeTermReq(type: typeof PduType.H2C_TERM_REQ | typeof PduType.C2H_TERM_REQ, t: TermReq): Buffer {
  const copy = t.header.subarray(0, TERM_REQ_MAX_DATA);
  const b = Buffer.alloc(SHORT_HLEN + copy.length);
  writeCommonHeader(b, { type, flags: 0, hlen: SHORT_HLEN, pdo: 0, plen: b.length });
  b.writeUInt16LE(t.fes, 8);
  b.writeUInt32LE(t.fei >>> 0, 10);
  copy.copy(b, SHORT_HLEN);
  return b;
}

export function decodeTermReq(h: Buffer, data: Buffer | null): TermReq {
  return { fes: h.readUInt16LE(8), fei: h.readUInt32LE(10), header: data ?? Buffer.alloc(0) };
}

// ---------------------------------------------------------------- capsules

/** CapsuleCmd: SQE (64 bytes) plus optional in-capsule data. */
export function encodeCapsuleCmd(sqe: Buffer, data: Buffer | null, dg: Digests): Buffer[] {
  const len = data ? data.length : 0;
  const h = allocHeader(PduType.CAPSULE_CMD, CAPSULE_CMD_HLEN, dg, len, 0);
  sqe.copy(h, CH_LEN, 0, SQE_LEN);
  sealHeader(h, CAPSULE_CMD_HLEN);
  if (!data || len === 0) return [h];
  return dg.ddgst ? [h, data, dataDigest(data)] : [h, data];
}

export interface Cqe {
  dw0: number;
  dw1: number;
  sqhd: number;
  sqid: number;
  cid: number;
  status: number;
}

export function encodeCapsuleResp(cqe: Cqe, dg: Digests): Buffer {
  // hot path: every byte is written, so the pooled unzeroed allocation is safe
  const hd = dg.hdgst ? DIGEST_LEN : 0;
  const h = Buffer.allocUnsafe(SHORT_HLEN + hd);
  h[0] = PduType.CAPSULE_RESP;
  h[1] = hd ? PduFlag.HDGST : 0;
  h[2] = SHORT_HLEN;
  h[3] = 0;
  h.writeUInt32LE(SHORT_HLEN + hd, 4);
  h.writeUInt32LE(cqe.dw0 >>> 0, 8);
  h.writeUInt32LE(cqe.dw1 >>> 0, 12);
  h.writeUInt16LE(cqe.sqhd & 0xffff, 16);
  h.writeUInt16LE(cqe.sqid & 0xffff, 18);
  h.writeUInt16LE(cqe.cid & 0xffff, 20);
  h.writeUInt16LE(cqe.status & 0xffff, 22);
  return sealHeader(h, SHORT_HLEN);
}

export function decodeCapsuleResp(h: Buffer): Cqe {
  return {
    dw0: h.readUInt32LE(8),
    dw1: h.readUInt32LE(12),
    sqhd: h.readUInt16LE(16),
    sqid: h.readUInt16LE(18),
    cid: h.readUInt16LE(20),
    status: h.readUInt16LE(22),
  };
}

// ---------------------------------------------------------------- data PDUs and R2T

export interface DataPduHeader {
  cccid: number;
  /** H2CData: echo of the R2T tag; C2HData: 0. */
  ttag: number;
  datao: number;
  datal: number;
}

/** H2CData or C2HData; flags may carry LAST_PDU / SUCCESS. Returns [header, data, ddgst?]. */
export function encodeDataPdu(
  type: typeof PduType.H2C_DATA | typeof PduType.C2H_DATA,
  fields: { cccid: number; ttag: number; datao: number },
  data: Buffer,
  flags: number,
  dg: Digests,
  align = 4,
): Buffer[] {
  // hot path: allocUnsafe and write every byte (reserved bytes and PDO padding zeroed explicitly)
  const hd = dg.hdgst ? DIGEST_LEN : 0;
  const len = data.length;
  const dd = dg.ddgst && len > 0 ? DIGEST_LEN : 0;
  const pdo = len > 0 ? Math.ceil((SHORT_HLEN + hd) / align) * align : 0;
  const h = Buffer.allocUnsafe(Math.max(pdo, SHORT_HLEN + hd));
  h[0] = type;
  h[1] = flags | (hd ? PduFlag.HDGST : 0) | (dd ? PduFlag.DDGST : 0);
  h[2] = SHORT_HLEN;
  h[3] = pdo;
  h.writeUInt32LE(h.length + len + dd, 4);
  h.writeUInt16LE(fields.cccid & 0xffff, 8);
  h.writeUInt16LE(fields.ttag & 0xffff, 10);
  h.writeUInt32LE(fields.datao >>> 0, 12);
  h.writeUInt32LE(len, 16);
  h.fill(0, 20);
  sealHeader(h, SHORT_HLEN);
  return dd ? [h, data, dataDigest(data)] : [h, data];
}

export function decodeDataPduHeader(h: Buffer): DataPduHeader {
  return { cccid: h.readUInt16LE(8), ttag: h.readUInt16LE(10), datao: h.readUInt32LE(12), datal: h.readUInt32LE(16) };
}

export interface R2t {
  cccid: number;
  ttag: number;
  r2to: number;
  r2tl: number;
}

export function encodeR2t(r: R2t, dg: Digests): Buffer {
  const h = allocHeader(PduType.R2T, SHORT_HLEN, dg, 0, 0);
  h.writeUInt16LE(r.cccid & 0xffff, 8);
  h.writeUInt16LE(r.ttag & 0xffff, 10);
  h.writeUInt32LE(r.r2to >>> 0, 12);
  h.writeUInt32LE(r.r2tl >>> 0, 16);
  return sealHeader(h, SHORT_HLEN);
}

export function decodeR2t(h: Buffer): R2t {
  return { cccid: h.readUInt16LE(8), ttag: h.readUInt16LE(10), r2to: h.readUInt32LE(12), r2tl: h.readUInt32LE(16) };
}
