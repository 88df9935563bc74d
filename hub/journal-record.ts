/**
 * Pure codec for journal records and segment headers (no fs, no timers).
 *
 * Record = 64-byte header + `dataLength` payload bytes, little-endian,
 * records packed back to back (no padding) after the 4096-byte segment header:
 *
 *   off size field
 *    0   4   magic      0x4C52_4A52 ("RJRL" read as LE bytes 52 4A 52 4C)
 *    4   1   version    1
 *    5   1   type       1 data, 2 zeroes, 3 trim, 4 seal, 5 resync-begin, 6 resync-end
 *    6   2   flags      bit0 origin=resync, bit1 full (resync-begin),
 *                       bits 8..11 seal reason (0 timer,1 flush,2 fua,3 resync-end,4 shutdown)
 *    8   8   seq        agent sequence number (seal: last_seq of the epoch)
 *   16   8   epoch      agent epoch (resync-end: the epoch whose Seal ends the group)
 *   24   8   offset     bytes (resync-begin/-end: resync id)
 *   32   8   length     bytes (resync-begin: total bytes planned)
 *   40   8   timeMs     agent wall clock (resync records: hub wall clock)
 *   48   4   dataLength payload bytes after the header (= length for data, else 0)
 *   52   4   salt       random salt of the segment the record was written to
 *   56   4   dataCrc    CRC32C of the payload (0 when dataLength = 0)
 *   60   4   headerCrc  CRC32C of bytes 0..59 (so it covers dataCrc, hence the data)
 *
 * 64-bit fields are u64 LE and must stay below 2^53. A record is valid only if
 * magic, version, type, flags, salt, headerCrc, dataCrc and the length rules
 * all hold; anything else is a torn or foreign record and ends the scan.
 * The payload CRC is computed once (on the hot path it is the agent's wire
 * CRC after we verified it) and the header CRC covers it, so the payload is
 * hashed once per record instead of twice.
 *
 * Segment header (first 4096 bytes of every segment file; bytes past 64 are 0):
 *    0 u32 magic 0x4745_5352 ("RSEG"), 4 u16 version 1, 6 u16 header bytes (4096),
 *    8 u32 salt, 12 u32 reserved 0, 16 u64 ordinal, 24 u64 createdMs,
 *   32 u64 segment bytes, 40 20 bytes owner token (ASCII, NUL padded),
 *   60 u32 CRC32C of bytes 0..59.
 */
import { crc32c } from '../common/nvme-tcp/crc32c';
import { ReplError } from '../common/errors';

export const RECORD_MAGIC = 0x4c524a52;
export const SEGMENT_MAGIC = 0x47455352;
export const FORMAT_VERSION = 1;
export const RECORD_HEADER_BYTES = 64;
export const SEGMENT_HEADER_BYTES = 4096;
const OWNER_BYTES = 20;

/** Journal positions: ordinal * 2^32 + byte offset in the segment (segments < 4 GiB). */
export const POSITION_SCALE = 0x100000000;
export function positionOf(ordinal: number, offset: number): number {
  return ordinal * POSITION_SCALE + offset;
}
export function ordinalOf(position: number): number {
  return Math.floor(position / POSITION_SCALE);
}

export type RecordType = 'data' | 'zeroes' | 'trim' | 'seal' | 'resync-begin' | 'resync-end';
const TYPES: readonly RecordType[] = ['data', 'zeroes', 'trim', 'seal', 'resync-begin', 'resync-end'];
export const SEAL_REASONS = ['timer', 'flush', 'fua', 'resync-end', 'shutdown'] as const;
export type JournalSealReason = (typeof SEAL_REASONS)[number];

/** A decoded record header (the payload is addressed separately). */
export interface RecordHeader {
  type: RecordType;
  /** Origin of a data/zeroes/trim record. */
  resync: boolean;
  /** resync-begin: a FULL resync. */
  full: boolean;
  sealReason: JournalSealReason;
  seq: number;
  epoch: number;
  offset: number;
  length: number;
  timeMs: number;
  dataLength: number;
  salt: number;
  dataCrc: number;
}

export interface SegmentHeader {
  salt: number;
  ordinal: number;
  createdMs: number;
  segmentBytes: number;
  owner: string;
}

const MAX_U53 = Number.MAX_SAFE_INTEGER;

function corrupt(message: string): ReplError {
  return new ReplError('E_IO', `journal: ${message}`);
}

function putU64(buf: Buffer, at: number, value: number): void {
  if (!Number.isSafeInteger(value) || value < 0) throw ReplError.internal(`journal: u64 field ${value} out of range`);
  buf.writeUInt32LE(value % 0x100000000, at);
  buf.writeUInt32LE(Math.floor(value / 0x100000000), at + 4);
}

function getU64(buf: Buffer, at: number, field: string): number {
  const high = buf.readUInt32LE(at + 4);
  if (high >= 0x200000) throw corrupt(`${field} out of range`);
  return high * 0x100000000 + buf.readUInt32LE(at);
}

/** Encodes a record header; `dataCrc` must already be the CRC32C of the payload. */
export function encodeRecordHeader(h: RecordHeader): Buffer {
  const buf = Buffer.alloc(RECORD_HEADER_BYTES);
  encodeRecordHeaderInto(buf, 0, h);
  return buf;
}

/** encodeRecordHeader into buf[at, at + 64) (the journal packs a batch's headers into one buffer). */
export function encodeRecordHeaderInto(buf: Buffer, at: number, h: RecordHeader): void {
  const typeIndex = TYPES.indexOf(h.type);
  const reason = SEAL_REASONS.indexOf(h.sealReason);
  if (typeIndex < 0 || reason < 0) throw ReplError.internal(`journal: bad record type ${h.type}/${h.sealReason}`);
  if (h.type === 'data' ? h.dataLength !== h.length : h.dataLength !== 0) {
    throw ReplError.internal(`journal: ${h.type} record with ${h.dataLength} payload bytes`);
  }
  buf.writeUInt32LE(RECORD_MAGIC, at);
  buf.writeUInt8(FORMAT_VERSION, at + 4);
  buf.writeUInt8(typeIndex + 1, at + 5);
  buf.writeUInt16LE((h.resync ? 1 : 0) | (h.full ? 2 : 0) | (reason << 8), at + 6);
  putU64(buf, at + 8, h.seq);
  putU64(buf, at + 16, h.epoch);
  putU64(buf, at + 24, h.offset);
  putU64(buf, at + 32, h.length);
  putU64(buf, at + 40, h.timeMs);
  buf.writeUInt32LE(h.dataLength, at + 48);
  buf.writeUInt32LE(h.salt >>> 0, at + 52);
  buf.writeUInt32LE(h.dataCrc >>> 0, at + 56);
  buf.writeUInt32LE(crc32c(buf, 0, at, at + 60), at + 60);
}

export interface DecodeLimits {
  /** Largest payload accepted (bounded before anything is allocated). */
  maxDataBytes: number;
  /** The salt of the segment being scanned. */
  salt: number;
}

/**
 * Decodes and checks the 64-byte header at buf[at..]. Throws E_IO for anything
 * that is not a valid record of this segment; never throws anything else.
 */
export function decodeRecordHeader(buf: Buffer, at: number, limits: DecodeLimits): RecordHeader {
  if (at < 0 || at + RECORD_HEADER_BYTES > buf.length) throw corrupt('truncated record header');
  if (buf.readUInt32LE(at) !== RECORD_MAGIC) throw corrupt('bad record magic');
  if (crc32c(buf, 0, at, at + 60) !== buf.readUInt32LE(at + 60)) throw corrupt('record header checksum mismatch');
  if (buf.readUInt8(at + 4) !== FORMAT_VERSION) throw corrupt('unknown record version');
  const type = TYPES[buf.readUInt8(at + 5) - 1];
  if (type === undefined) throw corrupt('unknown record type');
  const flags = buf.readUInt16LE(at + 6);
  const sealReason = SEAL_REASONS[flags >> 8];
  if ((flags & 0xfc) !== 0 || sealReason === undefined) throw corrupt('unknown record flags');
  const salt = buf.readUInt32LE(at + 52);
  if (salt !== limits.salt >>> 0) throw corrupt('record from another segment (salt mismatch)');
  const h: RecordHeader = {
    type,
    resync: (flags & 1) !== 0,
    full: (flags & 2) !== 0,
    sealReason,
    seq: getU64(buf, at + 8, 'seq'),
    epoch: getU64(buf, at + 16, 'epoch'),
    offset: getU64(buf, at + 24, 'offset'),
    length: getU64(buf, at + 32, 'length'),
    timeMs: getU64(buf, at + 40, 'timeMs'),
    dataLength: buf.readUInt32LE(at + 48),
    salt,
    dataCrc: buf.readUInt32LE(at + 56),
  };
  if (h.dataLength > limits.maxDataBytes) throw corrupt(`payload of ${h.dataLength} bytes exceeds limit`);
  if (type === 'data' ? h.dataLength !== h.length : h.dataLength !== 0) throw corrupt('payload length mismatch');
  if (h.dataLength === 0 && h.dataCrc !== 0) throw corrupt('crc on empty payload');
  if (h.offset + h.length > MAX_U53) throw corrupt('range out of bounds');
  return h;
}

/** Checks a payload against its header; throws E_IO on mismatch. */
export function verifyRecordData(h: RecordHeader, data: Buffer): void {
  if (data.length !== h.dataLength) throw corrupt('truncated payload');
  if (h.dataLength > 0 && crc32c(data) !== h.dataCrc) throw corrupt('payload checksum mismatch');
}

export function encodeSegmentHeader(h: SegmentHeader): Buffer {
  const buf = Buffer.alloc(SEGMENT_HEADER_BYTES);
  buf.writeUInt32LE(SEGMENT_MAGIC, 0);
  buf.writeUInt16LE(FORMAT_VERSION, 4);
  buf.writeUInt16LE(SEGMENT_HEADER_BYTES, 6);
  buf.writeUInt32LE(h.salt >>> 0, 8);
  putU64(buf, 16, h.ordinal);
  putU64(buf, 24, h.createdMs);
  putU64(buf, 32, h.segmentBytes);
  const owner = Buffer.from(h.owner, 'ascii');
  if (owner.length > OWNER_BYTES || !/^[\x21-\x7e]*$/.test(h.owner)) {
    throw ReplError.internal(`journal: owner token '${h.owner}' must be <= ${OWNER_BYTES} printable ASCII bytes`);
  }
  owner.copy(buf, 40);
  buf.writeUInt32LE(crc32c(buf, 0, 0, 60), 60);
  return buf;
}

export function decodeSegmentHeader(buf: Buffer): SegmentHeader {
  if (buf.length < 64) throw corrupt('truncated segment header');
  if (buf.readUInt32LE(0) !== SEGMENT_MAGIC) throw corrupt('bad segment magic');
  if (crc32c(buf, 0, 0, 60) !== buf.readUInt32LE(60)) throw corrupt('segment header checksum mismatch');
  if (buf.readUInt16LE(4) !== FORMAT_VERSION || buf.readUInt16LE(6) !== SEGMENT_HEADER_BYTES) {
    throw corrupt('unknown segment format');
  }
  const ownerRaw = buf.subarray(40, 40 + OWNER_BYTES);
  const end = ownerRaw.indexOf(0);
  return {
    salt: buf.readUInt32LE(8),
    ordinal: getU64(buf, 16, 'ordinal'),
    createdMs: getU64(buf, 24, 'createdMs'),
    segmentBytes: getU64(buf, 32, 'segmentBytes'),
    owner: ownerRaw.subarray(0, end < 0 ? OWNER_BYTES : end).toString('ascii'),
  };
}
