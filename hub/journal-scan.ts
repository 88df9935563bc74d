/**
 * Recovery scan of one journal segment: verifies the segment header against
 * the manifest, then walks records from byte 4096 in 4 MiB windows, checking
 * every header and payload checksum, and stops at the first record that fails
 * (a torn or corrupt tail). Returns the offset just past the last valid record.
 */
import { ReplError } from '../common/errors';
import {
  RECORD_HEADER_BYTES,
  SEGMENT_HEADER_BYTES,
  RecordHeader,
  decodeRecordHeader,
  decodeSegmentHeader,
  positionOf,
  verifyRecordData,
} from './journal-record';
import type { JournalEntry } from './journal';
import { ManifestSegment, SegmentFile } from './journal-storage';

const SCAN_CHUNK = 4 * 1024 * 1024;
const EMPTY: Buffer = Buffer.alloc(0);

/**
 * Scans a segment's records from the header to `seg.endOffset` (or the file
 * end), verifying every checksum; returns the offset just past the last valid
 * record.
 */
export async function scanSegment(
  file: SegmentFile,
  seg: ManifestSegment,
  maxRecordBytes: number,
  onRecord: (entry: JournalEntry) => void,
): Promise<number> {
  const head = decodeSegmentHeader(await file.read(0, SEGMENT_HEADER_BYTES));
  if (head.salt !== seg.salt || head.ordinal !== seg.ordinal) {
    throw new ReplError('E_IO', `journal segment ${seg.name} does not match the manifest`);
  }
  const limit = Math.min(seg.endOffset ?? file.size, file.size);
  let windowStart = SEGMENT_HEADER_BYTES;
  let window: Buffer = EMPTY;
  let pos = SEGMENT_HEADER_BYTES;
  const ensure = async (end: number): Promise<boolean> => {
    if (end > limit) return false;
    if (end <= windowStart + window.length) return true;
    const len = Math.min(limit - pos, Math.max(SCAN_CHUNK, end - pos));
    window = await file.read(pos, len);
    windowStart = pos;
    return end <= windowStart + window.length;
  };
  for (;;) {
    if (!(await ensure(pos + RECORD_HEADER_BYTES))) return pos;
    let header: RecordHeader;
    try {
      header = decodeRecordHeader(window, pos - windowStart, { maxDataBytes: maxRecordBytes, salt: seg.salt });
    } catch {
      return pos;
    }
    const end = pos + RECORD_HEADER_BYTES + header.dataLength;
    if (!(await ensure(end))) return pos;
    const dataAt = pos + RECORD_HEADER_BYTES - windowStart;
    try {
      verifyRecordData(header, window.subarray(dataAt, dataAt + header.dataLength));
    } catch {
      return pos;
    }
    onRecord({ position: positionOf(seg.ordinal, pos), dataOffset: pos + RECORD_HEADER_BYTES, header });
    pos = end;
  }
}
