import { SLAB_BYTES, SlabPool } from '../../../agent/hub-link';

describe('SlabPool (hub-link record slabs)', () => {
  test('packs records into one slab until it is full, then starts another', () => {
    const pool = new SlabPool();
    const a = pool.take(1000)!;
    a.used += 1000;
    a.refs++;
    const b = pool.take(1000)!;
    expect(b).toBe(a);
    b.used += 1000;
    b.refs++;
    const c = pool.take(SLAB_BYTES - 1000)!;
    expect(c).not.toBe(a);
    expect(pool.stats.allocated).toBe(2);
    expect(pool.take(SLAB_BYTES + 1)).toBeNull();
  });

  test('a retired slab is reused only after every frame cut from it was released', () => {
    const pool = new SlabPool();
    const full = (x: ReturnType<SlabPool['take']>): void => {
      x!.used = SLAB_BYTES;
      x!.refs = 1;
    };
    const a = pool.take(SLAB_BYTES)!;
    full(a);
    const b = pool.take(10)!; // retires a, whose frame is still unwritten
    full(b);
    const c = pool.take(10)!; // retires b: nothing free yet, so a third slab
    expect(pool.stats).toEqual({ allocated: 3, reused: 0 });
    pool.release(a); // a's last frame was written: a is free
    full(c);
    const d = pool.take(10)!;
    expect(d.buf).toBe(a.buf);
    expect(d.used).toBe(0);
    expect(pool.stats).toEqual({ allocated: 3, reused: 1 });
  });

  test('reset forgets the current slab: frames of an ended session never come back', () => {
    const pool = new SlabPool();
    const a = pool.take(10)!;
    a.used = 10;
    a.refs = 1;
    pool.reset();
    const b = pool.take(10)!;
    expect(b).not.toBe(a);
    expect(b.used).toBe(0);
    expect(pool.stats.allocated).toBe(2);
  });
});
