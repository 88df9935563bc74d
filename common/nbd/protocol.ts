/**
 * NBD wire format (fixed newstyle handshake, compact requests, simple and
 * structured replies). Pure: Buffer in, typed value out; no sockets, no timers.
 * All integers are big-endian. Decoders validate lengths against the buffer
 * they are given and throw ReplError('E_PROTOCOL') on malformed input; the
 * callers (server, client) decide whether that ends the connection.
 * 64-bit offsets are carried as numbers: anything above 2^53 is far beyond
 * any export, so the range check rejects it either way. Cookies stay bigint.
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

function need(buf: Buffer, length: number, what: string): void {
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

function encodeString(text: string): Buffer {
  const b = Buffer.from(text, 'utf8');
  if (b.length > MAX_STRING_LENGTH) throw ReplError.invalid(`string of ${b.length} bytes is too long`);
  return b;
}

/** Reads a u32-length-prefixed string at pos; returns it and the next position. */
function readLengthPrefixed(buf: Buffer, pos: number, what: string): { text: string; next: number } {
  if (pos + 4 > buf.length) throw ReplError.protocol(`${what}: length field runs past the data`);
  const n = buf.readUInt32BE(pos);
  if (n > MAX_STRING_LENGTH) throw ReplError.protocol(`${what}: length ${n} exceeds ${MAX_STRING_LENGTH}`);
  if (pos + 4 + n > buf.length) throw ReplError.protocol(`${what}: ${n} bytes run past the data`);
  return { text: buf.toString('utf8', pos + 4, pos + 4 + n), next: pos + 4 + n };
}

// --------------------------------------------------------------- greeting

export function encodeGreeting(flags: number): Buffer {
  const b = Buffer.alloc(GREETING_LENGTH);
  b.writeBigUInt64BE(NBD_MAGIC, 0);
  b.writeBigUInt64BE(IHAVEOPT, 8);
  b.writeUInt16BE(flags, 16);
  return b;
}

export function decodeGreeting(buf: Buffer): { flags: number } {
  need(buf, GREETING_LENGTH, 'greeting');
  if (buf.readBigUInt64BE(0) !== NBD_MAGIC) throw ReplError.protocol('greeting: bad NBDMAGIC');
  if (buf.readBigUInt64BE(8) !== IHAVEOPT) throw ReplError.protocol('greeting: not a newstyle server');
  return { flags: buf.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function decodeClientFlags(buf: Buffer): number {
  need(buf, 4, 'client flags');
  return buf.readUInt32BE(0);
}

// ---------------------------------------------------------------- options

export interface OptionHeader {
  option: number;
  length: number;
}

export function encodeOptionRequest(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_HEADER_LENGTH + data.length);
  b.writeBigUInt64BE(IHAVEOPT, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, OPTION_HEADER_LENGTH);
  return b;
}

export function decodeOptionHeader(buf: Buffer): OptionHeader {
  need(buf, OPTION_HEADER_LENGTH, 'option header');
  if (buf.readBigUInt64BE(0) !== IHAVEOPT) throw ReplError.protocol('option request without IHAVEOPT magic');
  return { option: buf.readUInt32BE(8), length: buf.readUInt32BE(12) };
}

export interface OptionReplyHeader {
  option: number;
  type: number;
  length: number;
}

export function encodeOptionReply(option: number, type: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(OPTION_REPLY_HEADER_LENGTH + payload.length);
  b.writeBigUInt64BE(OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option >>> 0, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(payload.length, 16);
  payload.copy(b, OPTION_REPLY_HEADER_LENGTH);
  return b;
}

export function encodeOptionError(option: number, type: number, message: string): Buffer {
  return encodeOptionReply(option, type, encodeString(message.slice(0, 1024)));
}

export function decodeOptionReplyHeader(buf: Buffer): OptionReplyHeader {
  need(buf, OPTION_REPLY_HEADER_LENGTH, 'option reply header');
  if (buf.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw ReplError.protocol('option reply: bad magic');
  return { option: buf.readUInt32BE(8), type: buf.readUInt32BE(12), length: buf.readUInt32BE(16) };
}

/** NBD_OPT_INFO / NBD_OPT_GO data. */
export interface InfoRequest {
  name: string;
  requests: number[];
}

export function encodeInfoRequest(req: InfoRequest): Buffer {
  const name = encodeString(req.name);
  const b = Buffer.alloc(6 + name.length + 2 * req.requests.length);
  b.writeUInt32BE(name.length, 0);
  name.copy(b, 4);
  b.writeUInt16BE(req.requests.length, 4 + name.length);
  req.requests.forEach((r, i) => b.writeUInt16BE(r, 6 + name.length + 2 * i));
  return b;
}

export function decodeInfoRequest(data: Buffer): InfoRequest {
  const { text: name, next } = readLengthPrefixed(data, 0, 'info request name');
  if (next + 2 > data.length) throw ReplError.protocol('info request: missing request count');
  const count = data.readUInt16BE(next);
  if (next + 2 + 2 * count !== data.length) throw ReplError.protocol('info request: length mismatch');
  const requests: number[] = [];
  for (let i = 0; i < count; i++) requests.push(data.readUInt16BE(next + 2 + 2 * i));
  return { name, requests };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

export function encodeMetaContextRequest(req: MetaContextRequest): Buffer {
  const parts: Buffer[] = [];
  const name = encodeString(req.name);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(name.length, 0);
  parts.push(head, name);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(req.queries.length, 0);
  parts.push(count);
  for (const q of req.queries) {
    const qb = encodeString(q);
    const len = Buffer.alloc(4);
    len.writeUInt32BE(qb.length, 0);
    parts.push(len, qb);
  }
  return Buffer.concat(parts);
}

export function decodeMetaContextRequest(data: Buffer): MetaContextRequest {
  const { text: name, next } = readLengthPrefixed(data, 0, 'meta context export name');
  if (next + 4 > data.length) throw ReplError.protocol('meta context: missing query count');
  const count = data.readUInt32BE(next);
  // each query needs at least its 4-byte length: bounds the loop before we start
  if (count > (data.length - next - 4) / 4) throw ReplError.protocol('meta context: query count too large');
  const queries: string[] = [];
  let pos = next + 4;
  for (let i = 0; i < count; i++) {
    const q = readLengthPrefixed(data, pos, 'meta context query');
    queries.push(q.text);
    pos = q.next;
  }
  if (pos !== data.length) throw ReplError.protocol('meta context: trailing bytes');
  return { name, queries };
}

/** NBD_REP_SERVER payload (one export in a LIST answer). */
export function encodeServerReply(name: string, description = ''): Buffer {
  const n = encodeString(name);
  const d = encodeString(description);
  const b = Buffer.alloc(4 + n.length + d.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  d.copy(b, 4 + n.length);
  return b;
}

export function decodeServerReply(payload: Buffer): { name: string; description: string } {
  const { text: name, next } = readLengthPrefixed(payload, 0, 'server reply');
  return { name, description: payload.toString('utf8', next) };
}

/** NBD_REP_META_CONTEXT payload. */
export function encodeMetaContextReply(id: number, name: string): Buffer {
  const n = encodeString(name);
  const b = Buffer.alloc(4 + n.length);
  b.writeUInt32BE(id >>> 0, 0);
  n.copy(b, 4);
  return b;
}

export function decodeMetaContextReply(payload: Buffer): { id: number; name: string } {
  need(payload, 4, 'meta context reply');
  return { id: payload.readUInt32BE(0), name: payload.toString('utf8', 4) };
}

/** Items of an NBD_REP_INFO reply. */
export type InfoItem =
  | { type: 'export'; size: number; flags: number }
  | { type: 'name'; name: string }
  | { type: 'description'; description: string }
  | { type: 'block-size'; minimum: number; preferred: number; maximum: number }
  | { type: 'unknown'; info: number };

export function encodeInfoItem(item: InfoItem): Buffer {
  switch (item.type) {
    case 'export': {
      const b = Buffer.alloc(12);
      b.writeUInt16BE(Info.EXPORT, 0);
      writeU64(b, item.size, 2);
      b.writeUInt16BE(item.flags, 10);
      return b;
    }
    case 'name':
    case 'description': {
      const text = encodeString(item.type === 'name' ? item.name : item.description);
      const b = Buffer.alloc(2 + text.length);
      b.writeUInt16BE(item.type === 'name' ? Info.NAME : Info.DESCRIPTION, 0);
      text.copy(b, 2);
      return b;
    }
    case 'block-size': {
      const b = Buffer.alloc(14);
      b.writeUInt16BE(Info.BLOCK_SIZE, 0);
      b.writeUInt32BE(item.minimum, 2);
      b.writeUInt32BE(item.preferred, 6);
      b.writeUInt32BE(item.maximum, 10);
      return b;
    }
    case 'unknown':
      throw ReplError.invalid(`cannot encode unknown info item ${item.info}`);
  }
}

export function decodeInfoItem(payload: Buffer): InfoItem {
  need(payload, 2, 'info reply');
  const info = payload.readUInt16BE(0);
  switch (info) {
    case Info.EXPORT:
      if (payload.length !== 12) throw ReplError.protocol('NBD_INFO_EXPORT must be 12 bytes');
      return { type: 'export', size: readU64(payload, 2), flags: payload.readUInt16BE(10) };
    case Info.NAME:
      return { type: 'name', name: payload.toString('utf8', 2) };
    case Info.DESCRIPTION:
      return { type: 'description', description: payload.toString('utf8', 2) };
    case Info.BLOCK_SIZE:
      if (payload.length !== 14) throw ReplError.protocol('NBD_INFO_BLOCK_SIZE must be 14 bytes');
      return {
        type: 'block-size',
        minimum: payload.readUInt32BE(2),
        preferred: payload.readUInt32BE(6),
        maximum: payload.readUInt32BE(10),
      };
    default:
      return { type: 'unknown', info };
  }
}

/** Answer to NBD_OPT_EXPORT_NAME: size, flags and (without NO_ZEROES) 124 zero bytes. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : EXPORT_NAME_PADDING));
  writeU64(b, size, 0);
  b.writeUInt16BE(flags, 8);
  return b;
}

// ------------------------------------------------------------ transmission

export interface NbdRequest {
  flags: number;
  type: number;
  cookie: bigint;
  offset: number;
  length: number;
}

export function encodeRequest(req: NbdRequest): Buffer {
  const b = Buffer.alloc(REQUEST_LENGTH);
  b.writeUInt32BE(REQUEST_MAGIC, 0);
  b.writeUInt16BE(req.flags, 4);
  b.writeUInt16BE(req.type, 6);
  b.writeBigUInt64BE(req.cookie, 8);
  writeU64(b, req.offset, 16);
  b.writeUInt32BE(req.length, 24);
  return b;
}

/** Decodes a 28-byte request header; a wrong magic means the stream is out of sync. */
export function decodeRequest(buf: Buffer): NbdRequest {
  need(buf, REQUEST_LENGTH, 'request');
  const magic = buf.readUInt32BE(0);
  if (magic !== REQUEST_MAGIC) throw ReplError.protocol(`bad request magic 0x${magic.toString(16)}`);
  return {
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: buf.readBigUInt64BE(8),
    offset: readU64(buf, 16),
    length: buf.readUInt32BE(24),
  };
}

export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.alloc(SIMPLE_REPLY_LENGTH);
  b.writeUInt32BE(SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error >>> 0, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

export interface StructuredHeader {
  flags: number;
  type: number;
  cookie: bigint;
  length: number;
}

export function encodeStructuredHeader(h: StructuredHeader, extra = 0): Buffer {
  const b = Buffer.alloc(STRUCTURED_HEADER_LENGTH + extra);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(h.flags, 4);
  b.writeUInt16BE(h.type, 6);
  b.writeBigUInt64BE(h.cookie, 8);
  b.writeUInt32BE(h.length >>> 0, 16);
  return b;
}

/** Header + offset of an OFFSET_DATA chunk; the data itself is written separately (no copy). */
export function encodeOffsetDataHeader(cookie: bigint, offset: number, dataLength: number, done: boolean): Buffer {
  const b = encodeStructuredHeader(
    { flags: done ? REPLY_FLAG_DONE : 0, type: ReplyType.OFFSET_DATA, cookie, length: 8 + dataLength },
    8,
  );
  writeU64(b, offset, STRUCTURED_HEADER_LENGTH);
  return b;
}

export function encodeErrorChunk(cookie: bigint, error: number, message: string, done = true): Buffer {
  const msg = Buffer.from(message.slice(0, 1024), 'utf8');
  const b = encodeStructuredHeader(
    { flags: done ? REPLY_FLAG_DONE : 0, type: ReplyType.ERROR, cookie, length: 6 + msg.length },
    6 + msg.length,
  );
  b.writeUInt32BE(error >>> 0, STRUCTURED_HEADER_LENGTH);
  b.writeUInt16BE(msg.length, STRUCTURED_HEADER_LENGTH + 4);
  msg.copy(b, STRUCTURED_HEADER_LENGTH + 6);
  return b;
}

export interface BlockStatusExtent {
  length: number;
  flags: number;
}

export function encodeBlockStatusChunk(
  cookie: bigint,
  contextId: number,
  extents: BlockStatusExtent[],
  done = true,
): Buffer {
  const length = 4 + 8 * extents.length;
  const b = encodeStructuredHeader(
    { flags: done ? REPLY_FLAG_DONE : 0, type: ReplyType.BLOCK_STATUS, cookie, length },
    length,
  );
  let pos = STRUCTURED_HEADER_LENGTH;
  b.writeUInt32BE(contextId >>> 0, pos);
  pos += 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length >>> 0, pos);
    b.writeUInt32BE(e.flags >>> 0, pos + 4);
    pos += 8;
  }
  return b;
}

/** Reply header of either kind (the client reads 4 bytes of magic first, then the rest). */
export type ReplyHeader =
  | { kind: 'simple'; error: number; cookie: bigint }
  | ({ kind: 'structured' } & StructuredHeader);

export function replyHeaderLength(magic: number): number {
  if (magic === SIMPLE_REPLY_MAGIC) return SIMPLE_REPLY_LENGTH;
  if (magic === STRUCTURED_REPLY_MAGIC) return STRUCTURED_HEADER_LENGTH;
  throw ReplError.protocol(`bad reply magic 0x${magic.toString(16)}`);
}

export function decodeReplyHeader(buf: Buffer): ReplyHeader {
  need(buf, 4, 'reply');
  const magic = buf.readUInt32BE(0);
  need(buf, replyHeaderLength(magic), 'reply header');
  if (magic === SIMPLE_REPLY_MAGIC) {
    return { kind: 'simple', error: buf.readUInt32BE(4), cookie: buf.readBigUInt64BE(8) };
  }
  return {
    kind: 'structured',
    flags: buf.readUInt16BE(4),
    type: buf.readUInt16BE(6),
    cookie: buf.readBigUInt64BE(8),
    length: buf.readUInt32BE(16),
  };
}

export function decodeErrorPayload(payload: Buffer): { error: number; message: string } {
  need(payload, 6, 'error chunk');
  const m = payload.readUInt16BE(4);
  if (6 + m > payload.length) throw ReplError.protocol('error chunk: message runs past the payload');
  return { error: payload.readUInt32BE(0), message: payload.toString('utf8', 6, 6 + m) };
}

export function decodeBlockStatusPayload(payload: Buffer): { contextId: number; extents: BlockStatusExtent[] } {
  need(payload, 12, 'block status chunk');
  if ((payload.length - 4) % 8 !== 0) throw ReplError.protocol('block status chunk: ragged extent list');
  const extents: BlockStatusExtent[] = [];
  for (let pos = 4; pos < payload.length; pos += 8) {
    extents.push({ length: payload.readUInt32BE(pos), flags: payload.readUInt32BE(pos + 4) });
  }
  return { contextId: payload.readUInt32BE(0), extents };
}
