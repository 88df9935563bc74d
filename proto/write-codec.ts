/**
 * Hand-rolled protobuf encoding of the one hot message, AgentMessage{write},
 * straight into a caller's buffer (hub-link.ts packs records into reusable
 * slabs, so a 4 KiB record costs no allocation of its own). Everything else
 * goes through protobufjs in codec.ts; the hub decodes these bytes with
 * protobufjs like any other envelope, and test/unit/proto checks that every
 * encoding here decodes to the same Write.
 *
 * Wire layout (every field written, zero or not, in field order: byte for
 * byte what protobufjs produces for the same object):
 *   0x12 len(Write)                         AgentMessage.write = field 2, LEN
 *     0x08 seq  0x10 epoch  0x18 offset  0x20 length  0x28 kind  0x30 origin
 *     0x3a len data                          bytes (kind 'data' only)
 *     0x40 crc32c  0x48 time_ms              varints
 * Pure: no I/O, no allocation.
 */
import { ReplError } from '../common/errors';
import type { Write } from './codec';

const KIND = { data: 0, zeroes: 1, trim: 2 } as const;
const ORIGIN = { live: 0, resync: 1 } as const;

/** Bytes of the varint encoding of a safe non-negative integer. */
export function varintBytes(v: number): number {
  let n = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    n++;
  }
  return n;
}

function putVarint(buf: Buffer, pos: number, v: number): number {
  while (v >= 128) {
    buf[pos++] = (v % 128) | 0x80;
    v = Math.floor(v / 128);
  }
  buf[pos++] = v;
  return pos;
}

function field(v: number): number {
  return 1 + varintBytes(v);
}

function check(v: number, name: string): void {
  if (!Number.isSafeInteger(v) || v < 0) throw ReplError.internal(`write ${name} ${v} is not a safe non-negative integer`);
}

function bodyBytes(w: Write, dataLength: number): number {
  return (
    field(w.seq) +
    field(w.epoch) +
    field(w.offset) +
    field(w.length) +
    field(KIND[w.kind]) +
    field(ORIGIN[w.origin]) +
    1 + varintBytes(dataLength) + dataLength +
    field(w.crc32c >>> 0) +
    field(w.timeMs)
  );
}

/** Size of the encoded envelope of `w` (what encodeWriteInto writes). */
export function encodedWriteBytes(w: Write): number {
  const body = bodyBytes(w, w.data.length);
  return 1 + varintBytes(body) + body;
}

/**
 * Encodes AgentMessage{write: w} at buf[pos..] and returns the end position.
 * The caller reserved encodedWriteBytes(w) bytes.
 */
export function encodeWriteInto(buf: Buffer, pos: number, w: Write): number {
  check(w.seq, 'seq');
  check(w.epoch, 'epoch');
  check(w.offset, 'offset');
  check(w.length, 'length');
  check(w.timeMs, 'timeMs');
  const dataLength = w.data.length;
  const body = bodyBytes(w, dataLength);
  buf[pos++] = 0x12;
  pos = putVarint(buf, pos, body);
  const put = (tag: number, v: number): void => {
    buf[pos++] = tag;
    pos = putVarint(buf, pos, v);
  };
  put(0x08, w.seq);
  put(0x10, w.epoch);
  put(0x18, w.offset);
  put(0x20, w.length);
  put(0x28, KIND[w.kind]);
  put(0x30, ORIGIN[w.origin]);
  buf[pos++] = 0x3a;
  pos = putVarint(buf, pos, dataLength);
  if (dataLength > 0) pos += w.data.copy(buf, pos);
  put(0x40, w.crc32c >>> 0);
  put(0x48, w.timeMs);
  return pos;
}
