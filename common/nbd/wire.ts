/**
 * NBD wire constants and the small helpers shared by the handshake and
 * transmission codecs (see protocol.ts, which re-exports all of this).
 */
import { ReplError } from '../errors';

export const NBD_MAGIC = 0x4e42444d41474943n; // "NBDMAGIC"
export const IHAVEOPT = 0x49484156454f5054n; // "IHAVEOPT"
export const OPTION_REPLY_MAGIC = 0x0003e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

export const GREETING_LENGTH = 18;
export const OPTION_HEADER_LENGTH = 16;
export const OPTION_REPLY_HEADER_LENGTH = 20;
export const REQUEST_LENGTH = 28;
export const SIMPLE_REPLY_LENGTH = 16;
export const STRUCTURED_HEADER_LENGTH = 20;
/** Padding after the NBD_OPT_EXPORT_NAME answer unless NO_ZEROES was agreed. */
export const EXPORT_NAME_PADDING = 124;
/** Longest string (name, description, query) we accept or send. */
export const MAX_STRING_LENGTH = 4096;

export const HandshakeFlag = { FIXED_NEWSTYLE: 0x1, NO_ZEROES: 0x2 } as const;
export const ClientFlag = { FIXED_NEWSTYLE: 0x1, NO_ZEROES: 0x2 } as const;

export const Opt = {
  EXPORT_NAME: 1,
  ABORT: 2,
  LIST: 3,
  PEEK_EXPORT: 4,
  STARTTLS: 5,
  INFO: 6,
  GO: 7,
  STRUCTURED_REPLY: 8,
  LIST_META_CONTEXT: 9,
  SET_META_CONTEXT: 10,
  EXTENDED_HEADERS: 11,
} as const;

export const Rep = {
  ACK: 1,
  SERVER: 2,
  INFO: 3,
  META_CONTEXT: 4,
  ERR_UNSUP: 0x80000001,
  ERR_POLICY: 0x80000002,
  ERR_INVALID: 0x80000003,
  ERR_PLATFORM: 0x80000004,
  ERR_TLS_REQD: 0x80000005,
  ERR_UNKNOWN: 0x80000006,
  ERR_SHUTDOWN: 0x80000007,
  ERR_BLOCK_SIZE_REQD: 0x80000008,
  ERR_TOO_BIG: 0x80000009,
} as const;

export function isErrorReply(type: number): boolean {
  return (type & 0x80000000) !== 0;
}

export const Info = { EXPORT: 0, NAME: 1, DESCRIPTION: 2, BLOCK_SIZE: 3 } as const;

export const TxFlag = {
  HAS_FLAGS: 0x0001,
  READ_ONLY: 0x0002,
  SEND_FLUSH: 0x0004,
  SEND_FUA: 0x0008,
  ROTATIONAL: 0x0010,
  SEND_TRIM: 0x0020,
  SEND_WRITE_ZEROES: 0x0040,
  SEND_DF: 0x0080,
  CAN_MULTI_CONN: 0x0100,
  SEND_RESIZE: 0x0200,
  SEND_CACHE: 0x0400,
  SEND_FAST_ZERO: 0x0800,
} as const;

export const Cmd = {
  READ: 0,
  WRITE: 1,
  DISC: 2,
  FLUSH: 3,
  TRIM: 4,
  CACHE: 5,
  WRITE_ZEROES: 6,
  BLOCK_STATUS: 7,
} as const;

export const CmdFlag = { FUA: 0x01, NO_HOLE: 0x02, DF: 0x04, REQ_ONE: 0x08, FAST_ZERO: 0x10 } as const;

export const ReplyType = {
  NONE: 0,
  OFFSET_DATA: 1,
  OFFSET_HOLE: 2,
  BLOCK_STATUS: 5,
  ERROR: 0x8001,
  ERROR_OFFSET: 0x8002,
} as const;

export const REPLY_FLAG_DONE = 0x1;

export const NbdErrno = {
  EPERM: 1,
  EIO: 5,
  ENOMEM: 12,
  EINVAL: 22,
  ENOSPC: 28,
  EOVERFLOW: 75,
  ENOTSUP: 95,
  ESHUTDOWN: 108,
} as const;

/** base:allocation status bits. */
export const StateFlag = { HOLE: 0x1, ZERO: 0x2 } as const;
export const BASE_ALLOCATION = 'base:allocation';

// ---------------------------------------------------------------- helpers

export function need(buf: Buffer, length: number, what: string): void {
  if (buf.length < length) {
    throw ReplError.protocol(`${what}: need ${length} bytes, have ${buf.length}`);
  }
}

/** 64-bit big-endian read as a number (exact up to 2^53, approximate and huge above). */
export function readU64(buf: Buffer, offset: number): number {
  return buf.readUInt32BE(offset) * 0x100000000 + buf.readUInt32BE(offset + 4);
}

export function writeU64(buf: Buffer, value: number, offset: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw ReplError.invalid(`bad 64-bit value ${value}`);
  buf.writeUInt32BE(Math.floor(value / 0x100000000), offset);
  buf.writeUInt32BE(value >>> 0, offset + 4);
}

export function encodeString(text: string): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length > MAX_STRING_LENGTH) throw ReplError.invalid(`string of ${b.length} bytes is too long`);
  return b;
}

/** Reads a u32-length-prefixed string at pos; returns it and the next position. */
export function readLengthPrefixed(buf: Buffer, pos: number, what: string): { text: string; next: number } {
  if (pos + 4 > buf.length) throw ReplError.protocol(`${what}: length field runs past the data`);
  const n = buf.readUInt32BE(pos);
  if (n > MAX_STRING_LENGTH) throw ReplError.protocol(`${what}: length ${n} exceeds ${MAX_STRING_LENGTH}`);
  if (pos + 4 + n > buf.length) throw ReplError.protocol(`${what}: ${n} bytes run past the data`);
  return { text: buf.toString('utf8', pos + 4, pos + 4 + n), next: pos + 4 + n };
}

