import fc from 'fast-check';
import { CRC32C_IMPLEMENTATION, crc32c, crc32cOf, crc32cTables, NATIVE_MIN_BYTES } from '../../../common/nvme-tcp/crc32c';

/** Bit-at-a-time reference, independent of the table code. */
function reference(data: Uint8Array): number {
  let crc = 0xffffffff;
  for (const byte of data) {
    crc ^= byte;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0x82f63b78 : crc >>> 1;
  }
  return (crc ^ 0xffffffff) >>> 0;
}

describe('crc32c', () => {
  it('matches the standard check value and the RFC 3720 vectors', () => {
    expect(crc32c(Buffer.from('123456789'))).toBe(0xe3069283);
    expect(crc32c(Buffer.alloc(0))).toBe(0);
    expect(crc32c(Buffer.alloc(32, 0))).toBe(0x8a9136aa);
    expect(crc32c(Buffer.alloc(32, 0xff))).toBe(0x62a8ab43);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => i)))).toBe(0x46dd794e);
    expect(crc32c(Buffer.from(Array.from({ length: 32 }, (_, i) => 31 - i)))).toBe(0x113fdb5c);
  });

  it('is not the IEEE CRC-32', () => {
    expect(crc32c(Buffer.from('123456789'))).not.toBe(0xcbf43926);
  });

  it('agrees with the bitwise reference for any input, offset and chaining', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.nat(), (data, cut) => {
        const expected = reference(data);
        expect(crc32c(data)).toBe(expected);
        const at = data.length === 0 ? 0 : cut % (data.length + 1);
        expect(crc32c(data, crc32c(data, 0, 0, at), at)).toBe(expected);
        expect(crc32cOf([data.subarray(0, at), data.subarray(at)])).toBe(expected);
      }),
    );
  });

  it('uses the native implementation on this platform (linux x64 has a prebuilt binary)', () => {
    if (process.platform === 'linux' && process.arch === 'x64') expect(CRC32C_IMPLEMENTATION).toBe('native');
  });

  it('native and table implementations agree on large ranges, sub-ranges and chaining', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: NATIVE_MIN_BYTES, maxLength: 5000 }), fc.nat(), fc.nat(), fc.integer({ min: 0, max: 0xffffffff }), (data, a, b, seed) => {
        const start = a % (data.length + 1);
        const end = start + (b % (data.length - start + 1));
        expect(crc32c(data, seed, start, end)).toBe(crc32cTables(data, seed, start, end));
        expect(crc32c(data)).toBe(reference(data));
      }),
      { numRuns: 200 },
    );
    const big = Buffer.alloc(1 << 20);
    for (let i = 0; i < big.length; i++) big[i] = (i * 2654435761) >>> 24;
    expect(crc32c(big)).toBe(crc32cTables(big));
    const u8 = new Uint8Array(big.buffer, big.byteOffset + 3, 4096);
    expect(crc32c(u8)).toBe(reference(u8));
  });
});
