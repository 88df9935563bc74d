/**
 * Pure codec of the 64-byte submission queue entry and of the structures that
 * ride in it: SGL descriptor, Fabrics Connect data, opcodes. Shared by the
 * target (decode) and the host library (encode).
 */
import { getString, putString } from './identify';
import { SQE_LEN } from './pdu';

export const AdminOpcode = {
  GET_LOG_PAGE: 0x02,
  IDENTIFY: 0x06,
  ABORT: 0x08,
  SET_FEATURES: 0x09,
  GET_FEATURES: 0x0a,
  ASYNC_EVENT_REQUEST: 0x0c,
  KEEP_ALIVE: 0x18,
} as const;

export const IoOpcode = {
  FLUSH: 0x00,
  WRITE: 0x01,
  READ: 0x02,
  WRITE_ZEROES: 0x08,
  DATASET_MANAGEMENT: 0x09,
} as const;

export const FABRICS_OPCODE = 0x7f;

export const FabricsType = {
  PROPERTY_SET: 0x00,
  CONNECT: 0x01,
  PROPERTY_GET: 0x04,
  AUTH_SEND: 0x05,
  AUTH_RECEIVE: 0x06,
  DISCONNECT: 0x08,
} as const;

export const FeatureId = {
  VOLATILE_WRITE_CACHE: 0x06,
  NUMBER_OF_QUEUES: 0x07,
  ASYNC_EVENT_CONFIG: 0x0b,
  KEEP_ALIVE_TIMER: 0x0f,
  TEMPERATURE_THRESHOLD: 0x04,
  HOST_IDENTIFIER: 0x81,
} as const;

/** SGL identifier byte values the TCP transport uses. */
export const SglId = { DATA_BLOCK_OFFSET: 0x01, TRANSPORT_DATA_BLOCK: 0x5a } as const;

/** Data direction from opcode bits 1:0 (fabrics: FCTYPE bits 1:0). */
export type Direction = 'none' | 'h2c' | 'c2h' | 'both';

export function directionOf(bits: number): Direction {
  switch (bits & 3) {
    case 1:
      return 'h2c';
    case 2:
      return 'c2h';
    case 3:
      return 'both';
    default:
      return 'none';
  }
}

/** Decoded view of an SQE; cdw values are unsigned. */
export interface Sqe {
  opcode: number;
  flags: number;
  cid: number;
  nsid: number;
  /** Fabrics command type (byte 4) when opcode is 0x7F. */
  fctype: number;
  /** SGL address as a double (exact below 2^53; we only compare it with 0). */
  sglAddress: number;
  sglLength: number;
  sglId: number;
  cdw10: number;
  cdw11: number;
  cdw12: number;
  cdw13: number;
  cdw14: number;
  cdw15: number;
  raw: Buffer;
}

export function decodeSqe(b: Buffer): Sqe {
  return {
    opcode: b[0]!,
    flags: b[1]!,
    cid: b.readUInt16LE(2),
    nsid: b.readUInt32LE(4),
    fctype: b[4]!,
    sglAddress: b.readUInt32LE(28) * 2 ** 32 + b.readUInt32LE(24),
    sglLength: b.readUInt32LE(32),
    sglId: b[39]!,
    cdw10: b.readUInt32LE(40),
    cdw11: b.readUInt32LE(44),
    cdw12: b.readUInt32LE(48),
    cdw13: b.readUInt32LE(52),
    cdw14: b.readUInt32LE(56),
    cdw15: b.readUInt32LE(60),
    raw: b,
  };
}

export interface SqeFields {
  opcode: number;
  cid: number;
  nsid?: number;
  fctype?: number;
  /** Data length and whether it travels in the capsule. */
  dataLength?: number;
  inCapsule?: boolean;
  cdw10?: number;
  cdw11?: number;
  cdw12?: number;
  cdw13?: number;
  cdw14?: number;
  cdw15?: number;
}

/** Builds an SQE the way the Linux host does (PSDT = SGL, 0x40). */
export function encodeSqe(f: Omit<SqeFields, 'cid'> & { cid?: number }): Buffer {
  // pooled allocation: this runs once per command
  const b = Buffer.allocUnsafe(SQE_LEN).fill(0);
  b[0] = f.opcode;
  b[1] = 0x40;
  b.writeUInt16LE((f.cid ?? 0) & 0xffff, 2);
  if (f.opcode === FABRICS_OPCODE) b[4] = f.fctype ?? 0;
  else b.writeUInt32LE((f.nsid ?? 0) >>> 0, 4);
  b.writeUInt32LE(f.dataLength ?? 0, 32);
  b[39] = f.inCapsule ? SglId.DATA_BLOCK_OFFSET : SglId.TRANSPORT_DATA_BLOCK;
  b.writeUInt32LE((f.cdw10 ?? 0) >>> 0, 40);
  b.writeUInt32LE((f.cdw11 ?? 0) >>> 0, 44);
  b.writeUInt32LE((f.cdw12 ?? 0) >>> 0, 48);
  b.writeUInt32LE((f.cdw13 ?? 0) >>> 0, 52);
  b.writeUInt32LE((f.cdw14 ?? 0) >>> 0, 56);
  b.writeUInt32LE((f.cdw15 ?? 0) >>> 0, 60);
  return b;
}

export const CONNECT_DATA_LEN = 1024;

export interface ConnectData {
  hostid: Buffer;
  cntlid: number;
  subnqn: string;
  hostnqn: string;
}

export function encodeConnectData(d: ConnectData): Buffer {
  const b = Buffer.alloc(CONNECT_DATA_LEN);
  d.hostid.copy(b, 0, 0, 16);
  b.writeUInt16LE(d.cntlid, 16);
  putString(b, 256, 256, d.subnqn, 'nul');
  putString(b, 512, 256, d.hostnqn, 'nul');
  return b;
}

export function decodeConnectData(b: Buffer): ConnectData {
  return {
    hostid: Buffer.from(b.subarray(0, 16)),
    cntlid: b.readUInt16LE(16),
    subnqn: getString(b, 256, 256),
    hostnqn: getString(b, 512, 256),
  };
}

/** Connect SQE fields (cdw10..12). */
export interface ConnectParams {
  recfmt: number;
  qid: number;
  sqsize: number;
  cattr: number;
  kato: number;
}

export function decodeConnectParams(s: Sqe): ConnectParams {
  return {
    recfmt: s.cdw10 & 0xffff,
    qid: s.cdw10 >>> 16,
    sqsize: s.cdw11 & 0xffff,
    cattr: (s.cdw11 >>> 16) & 0xff,
    kato: s.cdw12,
  };
}

/** DSM range: context attributes, length in blocks (not 0-based), starting LBA. */
export interface DsmRange {
  attributes: number;
  blocks: number;
  slba: bigint;
}

export const DSM_RANGE_LEN = 16;

export function decodeDsmRanges(data: Buffer, count: number): DsmRange[] {
  const out: DsmRange[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * DSM_RANGE_LEN;
    out.push({ attributes: data.readUInt32LE(o), blocks: data.readUInt32LE(o + 4), slba: data.readBigUInt64LE(o + 8) });
  }
  return out;
}

export function encodeDsmRanges(ranges: readonly DsmRange[]): Buffer {
  const b = Buffer.alloc(Math.max(4096, ranges.length * DSM_RANGE_LEN));
  ranges.forEach((r, i) => {
    const o = i * DSM_RANGE_LEN;
    b.writeUInt32LE(r.attributes >>> 0, o);
    b.writeUInt32LE(r.blocks >>> 0, o + 4);
    b.writeBigUInt64LE(r.slba, o + 8);
  });
  return b;
}
