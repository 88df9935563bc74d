/**
 * Handshake codec: greeting, client flags, option requests and replies, info
 * items, meta contexts, LIST entries, the EXPORT_NAME answer. Pure; re-exported
 * by protocol.ts.
 */
import { ReplError } from '../errors';
import {
  IHAVEOPT,
  Info,
  MAX_STRING_LENGTH,
  NBD_MAGIC,
  OPTION_HEADER_LENGTH,
  OPTION_REPLY_HEADER_LENGTH,
  OPTION_REPLY_MAGIC,
  EXPORT_NAME_PADDING,
  GREETING_LENGTH,
  encodeString,
  need,
  readLengthPrefixed,
  readU64,
  writeU64,
} from './wire';

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

