/**
 * NBD wire format (fixed newstyle handshake, compact requests, simple and
 * structured replies). Pure: Buffer in, typed value out; no sockets, no timers.
 * All integers are big-endian. Decoders validate lengths against the buffer
 * they are given and throw ReplError('E_PROTOCOL') on malformed input; the
 * callers (server, client) decide whether that ends the connection.
 * 64-bit offsets are carried as numbers: anything above 2^53 is far beyond
 * any export, so the range check rejects it either way. Cookies stay bigint.
 *
 * This module is the one import point for the codec: it holds the
 * transmission part (requests, simple and structured replies) and re-exports
 * the constants (wire.ts) and the handshake codec (handshake-codec.ts).
 */
import { ReplError } from '../errors';
import {
  REPLY_FLAG_DONE,
  REQUEST_LENGTH,
  REQUEST_MAGIC,
  ReplyType,
  SIMPLE_REPLY_LENGTH,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_HEADER_LENGTH,
  STRUCTURED_REPLY_MAGIC,
  need,
  readU64,
  writeU64,
} from './wire';

export * from './wire';
export * from './handshake-codec';

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

// Reply headers on the hot path come from Node's shared slab (allocUnsafe):
// every byte is written below, and a zero-filled Buffer.alloc would cost one
// ArrayBuffer per reply.
export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(SIMPLE_REPLY_LENGTH);
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
  const b = Buffer.allocUnsafe(STRUCTURED_HEADER_LENGTH + 8);
  b.writeUInt32BE(STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(done ? REPLY_FLAG_DONE : 0, 4);
  b.writeUInt16BE(ReplyType.OFFSET_DATA, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE((8 + dataLength) >>> 0, 16);
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
