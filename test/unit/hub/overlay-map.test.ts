import fc from 'fast-check';
import { ReplError } from '../../../common/errors';
import { BlockSource, OverlayMap } from '../../../hub/overlay-map';

type Model = BlockSource[];

function applyModel(model: Model, op: { kind: 'data' | 'zero'; start: number; end: number }): void {
  for (let b = op.start; b < op.end; b++) model[b] = op.kind;
}

const G = 4096;
const SIZE = 37 * G + 1536; // short last block

const opArb = fc
  .record({ kind: fc.constantFrom<'data' | 'zero'>('data', 'zero'), a: fc.nat(37), b: fc.nat(37) })
  .map(({ kind, a, b }) => ({ kind, start: Math.min(a, b), end: Math.max(a, b) + 1 }));

describe('OverlayMap', () => {
  test('runs() and changedRanges() agree with a per-block model', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 30 }), fc.integer({ min: 1, max: 5 }), (ops, maxBlocks) => {
        const map = new OverlayMap(G, SIZE);
        const model: Model = new Array<BlockSource>(map.blockCount).fill('base');
        for (const op of ops) {
          if (op.kind === 'data') map.markData(op.start, op.end);
          else map.markZero(op.start, op.end);
          applyModel(model, op);
        }
        const runs = map.runs(0, map.blockCount);
        const flat: BlockSource[] = runs.flatMap((r) => new Array<BlockSource>(r.count).fill(r.source));
        expect(flat).toEqual(model);
        for (let i = 1; i < runs.length; i++) expect(runs[i]!.source).not.toBe(runs[i - 1]!.source);
        for (let b = 0; b < model.length; b++) expect(map.sourceOf(b)).toBe(model[b]);

        const maxLength = maxBlocks * G;
        const changed = map.changedRanges(maxLength);
        const expected: { offset: number; zero: boolean }[] = [];
        let bytes = 0;
        model.forEach((s, b) => {
          if (s === 'base') return;
          const len = Math.min(G, SIZE - b * G);
          for (let o = 0; o < len; o += 512) expected.push({ offset: b * G + o, zero: s === 'zero' });
          bytes += len;
        });
        const got = changed.flatMap((c) => {
          expect(c.length).toBeLessThanOrEqual(maxLength);
          const out: { offset: number; zero: boolean }[] = [];
          for (let o = 0; o < c.length; o += 512) out.push({ offset: c.offset + o, zero: c.zero });
          return out;
        });
        expect(got).toEqual(expected);
        expect(map.changedBytes()).toBe(bytes);
      }),
      { numRuns: 200 },
    );
  });

  test('ranges of the same kind coalesce; unlimited maxLength gives one range per run', () => {
    const map = new OverlayMap(G, SIZE);
    map.markData(0, 2);
    map.markData(2, 4);
    map.markZero(4, 5);
    map.markData(10, map.blockCount);
    expect(map.changedRanges()).toEqual([
      { offset: 0, length: 4 * G, zero: false },
      { offset: 4 * G, length: G, zero: true },
      { offset: 10 * G, length: SIZE - 10 * G, zero: false },
    ]);
    expect(map.isUntouched(5, 10)).toBe(true);
    expect(map.isUntouched(4, 10)).toBe(false);
  });

  test('blocksOf rounds outward and bytesOf clips to the size', () => {
    const map = new OverlayMap(G, SIZE);
    expect(map.blocksOf(G - 1, 2)).toEqual({ start: 0, end: 2 });
    expect(map.blocksOf(5, 0)).toEqual({ start: 0, end: 0 });
    expect(map.bytesOf(37, 38)).toEqual({ offset: 37 * G, length: 1536 });
  });

  test('encode/decode round trip keeps both sets, geometry and baseId', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 20 }), fc.string({ maxLength: 40 }), (ops, baseId) => {
        const map = new OverlayMap(G, SIZE);
        for (const op of ops) (op.kind === 'data' ? map.markData : map.markZero).call(map, op.start, op.end);
        const back = OverlayMap.decode(map.encode(baseId));
        expect(back.baseId).toBe(baseId);
        expect(back.map.size).toBe(SIZE);
        expect(back.map.granularity).toBe(G);
        expect(back.map.runs(0, back.map.blockCount)).toEqual(map.runs(0, map.blockCount));
      }),
    );
  });

  test('any flipped byte or truncation is E_BITMAP_CORRUPT', () => {
    const map = new OverlayMap(G, SIZE);
    map.markData(3, 9);
    map.markZero(12, 20);
    const good = map.encode('vol1@7');
    fc.assert(
      fc.property(fc.nat(good.length - 1), fc.integer({ min: 1, max: 255 }), (pos, x) => {
        const bad = Buffer.from(good);
        bad[pos] = bad[pos]! ^ x;
        expect(() => OverlayMap.decode(bad)).toThrow(expect.objectContaining({ code: 'E_BITMAP_CORRUPT' }));
      }),
    );
    for (const n of [0, 10, 64, good.length - 1]) {
      expect(() => OverlayMap.decode(good.subarray(0, n))).toThrow(ReplError);
    }
  });

  test('random bytes never decode into anything but a ReplError', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), (bytes) => {
        try {
          OverlayMap.decode(Buffer.from(bytes));
        } catch (err) {
          expect(err).toBeInstanceOf(ReplError);
          return;
        }
        throw new Error('random bytes decoded');
      }),
    );
  });
});
