import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import fc from 'fast-check';
import { MUTATING_METHODS } from '../../../common/block/device';
import { MemoryDevice } from '../../../common/block/memory-device';
import { MAP_FILE, Overlay, SCRATCH_FILE } from '../../../hub/overlay';
import { ChangedRange } from '../../../hub/overlay-map';
import { useTmpDir } from '../../helpers/tmpdir';

const SIZE = 42 * 1024 + 1536; // multiple of 512; short last block at 4 KiB granularity

type Op =
  | { kind: 'write'; offset: number; data: Buffer }
  | { kind: 'writeZeroes' | 'trim'; offset: number; length: number }
  | { kind: 'flush' };

const rangeArb = fc
  .tuple(fc.nat(SIZE - 1), fc.integer({ min: 1, max: 12 * 1024 }))
  .map(([offset, len]) => ({ offset, length: Math.min(len, SIZE - offset) }));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: rangeArb.map((r) => ({ kind: 'write' as const, offset: r.offset, data: randomBytes(r.length) })) },
  { weight: 2, arbitrary: rangeArb.map((r) => ({ kind: 'writeZeroes' as const, ...r })) },
  { weight: 2, arbitrary: rangeArb.map((r) => ({ kind: 'trim' as const, ...r })) },
  { weight: 1, arbitrary: fc.constant({ kind: 'flush' as const }) },
);

/** Naive model: a byte array plus a per-block "source" array. */
class Model {
  readonly bytes: Buffer;
  readonly source: ('base' | 'data' | 'zero')[];
  constructor(
    base: Buffer,
    readonly g: number,
  ) {
    this.bytes = Buffer.from(base);
    this.source = new Array(Math.ceil(base.length / g)).fill('base');
  }
  apply(op: Op): void {
    if (op.kind === 'flush') return;
    const length = op.kind === 'write' ? op.data.length : op.length;
    if (op.kind === 'write') op.data.copy(this.bytes, op.offset);
    else this.bytes.fill(0, op.offset, op.offset + length);
    for (let b = Math.floor(op.offset / this.g); b * this.g < op.offset + length; b++) {
      const bEnd = Math.min((b + 1) * this.g, this.bytes.length);
      const whole = op.offset <= b * this.g && op.offset + length >= bEnd;
      if (op.kind === 'write') this.source[b] = 'data';
      else if (whole) this.source[b] = 'zero';
      else if (this.source[b] !== 'zero') this.source[b] = 'data';
    }
  }
  changed(): ChangedRange[] {
    const out: ChangedRange[] = [];
    this.source.forEach((s, b) => {
      if (s === 'base') return;
      const offset = b * this.g;
      const length = Math.min(this.g, this.bytes.length - offset);
      const last = out[out.length - 1];
      if (last && last.zero === (s === 'zero') && last.offset + last.length === offset) last.length += length;
      else out.push({ offset, length, zero: s === 'zero' });
    });
    return out;
  }
}

function run(overlay: Overlay, op: Op): Promise<void> {
  switch (op.kind) {
    case 'write':
      return overlay.write(op.offset, op.data);
    case 'writeZeroes':
      return overlay.writeZeroes(op.offset, op.length);
    case 'trim':
      return overlay.trim(op.offset, op.length);
    case 'flush':
      return overlay.flush();
  }
}

async function filledBase(): Promise<{ base: MemoryDevice; content: Buffer }> {
  const base = new MemoryDevice(SIZE);
  const content = randomBytes(SIZE);
  content.fill(0, 8192, 16384); // a hole in the base, too
  await base.write(0, content);
  base.stats.writes = 0;
  return { base, content };
}

describe('Overlay', () => {
  const tmp = useTmpDir('overlay-');

  test.each([4096, 1024])('matches a naive model under concurrent random ops (granularity %i)', async (g) => {
    let iteration = 0;
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(opArb, { minLength: 1, maxLength: 6 }), { maxLength: 8 }), async (batches) => {
        const { base, content } = await filledBase();
        const dir = path.join(tmp.path, `p${iteration++}`);
        const overlay = await Overlay.open(dir, base, { granularity: g, persistent: iteration % 2 === 0 });
        const model = new Model(content, g);
        try {
          for (const batch of batches) {
            // submitted together: overlapping mutations must still apply in submission order
            await Promise.all(batch.map((op) => run(overlay, op)));
            batch.forEach((op) => model.apply(op));
            const [from, len] = [batch.length * 977 % SIZE, 9000];
            expect((await overlay.read(from, Math.min(len, SIZE - from))).equals(model.bytes.subarray(from, from + len))).toBe(true);
          }
          expect((await overlay.read(0, SIZE)).equals(model.bytes)).toBe(true);
          expect(overlay.changedRanges()).toEqual(model.changed());
          expect(overlay.changedBytes()).toBe(model.changed().reduce((n, r) => n + r.length, 0));
          expect((await base.read(0, SIZE)).equals(content)).toBe(true);
          expect(base.stats).toMatchObject({ writes: 0, zeroes: 0, trims: 0, flushes: 0 });
        } finally {
          await overlay.destroy();
        }
      }),
      { numRuns: 40 },
    );
  });

  test('persistent overlay survives close and reopen (map and scratch)', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 25 }), async (ops) => {
        const { base, content } = await filledBase();
        const dir = path.join(tmp.path, 'persist');
        const model = new Model(content, 4096);
        const first = await Overlay.open(dir, base, { persistent: true, baseId: 'vol1@42' });
        for (const op of ops) {
          await run(first, op);
          model.apply(op);
        }
        await first.close();
        const again = await Overlay.open(dir, base, { persistent: true, baseId: 'vol1@42' });
        try {
          expect((await again.read(0, SIZE)).equals(model.bytes)).toBe(true);
          expect(again.changedRanges()).toEqual(model.changed());
        } finally {
          await again.destroy();
        }
        expect(fs.existsSync(dir)).toBe(false);
      }),
      { numRuns: 25 },
    );
  });

  test('a crash after flush keeps flushed changes and never exposes unflushed map bits', async () => {
    const { base, content } = await filledBase();
    const dir = path.join(tmp.path, 'crash');
    const overlay = await Overlay.open(dir, base, { persistent: true, baseId: 'b' });
    const a = randomBytes(5000);
    await overlay.write(100, a);
    await overlay.trim(16384, 8192);
    await overlay.flush();
    await overlay.write(30000, randomBytes(3000)); // never flushed
    // "crash": copy the files as they are now and open the copy
    const copy = path.join(tmp.path, 'crash-copy');
    fs.mkdirSync(copy);
    for (const f of [SCRATCH_FILE, MAP_FILE]) fs.copyFileSync(path.join(dir, f), path.join(copy, f));
    const reopened = await Overlay.open(copy, base, { persistent: true, baseId: 'b' });
    const expected = Buffer.from(content);
    a.copy(expected, 100);
    expected.fill(0, 16384, 24576);
    expect((await reopened.read(0, SIZE)).equals(expected)).toBe(true);
    expect(reopened.changedRanges()).toEqual([
      { offset: 0, length: 8192, zero: false },
      { offset: 16384, length: 8192, zero: true },
    ]);
    await reopened.destroy();
    await overlay.destroy();
  });

  test('FUA writes persist the map at once', async () => {
    const { base } = await filledBase();
    const dir = path.join(tmp.path, 'fua');
    const overlay = await Overlay.open(dir, base, { persistent: true });
    await overlay.write(4096, Buffer.alloc(4096, 7), { fua: true });
    const copy = path.join(tmp.path, 'fua-copy');
    fs.mkdirSync(copy);
    for (const f of [SCRATCH_FILE, MAP_FILE]) fs.copyFileSync(path.join(dir, f), path.join(copy, f));
    const reopened = await Overlay.open(copy, base, { persistent: true });
    expect(await reopened.read(4096, 4096)).toEqual(Buffer.alloc(4096, 7));
    await reopened.destroy();
    await overlay.destroy();
  });

  test('reopen refuses another base, size or granularity, and a corrupt map', async () => {
    const { base } = await filledBase();
    const dir = path.join(tmp.path, 'refuse');
    const overlay = await Overlay.open(dir, base, { persistent: true, baseId: 'vol1@1' });
    await overlay.write(0, Buffer.alloc(512, 1));
    await overlay.close();
    await expect(Overlay.open(dir, base, { persistent: true, baseId: 'vol1@2' })).rejects.toMatchObject({ code: 'E_INVALID' });
    await expect(Overlay.open(dir, base, { persistent: true, baseId: 'vol1@1', granularity: 8192 })).rejects.toMatchObject({
      code: 'E_INVALID',
    });
    await expect(Overlay.open(dir, new MemoryDevice(SIZE + 512), { persistent: true, baseId: 'vol1@1' })).rejects.toMatchObject({
      code: 'E_INVALID',
    });
    const mapPath = path.join(dir, MAP_FILE);
    const bytes = fs.readFileSync(mapPath);
    bytes[70] = bytes[70]! ^ 0xff;
    fs.writeFileSync(mapPath, bytes);
    await expect(Overlay.open(dir, base, { persistent: true, baseId: 'vol1@1' })).rejects.toMatchObject({
      code: 'E_BITMAP_CORRUPT',
    });
  });

  test('a test (non-persistent) overlay starts empty and destroy() removes its files', async () => {
    const { base, content } = await filledBase();
    const dir = path.join(tmp.path, 'test-view');
    const first = await Overlay.open(dir, base);
    await first.write(0, Buffer.alloc(4096, 9));
    await first.close();
    expect(fs.existsSync(path.join(dir, MAP_FILE))).toBe(false);
    const second = await Overlay.open(dir, base);
    expect((await second.read(0, SIZE)).equals(content)).toBe(true);
    expect(second.changedRanges()).toEqual([]);
    await second.destroy();
    expect(fs.existsSync(dir)).toBe(false);
  });

  test('concurrent partial writes into one block are all kept (read-modify-write under the block lock)', async () => {
    const { base, content } = await filledBase();
    const overlay = await Overlay.open(path.join(tmp.path, 'rmw'), base, { granularity: 4096 });
    const expected = Buffer.from(content);
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 32; i++) {
      const data = Buffer.alloc(100, i + 1);
      data.copy(expected, 8192 + i * 128);
      writes.push(overlay.write(8192 + i * 128, data));
      if (i % 4 === 0) writes.push(overlay.writeZeroes(8192 + i * 128 + 100, 10));
      if (i % 4 === 0) expected.fill(0, 8192 + i * 128 + 100, 8192 + i * 128 + 110);
    }
    await Promise.all(writes);
    expect((await overlay.read(0, SIZE)).equals(expected)).toBe(true);
    await overlay.destroy();
  });

  test.each(MUTATING_METHODS)('%s is recorded in the overlay and never reaches the base', async (method) => {
    const { base, content } = await filledBase();
    const overlay = await Overlay.open(path.join(tmp.path, method), base);
    const call: Record<(typeof MUTATING_METHODS)[number], () => Promise<void>> = {
      write: () => overlay.write(5000, Buffer.alloc(100, 1)),
      writeZeroes: () => overlay.writeZeroes(5000, 100),
      trim: () => overlay.trim(5000, 100),
    };
    await call[method]();
    expect(overlay.changedRanges()).toEqual([{ offset: 4096, length: 4096, zero: false }]);
    expect(base.stats).toMatchObject({ writes: 0, zeroes: 0, trims: 0 });
    expect((await base.read(0, SIZE)).equals(content)).toBe(true);
    await overlay.destroy();
  });

  test('extents() reports overlay data, zeroed blocks and the base allocation', async () => {
    const base = new MemoryDevice(4 * 65536);
    await base.write(0, Buffer.alloc(65536, 1)); // chunk 0 allocated, the rest holes
    const overlay = await Overlay.open(path.join(tmp.path, 'extents'), base);
    await overlay.write(65536, Buffer.alloc(4096, 2));
    await overlay.trim(0, 8192);
    expect(await overlay.extents(0, 4 * 65536)).toEqual([
      { offset: 0, length: 8192, zero: true, hole: true },
      { offset: 8192, length: 65536 - 8192 + 4096, zero: false, hole: false }, // base data + overlay data merge
      { offset: 65536 + 4096, length: 3 * 65536 - 4096, zero: true, hole: true },
    ]);
    await overlay.destroy();
  });

  test('rejects I/O after close, out-of-range I/O and a granularity below the block size', async () => {
    const { base } = await filledBase();
    await expect(Overlay.open(path.join(tmp.path, 'g'), new MemoryDevice(8192, { blockSize: 4096 }), { granularity: 512 })).rejects.toMatchObject({
      code: 'E_INVALID',
    });
    const overlay = await Overlay.open(path.join(tmp.path, 'closed'), base);
    await expect(overlay.write(SIZE - 10, Buffer.alloc(20))).rejects.toMatchObject({ code: 'E_RANGE' });
    await overlay.close();
    await expect(overlay.read(0, 512)).rejects.toMatchObject({ code: 'E_CLOSED' });
    await expect(overlay.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_CLOSED' });
    await overlay.destroy();
  });
});
