import fc from 'fast-check';
import { decodeAgentMessage, encodeAgentMessage, Write, WriteKind } from '../../../proto/codec';
import { encodedWriteBytes, encodeWriteInto, varintBytes } from '../../../proto/write-codec';

const u64 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });

const writeArb: fc.Arbitrary<Write> = fc
  .record({
    seq: u64,
    epoch: u64,
    offset: u64,
    kind: fc.constantFrom<WriteKind>('data', 'zeroes', 'trim'),
    origin: fc.constantFrom<'live' | 'resync'>('live', 'resync'),
    data: fc.uint8Array({ minLength: 1, maxLength: 5000 }),
    zeroLength: u64,
    crc32c: fc.integer({ min: 0, max: 0xffffffff }),
    timeMs: u64,
  })
  .map((r) => ({
    seq: r.seq,
    epoch: r.epoch,
    offset: r.offset,
    length: r.kind === 'data' ? r.data.length : r.zeroLength,
    kind: r.kind,
    origin: r.origin,
    data: r.kind === 'data' ? Buffer.from(r.data) : Buffer.alloc(0),
    crc32c: r.crc32c,
    timeMs: r.timeMs,
  }));

describe('hand-rolled Write encoder', () => {
  test('varintBytes matches the varint lengths of 7-bit groups', () => {
    expect(varintBytes(0)).toBe(1);
    expect(varintBytes(127)).toBe(1);
    expect(varintBytes(128)).toBe(2);
    expect(varintBytes(2 ** 35 - 1)).toBe(5);
    expect(varintBytes(2 ** 35)).toBe(6);
    expect(varintBytes(Number.MAX_SAFE_INTEGER)).toBe(8);
  });

  test('decodes (with protobufjs) to the same Write, in exactly the bytes it announced, at any position', () => {
    fc.assert(
      fc.property(writeArb, fc.nat({ max: 64 }), (w, at) => {
        const n = encodedWriteBytes(w);
        const buf = Buffer.alloc(at + n + 8, 0xee);
        const end = encodeWriteInto(buf, at, w);
        expect(end).toBe(at + n);
        expect(buf.subarray(end).every((b) => b === 0xee)).toBe(true);
        expect(decodeAgentMessage(buf.subarray(at, end))).toEqual({ type: 'write', write: w });
      }),
    );
  });

  test('produces the same bytes as protobufjs for typical records', () => {
    fc.assert(
      fc.property(writeArb, (w) => {
        const buf = Buffer.alloc(encodedWriteBytes(w));
        encodeWriteInto(buf, 0, w);
        expect(buf.equals(encodeAgentMessage({ type: 'write', write: w }))).toBe(true);
      }),
      { numRuns: 200 },
    );
  });

  test('refuses fields that are not safe non-negative integers', () => {
    const w: Write = { seq: 1, epoch: 1, offset: 0, length: 1, kind: 'data', origin: 'live', data: Buffer.alloc(1), crc32c: 0, timeMs: 0 };
    expect(() => encodeWriteInto(Buffer.alloc(64), 0, { ...w, seq: -1 })).toThrow(/seq/);
    expect(() => encodeWriteInto(Buffer.alloc(64), 0, { ...w, offset: 2 ** 60 })).toThrow(/offset/);
  });

  test('the decoder refuses 64-bit values beyond 2^53 instead of rounding them', () => {
    // AgentMessage{write{seq = 2^60}}: varint of 2^60 is eight 0x80 bytes then 0x10
    const seq = [0x08, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x10];
    const msg = Buffer.from([0x12, seq.length, ...seq]);
    expect(() => decodeAgentMessage(msg)).toThrow(/seq out of range/);
    // 2^53 - 1 is fine
    const ok = Buffer.alloc(64);
    const w: Write = { seq: Number.MAX_SAFE_INTEGER, epoch: 1, offset: 0, length: 8, kind: 'zeroes', origin: 'live', data: Buffer.alloc(0), crc32c: 0, timeMs: 1 };
    const end = encodeWriteInto(ok, 0, w);
    expect(decodeAgentMessage(ok.subarray(0, end))).toEqual({ type: 'write', write: w });
  });
});
