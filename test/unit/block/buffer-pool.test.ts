import { BufferPool } from '../../../common/block/buffer-pool';

describe('BufferPool', () => {
  const make = (): BufferPool => new BufferPool({ minBytes: 1024, maxBytes: 64 * 1024, maxFreeBytes: 128 * 1024 });

  it('hands out exactly n bytes and reuses a released buffer of the same size class', () => {
    const pool = make();
    const a = pool.acquire(3000);
    expect(a.length).toBe(3000);
    expect(a.buffer.byteLength).toBe(4096);
    a.fill(7);
    pool.release(a);
    const b = pool.acquire(4096);
    expect(b.buffer).toBe(a.buffer);
    expect(pool.stats).toMatchObject({ allocated: 1, reused: 1, leased: 1, freeBytes: 0 });
    // another size class does not get it
    pool.release(b);
    expect(pool.acquire(8192).buffer).not.toBe(a.buffer);
  });

  it('never hands one buffer to two holders: second releases and foreign buffers are ignored', () => {
    const pool = make();
    const a = pool.acquire(2048);
    pool.release(a);
    pool.release(a);
    pool.release(a.subarray(10));
    pool.release(Buffer.alloc(2048));
    expect(pool.stats.freeBytes).toBe(2048);
    const x = pool.acquire(2048);
    const y = pool.acquire(2048);
    expect(x.buffer).toBe(a.buffer);
    expect(y.buffer).not.toBe(a.buffer);
  });

  it('serves sizes outside [minBytes, maxBytes] unpooled and ignores them on release', () => {
    const pool = make();
    const small = pool.acquire(100);
    const large = pool.acquire(100 * 1024);
    expect(small.length).toBe(100);
    expect(large.length).toBe(100 * 1024);
    pool.release(small);
    pool.release(large);
    expect(pool.stats).toMatchObject({ unpooled: 2, allocated: 0, freeBytes: 0 });
  });

  it('keeps at most maxFreeBytes in its free lists', () => {
    const pool = make();
    const held = [1, 2, 3].map(() => pool.acquire(64 * 1024));
    for (const b of held) pool.release(b);
    expect(pool.stats.freeBytes).toBe(128 * 1024);
    expect(pool.stats.leased).toBe(0);
  });

  it('rejects inconsistent sizes', () => {
    expect(() => new BufferPool({ minBytes: 0, maxBytes: 10, maxFreeBytes: 10 })).toThrow(RangeError);
    expect(() => new BufferPool({ minBytes: 20, maxBytes: 10, maxFreeBytes: 10 })).toThrow(RangeError);
  });
});
