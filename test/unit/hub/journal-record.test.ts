import fc from 'fast-check';
import { ReplError } from '../../../common/errors';
import { crc32c } from '../../../common/nvme-tcp/crc32c';
import {
  RECORD_HEADER_BYTES,
  RecordHeader,
  SEAL_REASONS,
  decodeRecordHeader,
  decodeSegmentHeader,
  encodeRecordHeader,
  encodeSegmentHeader,
  verifyRecordData,
} from '../../../hub/journal-record';

const SALT = 0x1234abcd;
const limits = { maxDataBytes: 1 << 20, salt: SALT };

const u53 = fc.integer({ min: 0, max: 2 ** 40 });
const headerArb: fc.Arbitrary<{ header: RecordHeader; data: Buffer }> = fc
  .record({
    type: fc.constantFrom('data', 'zeroes', 'trim', 'seal', 'resync-begin', 'resync-end' as const),
    resync: fc.boolean(),
    full: fc.boolean(),
    sealReason: fc.constantFrom(...SEAL_REASONS),
    seq: u53,
    epoch: u53,
    offset: u53,
    timeMs: u53,
    bytes: fc.uint8Array({ minLength: 0, maxLength: 300 }),
    length: fc.integer({ min: 0, max: 1 << 30 }),
  })
  .map((r) => {
    const data = r.type === 'data' ? Buffer.from(r.bytes) : Buffer.alloc(0);
    const header: RecordHeader = {
      type: r.type,
      resync: r.resync,
      full: r.full,
      sealReason: r.sealReason,
      seq: r.seq,
      epoch: r.epoch,
      offset: r.offset,
      length: r.type === 'data' ? data.length : r.length,
      timeMs: r.timeMs,
      dataLength: data.length,
      salt: SALT,
      dataCrc: data.length ? crc32c(data) : 0,
    };
    return { header, data };
  });

describe('journal record codec', () => {
  it('round-trips every record type', () => {
    fc.assert(
      fc.property(headerArb, ({ header, data }) => {
        const buf = encodeRecordHeader(header);
        expect(buf.length).toBe(RECORD_HEADER_BYTES);
        const back = decodeRecordHeader(buf, 0, limits);
        expect(back).toEqual(header);
        verifyRecordData(back, data);
      }),
    );
  });

  it('refuses any single corrupted byte of header or payload with E_IO', () => {
    fc.assert(
      fc.property(headerArb, fc.nat(), fc.integer({ min: 1, max: 255 }), ({ header, data }, at, xor) => {
        const whole = Buffer.concat([encodeRecordHeader(header), data]);
        const i = at % whole.length;
        whole[i] = whole[i]! ^ xor;
        let threw: unknown = null;
        try {
          const h = decodeRecordHeader(whole, 0, limits);
          verifyRecordData(h, whole.subarray(RECORD_HEADER_BYTES, RECORD_HEADER_BYTES + h.dataLength));
        } catch (err) {
          threw = err;
        }
        expect(threw).toBeInstanceOf(ReplError);
        expect((threw as ReplError).code).toBe('E_IO');
      }),
    );
  });

  it('never crashes on arbitrary bytes (only ReplError E_IO)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 0, maxLength: 200 }), fc.nat(80), (bytes, at) => {
        const buf = Buffer.from(bytes);
        try {
          const h = decodeRecordHeader(buf, at, limits);
          expect(h.dataLength).toBeLessThanOrEqual(limits.maxDataBytes);
        } catch (err) {
          expect(err).toBeInstanceOf(ReplError);
          expect((err as ReplError).code).toBe('E_IO');
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('accepts headers with a valid checksum only when every field is in range', () => {
    // forge headers with random fields and a correct header CRC: still refused unless sane
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 60, maxLength: 60 }), (bytes) => {
        const buf = Buffer.alloc(64);
        Buffer.from(bytes).copy(buf);
        buf.writeUInt32LE(0x4c524a52, 0);
        buf.writeUInt32LE(SALT, 52);
        buf.writeUInt32LE(crc32c(buf, 0, 0, 60), 60);
        try {
          const h = decodeRecordHeader(buf, 0, limits);
          expect(h.dataLength).toBeLessThanOrEqual(limits.maxDataBytes);
          expect(h.offset + h.length).toBeLessThanOrEqual(Number.MAX_SAFE_INTEGER);
        } catch (err) {
          expect((err as ReplError).code).toBe('E_IO');
        }
      }),
      { numRuns: 2000 },
    );
  });

  it('refuses a record of another segment (salt)', () => {
    const { header } = fc.sample(headerArb, 1)[0]!;
    const buf = encodeRecordHeader(header);
    expect(() => decodeRecordHeader(buf, 0, { ...limits, salt: SALT + 1 })).toThrow(/salt/);
  });

  it('round-trips segment headers and refuses damaged ones', () => {
    const h = { salt: 7, ordinal: 42, createdMs: 1700000000000, segmentBytes: 1 << 26, owner: 'hubA_1' };
    const buf = encodeSegmentHeader(h);
    expect(decodeSegmentHeader(buf)).toEqual(h);
    for (let i = 0; i < 64; i++) {
      const bad = Buffer.from(buf);
      bad[i] = bad[i]! ^ 0x40;
      expect(() => decodeSegmentHeader(bad)).toThrow(ReplError);
    }
  });
});
