import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileDevice } from '../../../common/block/file-device';
import { WriteOrder } from '../../../common/block/write-order';

describe('FileDevice inline I/O policy', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-inline-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('small I/O runs inline, large I/O and inlineMaxBytes 0 use the thread pool', async () => {
    const dev = await FileDevice.open(path.join(dir, 'a.img'), { createSize: 4 << 20, inlineMaxBytes: 64 * 1024, inlineSlowMs: 1000 });
    await dev.write(0, Buffer.alloc(4096, 1));
    expect((await dev.read(0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true);
    expect(dev.ioStats).toEqual({ inline: 2, pooled: 0, slowInline: 0 });
    await dev.write(65536, Buffer.alloc(128 * 1024, 2));
    expect((await dev.read(65536, 128 * 1024)).equals(Buffer.alloc(128 * 1024, 2))).toBe(true);
    expect(dev.ioStats).toMatchObject({ inline: 2, pooled: 2 });
    await dev.close();

    const pool = await FileDevice.open(path.join(dir, 'a.img'), { inlineMaxBytes: 0, inlineSlowMs: 1000 });
    expect((await pool.read(0, 4096)).equals(Buffer.alloc(4096, 1))).toBe(true);
    await pool.write(8192, Buffer.alloc(512, 3));
    expect(pool.ioStats).toEqual({ inline: 0, pooled: 2, slowInline: 0 });
    await pool.close();
  });

  test('repeated slow inline calls move I/O to the thread pool for a back-off period', async () => {
    // a negative budget makes every inline call count as slow
    const dev = await FileDevice.open(path.join(dir, 'b.img'), { createSize: 1 << 20, inlineSlowMs: -1 });
    for (let i = 0; i < 6; i++) await dev.write(i * 4096, Buffer.alloc(4096, i));
    // the third slow call trips the bucket; the rest go to the pool
    expect(dev.ioStats).toEqual({ inline: 3, pooled: 3, slowInline: 3 });
    await new Promise((r) => setTimeout(r, 150));
    await dev.write(0, Buffer.alloc(4096, 9));
    // probe after the back-off runs inline, is slow again, and trips at once
    expect(dev.ioStats).toEqual({ inline: 4, pooled: 3, slowInline: 4 });
    await dev.write(4096, Buffer.alloc(4096, 9));
    expect(dev.ioStats.pooled).toBe(4);
    for (let i = 0; i < 6; i++) {
      expect((await dev.read(i * 4096, 4096)).equals(Buffer.alloc(4096, i < 2 ? 9 : i))).toBe(true);
    }
    await dev.close();
  });

  test('an inline write overlapping a pooled write in flight waits for it', async () => {
    const dev = await FileDevice.open(path.join(dir, 'c.img'), { createSize: 4 << 20, inlineMaxBytes: 4096, inlineSlowMs: 1000 });
    for (let round = 0; round < 20; round++) {
      const big = dev.write(0, Buffer.alloc(1 << 20, round)); // thread pool
      const small = dev.write(4096, Buffer.alloc(4096, 200 + round)); // overlaps: ordered behind big
      const other = dev.write(2 << 20, Buffer.alloc(4096, round)); // disjoint: inline at once
      await Promise.all([big, small, other]);
      const got = await dev.read(0, 3 * 4096);
      expect(got.subarray(0, 4096).equals(Buffer.alloc(4096, round))).toBe(true);
      expect(got.subarray(4096, 8192).equals(Buffer.alloc(4096, 200 + round))).toBe(true);
      expect(got.subarray(8192).equals(Buffer.alloc(4096, round))).toBe(true);
    }
    // 20 big writes + 20 reads of 12 KiB went to the pool, everything else inline
    expect(dev.ioStats).toEqual({ inline: 40, pooled: 40, slowInline: 0 });
    await dev.close();
  });

  test('FUA writes are ordered and durable before they complete', async () => {
    const dev = await FileDevice.open(path.join(dir, 'd.img'), { createSize: 1 << 20 });
    const a = dev.write(0, Buffer.alloc(4096, 1), { fua: true });
    const b = dev.write(0, Buffer.alloc(4096, 2));
    const done: string[] = [];
    await Promise.all([a.then(() => done.push('a')), b.then(() => done.push('b'))]);
    expect(done).toEqual(['a', 'b']);
    expect((await dev.read(0, 4096)).equals(Buffer.alloc(4096, 2))).toBe(true);
    await dev.close();
  });
});

describe('WriteOrder.overlaps', () => {
  test('reports in-flight ops overlapping a range, and only while they run', async () => {
    const order = new WriteOrder();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const p = order.run(100, 50, () => gate);
    expect(order.overlaps(0, 100)).toBe(false);
    expect(order.overlaps(0, 101)).toBe(true);
    expect(order.overlaps(149, 1)).toBe(true);
    expect(order.overlaps(150, 10)).toBe(false);
    expect(order.overlaps(120, 0)).toBe(true);
    release();
    await p;
    expect(order.overlaps(100, 50)).toBe(false);
    expect(order.size).toBe(0);
  });

  test('an op that throws synchronously is unregistered and rejects', async () => {
    const order = new WriteOrder();
    const p = order.run(0, 10, () => {
      throw new Error('boom');
    });
    await expect(p).rejects.toThrow('boom');
    expect(order.size).toBe(0);
  });
});
