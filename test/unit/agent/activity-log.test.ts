import fc from 'fast-check';
import { decodeRecord, encodeRecord, newestRecord, recordCapacity, recordSizeFor } from '../../../agent/activity-log';
import { decodeBitmapFile, encodeBitmapFile } from '../../../agent/bitmap-store';
import { DirtyBitmap } from '../../../agent/dirty-bitmap';

const MiB = 1024 * 1024;
const REGION = 64 * 1024;
const SIZE = 64 * MiB;

describe('activity log records', () => {
  test('round trip, and any corrupted byte makes a record invalid', () => {
    const size = recordSizeFor(16);
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 2 ** 40 }),
        fc.array(fc.integer({ min: 0, max: 0xffffffff }), { maxLength: recordCapacity(size) }),
        fc.boolean(),
        fc.nat(),
        (txn, extents, clean, flip) => {
          const buf = encodeRecord({ txn, clean, bitmapCounter: 7, extents }, size);
          expect(decodeRecord(buf, txn % 8, 8)).toEqual({ txn, clean, bitmapCounter: 7, extents });
          expect(decodeRecord(buf, (txn + 1) % 8, 8)).toBeNull(); // misplaced
          const used = 32 + 4 * extents.length;
          const at = flip % used;
          const bad = Buffer.from(buf);
          bad[at] = bad[at]! ^ 0x40;
          expect(decodeRecord(bad, txn % 8, 8)).toBeNull();
        },
      ),
    );
  });

  test('a torn record (prefix written, rest stale) is ignored and the older one wins', () => {
    const size = 4096;
    const g = { recordSize: size, slotCount: 4, extentShift: 22, deviceSize: SIZE };
    const file = Buffer.alloc(4096 + 4 * size);
    const put = (txn: number, extents: number[]): void => {
      encodeRecord({ txn, clean: false, bitmapCounter: 0, extents }, size).copy(file, 4096 + (txn % 4) * size);
    };
    put(5, [1]);
    put(6, [1, 2]);
    expect(newestRecord(file, g)?.txn).toBe(6);
    // txn 7 lands in slot 3 but only its first 16 bytes reached the disk
    const seven = encodeRecord({ txn: 7, clean: false, bitmapCounter: 0, extents: [1, 2, 3] }, size);
    seven.copy(file, 4096 + 3 * size, 0, 16);
    expect(newestRecord(file, g)).toMatchObject({ txn: 6, extents: [1, 2] });
    // txn 8 overwrites slot 0 completely: newest
    put(8, [9]);
    expect(newestRecord(file, g)).toMatchObject({ txn: 8, extents: [9] });
  });

  test('bitmap file: header and payload checksums', () => {
    const bm = new DirtyBitmap(REGION, SIZE);
    bm.setRange(3, 9);
    const buf = encodeBitmapFile(bm, 4, 11);
    const { header } = decodeBitmapFile(buf);
    expect(header).toMatchObject({ regionSize: REGION, deviceSize: SIZE, generation: 4, counter: 11 });
    for (const at of [0, 20, 61, buf.length - 1]) {
      const bad = Buffer.from(buf);
      bad[at] = bad[at]! ^ 1;
      expect(() => decodeBitmapFile(bad)).toThrow(expect.objectContaining({ code: 'E_BITMAP_CORRUPT' }));
    }
    expect(() => decodeBitmapFile(buf.subarray(0, buf.length - 1))).toThrow(/length/);
  });
});
