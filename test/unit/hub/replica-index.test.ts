import fc from 'fast-check';
import { IndexedRecord, MutationKind, ReplicaIndex } from '../../../hub/replica-index';

const REGION = 512;
const VOLUME = 16 * 1024;

/** The reference: every record ever added, and how far the base image was advanced. */
class Model {
  readonly records: IndexedRecord[] = [];
  dropped = -1;

  /** What each byte of [offset, offset+length) reads as of position `at`: the newest covering record, else the base image. */
  expected(at: number, offset: number, length: number): string[] {
    const out: (string | undefined)[] = new Array(length).fill(undefined);
    let left = length;
    for (let i = this.records.length - 1; i >= 0 && left > 0; i--) {
      const r = this.records[i]!;
      if (r.position > at) continue;
      const lo = Math.max(offset, r.offset);
      const hi = Math.min(offset + length, r.offset + r.length);
      for (let b = lo; b < hi; b++) {
        if (out[b - offset] !== undefined) continue;
        // applied records live in the base image now
        out[b - offset] = r.position <= this.dropped ? 'base' : r.kind === 'data' ? `record@${r.position}+${b - r.offset}` : 'zero';
        left--;
      }
    }
    return out.map((x) => x ?? 'base');
  }

  live(through: number): IndexedRecord[] {
    return this.records.filter((r) => r.position > this.dropped && r.position <= through && r.length > 0);
  }
}

/** Checks planRead against the model byte by byte, plus the piece-list shape. */
function checkRead(index: ReplicaIndex, model: Model, at: number, offset: number, length: number): void {
  const pieces = index.planRead(at, offset, length);
  let pos = offset;
  for (const p of pieces) {
    expect(p.offset).toBe(pos); // sorted, contiguous, no overlap
    expect(p.length).toBeGreaterThan(0);
    pos += p.length;
  }
  expect(pos).toBe(offset + length);
  const got: string[] = [];
  for (const p of pieces) {
    for (let b = p.offset; b < p.offset + p.length; b++) got.push(p.source === 'record' ? `record@${p.record.position}+${p.skip + (b - p.offset)}` : p.source);
  }
  expect(got).toEqual(model.expected(at, offset, length));
  // neighbouring pieces that continue each other are merged
  for (let i = 1; i < pieces.length; i++) {
    const a = pieces[i - 1]!;
    const b = pieces[i]!;
    if (a.source !== b.source) continue;
    if (a.source === 'record' && b.source === 'record') {
      expect(a.record.position === b.record.position && a.skip + a.length === b.skip).toBe(false);
    } else expect(a.source).toBe('record');
  }
}

type Op =
  | { op: 'add'; kind: MutationKind; offset: number; length: number; gap: number }
  | { op: 'drop'; frac: number }
  | { op: 'read'; frac: number; offset: number; length: number };

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      op: fc.constant('add' as const),
      kind: fc.constantFrom<MutationKind>('data', 'data', 'zeroes', 'trim'),
      offset: fc.integer({ min: 0, max: VOLUME - 1 }),
      length: fc.integer({ min: 0, max: 3 * REGION }),
      gap: fc.integer({ min: 1, max: 5000 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('drop' as const), frac: fc.double({ min: 0, max: 1, noNaN: true }) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      op: fc.constant('read' as const),
      frac: fc.double({ min: 0, max: 1, noNaN: true }),
      offset: fc.integer({ min: 0, max: VOLUME - 1 }),
      length: fc.integer({ min: 1, max: 4 * REGION }),
    }),
  },
);

function run(ops: Op[]): void {
  const index = new ReplicaIndex(REGION);
  const model = new Model();
  let position = 0;
  const pick = (frac: number): number => {
    const live = model.records.filter((r) => r.position > model.dropped);
    if (live.length === 0) return Math.max(model.dropped, 0);
    return live[Math.min(live.length - 1, Math.floor(frac * live.length))]!.position;
  };
  for (const o of ops) {
    if (o.op === 'add') {
      position += o.gap;
      const length = Math.min(o.length, VOLUME - o.offset);
      const r: IndexedRecord = { position, kind: o.kind, offset: o.offset, length, dataOffset: position + 64 };
      index.add(r);
      model.records.push(r);
    } else if (o.op === 'drop') {
      const through = pick(o.frac);
      index.dropThrough(through);
      model.dropped = Math.max(model.dropped, through);
    } else {
      const at = Math.max(pick(o.frac), model.dropped);
      checkRead(index, model, at, o.offset, Math.min(o.length, VOLUME - o.offset));
    }
    expect(index.recordCount).toBe(model.live(Infinity).length);
  }
  expect(index.recordsThrough(Number.MAX_SAFE_INTEGER)).toEqual(model.live(Infinity));
  const mid = pick(0.5);
  expect(index.recordsThrough(mid)).toEqual(model.live(mid));
}

describe('ReplicaIndex', () => {
  test('reads, applies and listings agree with a byte-level model (fast-check)', () => {
    fc.assert(
      fc.property(fc.array(opArb, { maxLength: 120 }), (ops) => run(ops)),
      { numRuns: 300 },
    );
  });

  test('stays right across many records, drops in steps, and the column compaction and shrinking they trigger', () => {
    const ops: Op[] = [];
    let seed = 7;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    for (let step = 0; step < 8; step++) {
      for (let i = 0; i < 1500; i++) {
        ops.push({ op: 'add', kind: rnd(5) === 0 ? 'zeroes' : 'data', offset: rnd(VOLUME), length: 1 + rnd(REGION * 2), gap: 1 + rnd(100) });
      }
      ops.push({ op: 'drop', frac: 0.6 });
      for (let i = 0; i < 5; i++) ops.push({ op: 'read', frac: rnd(1000) / 1000, offset: rnd(VOLUME - 4096), length: 4096 });
    }
    // a burst applied down to a few records (the columns shrink), then everything, then new records
    for (const frac of [0.995, 1]) {
      ops.push({ op: 'drop', frac });
      for (let i = 0; i < 5; i++) ops.push({ op: 'read', frac: rnd(1000) / 1000, offset: rnd(VOLUME - 4096), length: 4096 });
      for (let i = 0; i < 300; i++) ops.push({ op: 'add', kind: 'data', offset: rnd(VOLUME), length: 1 + rnd(REGION), gap: 1 + rnd(100) });
      for (let i = 0; i < 5; i++) ops.push({ op: 'read', frac: rnd(1000) / 1000, offset: rnd(VOLUME - 4096), length: 4096 });
    }
    run(ops);
  });

  test('refuses a record that is not after the previous one', () => {
    const index = new ReplicaIndex(REGION);
    index.add({ position: 10, kind: 'data', offset: 0, length: 1, dataOffset: 74 });
    expect(() => index.add({ position: 10, kind: 'data', offset: 0, length: 1, dataOffset: 74 })).toThrow(/not after/);
    expect(() => new ReplicaIndex(1000)).toThrow(/power of two/);
  });
});
