import fc from 'fast-check';
import { DirtyBitmap, RegionRun } from '../../../agent/dirty-bitmap';

type Op = { kind: 'set' | 'clear'; a: number; b: number };

function runsOf(model: boolean[], start = 0, end = model.length): RegionRun[] {
  const out: RegionRun[] = [];
  for (let i = start; i < end; i++) {
    if (!model[i]) continue;
    const last = out[out.length - 1];
    if (last && last.start + last.count === i) last.count++;
    else out.push({ start: i, count: 1 });
  }
  return out;
}

describe('DirtyBitmap', () => {
  test('matches a boolean[] model under random set/clear ranges', () => {
    const regions = 300;
    const op = fc.record({
      kind: fc.constantFrom<'set' | 'clear'>('set', 'clear'),
      a: fc.integer({ min: 0, max: regions }),
      b: fc.integer({ min: 0, max: regions }),
    });
    fc.assert(
      fc.property(fc.array(op, { maxLength: 40 }), fc.integer({ min: 0, max: regions }), fc.integer({ min: 0, max: regions }), (ops: Op[], q1, q2) => {
        const bm = new DirtyBitmap(4096, regions * 4096 - 512);
        const model: boolean[] = new Array(regions).fill(false);
        for (const o of ops) {
          const start = Math.min(o.a, o.b);
          const end = Math.max(o.a, o.b);
          if (o.kind === 'set') bm.setRange(start, end);
          else bm.clearRange(start, end);
          for (let i = start; i < end; i++) model[i] = o.kind === 'set';
        }
        const lo = Math.min(q1, q2);
        const hi = Math.max(q1, q2);
        for (let i = 0; i < regions; i++) expect(bm.isSet(i)).toBe(model[i]);
        expect(bm.countSet()).toBe(model.filter(Boolean).length);
        expect(bm.countSet(lo, hi)).toBe(model.slice(lo, hi).filter(Boolean).length);
        expect([...bm.extents()]).toEqual(runsOf(model));
        expect([...bm.extents(lo, hi)]).toEqual(runsOf(model, lo, hi));
        const setCount = model.filter(Boolean).length;
        expect(bm.dirtyBytes()).toBe(setCount * 4096 - (model[regions - 1] ? 512 : 0));
        const back = DirtyBitmap.deserialize(4096, regions * 4096 - 512, bm.serialize());
        expect(back.isEqual(bm)).toBe(true);
      }),
    );
  });

  test('regionsOf rounds outward and bytesOf clips to the device', () => {
    const bm = new DirtyBitmap(65536, 65536 * 3 + 4096);
    expect(bm.regionCount).toBe(4);
    expect(bm.regionsOf(0, 1)).toEqual({ start: 0, end: 1 });
    expect(bm.regionsOf(65535, 2)).toEqual({ start: 0, end: 2 });
    expect(bm.regionsOf(65536, 65536)).toEqual({ start: 1, end: 2 });
    expect(bm.regionsOf(100, 0)).toEqual({ start: 0, end: 0 });
    expect(bm.bytesOf(2, 4)).toEqual({ offset: 131072, length: 65536 + 4096 });
  });

  test('extents pages through large sets', () => {
    const bm = new DirtyBitmap(512, 512 * 300000);
    bm.setRange(10, 150000);
    bm.setRange(150001, 200000);
    bm.set(299999);
    expect([...bm.extents()]).toEqual([
      { start: 10, count: 149990 },
      { start: 150001, count: 49999 },
      { start: 299999, count: 1 },
    ]);
  });

  test('granularity must be a power of two; out-of-range regions are rejected', () => {
    expect(() => new DirtyBitmap(3000, 1 << 20)).toThrow(/power of two/);
    const bm = new DirtyBitmap(4096, 1 << 20);
    expect(() => bm.setRange(0, 257)).toThrow();
    const other = new DirtyBitmap(4096, 1 << 30);
    other.set(1000);
    expect(() => DirtyBitmap.deserialize(4096, 1 << 20, other.serialize())).toThrow(expect.objectContaining({ code: 'E_BITMAP_CORRUPT' }));
  });
});
