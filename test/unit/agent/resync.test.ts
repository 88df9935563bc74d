import { DirtyBitmap } from '../../../agent/dirty-bitmap';
import { RegionState } from '../../../agent/region-state';
import { Clock, groupReads, planResync, ResyncPiece, runResync, splitZeroRuns, TokenBucket } from '../../../agent/resync';
import { MemoryDevice } from '../../../common/block/memory-device';

const K = 1024;

describe('planResync', () => {
  const table: { name: string; set: [number, number][]; max: number; from?: number; maxReads?: number; want: [number, number][] }[] = [
    { name: 'empty', set: [], max: 1024 * K, want: [] },
    { name: 'one region', set: [[3, 4]], max: 1024 * K, want: [[3, 4]] },
    { name: 'adjacent regions merge', set: [[2, 5], [5, 7]], max: 1024 * K, want: [[2, 7]] },
    { name: 'gap splits', set: [[0, 2], [3, 4]], max: 1024 * K, want: [[0, 2], [3, 4]] },
    { name: 'long run capped at 1 MiB (16 regions)', set: [[0, 40]], max: 1024 * K, want: [[0, 16], [16, 32], [32, 40]] },
    { name: 'cursor skips earlier regions', set: [[0, 2], [10, 12]], max: 1024 * K, from: 1, want: [[1, 2], [10, 12]] },
    { name: 'window bounds the plan', set: [[0, 40]], max: 128 * K, maxReads: 2, want: [[0, 2], [2, 4]] },
    { name: 'max smaller than a region still reads whole regions', set: [[5, 7]], max: 4 * K, want: [[5, 6], [6, 7]] },
  ];
  test.each(table)('$name', ({ set, max, from, maxReads, want }) => {
    const bm = new DirtyBitmap(64 * K, 64 * K * 64);
    for (const [a, b] of set) bm.setRange(a, b);
    const plan = planResync(bm, { maxReadBytes: max, fromRegion: from, maxReads });
    expect(plan.map((r) => [r.start, r.end])).toEqual(want);
    for (const r of plan) expect(r).toMatchObject({ offset: r.start * 64 * K, length: (r.end - r.start) * 64 * K });
  });

  test('the short last region is clipped to the device', () => {
    const bm = new DirtyBitmap(64 * K, 64 * K * 3 + 512);
    bm.setRange(2, 4);
    expect(planResync(bm, { maxReadBytes: 1024 * K })).toEqual([{ start: 2, end: 4, offset: 128 * K, length: 64 * K + 512 }]);
  });
});

describe('splitZeroRuns', () => {
  test('groups zero and data regions, zero runs carry no data', () => {
    const R = 4 * K;
    const buf = Buffer.alloc(5 * R);
    buf[R + 7] = 1; // region 1 data
    buf[2 * R] = 2; // region 2 data
    buf[5 * R - 1] = 3; // region 4 data
    const pieces = splitZeroRuns(buf, 10 * R, R);
    expect(pieces.map((p) => [p.offset / R, p.length / R, p.kind])).toEqual([
      [10, 1, 'zeroes'],
      [11, 2, 'data'],
      [13, 1, 'zeroes'],
      [14, 1, 'data'],
    ]);
    expect(pieces[0]!.data).toBeNull();
    expect(pieces[1]!.data!.equals(buf.subarray(R, 3 * R))).toBe(true);
  });
});

describe('TokenBucket', () => {
  function manual(): Clock & { t: number } {
    const c = { t: 0, now: () => c.t, sleep: async (ms: number) => void (c.t += ms) };
    return c;
  }
  test('paces to the rate after the burst', () => {
    const clock = manual();
    const b = new TokenBucket(1000 * K, 100 * K, clock); // 1000 KiB/s, 100 KiB burst
    expect(b.reserve(100 * K)).toBe(0); // burst
    expect(b.reserve(100 * K)).toBe(0); // bucket now empty (0), goes to -100K
    expect(b.reserve(100 * K)).toBe(100); // must wait off the 100 KiB deficit
    clock.t += 300;
    expect(b.reserve(10 * K)).toBe(0);
  });
  test('rate 0 is unlimited', () => {
    const b = new TokenBucket(0, 0, manual());
    for (let i = 0; i < 10; i++) expect(b.reserve(1 << 30)).toBe(0);
  });
});

describe('groupReads', () => {
  const r = (start: number, end: number) => ({ start, end, offset: start * 64 * K, length: (end - start) * 64 * K });
  test('groups of at most depth reads, a group never spans more than maxSpan regions', () => {
    const reads = [r(0, 16), r(16, 32), r(32, 48), r(48, 64), r(64, 70), r(200, 201), r(202, 203)];
    expect(groupReads(reads, 4, 64).map((g) => g.map((x) => x.start))).toEqual([[0, 16, 32, 48], [64], [200, 202]]);
    expect(groupReads(reads, 1, 64).length).toBe(reads.length);
    expect(groupReads([], 4, 64)).toEqual([]);
  });
});

describe('runResync with reads in flight', () => {
  test('overlaps reads, queues in LBA order under one lock, clears resend, keeps live writes out', async () => {
    const REGION = 64 * K;
    const size = 64 * REGION;
    const dev = new MemoryDevice(size);
    for (let i = 0; i < 64; i++) await dev.write(i * REGION, Buffer.alloc(REGION, i + 1));
    const bitmap = new DirtyBitmap(REGION, size);
    bitmap.setRange(0, 64);
    const regions = new RegionState(bitmap);
    let inFlight = 0;
    let maxInFlight = 0;
    const slow: typeof dev.read = async (offset, length) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      // later reads finish first: queueing must still follow LBA order
      await new Promise((res) => setTimeout(res, 20 - (offset / size) * 15));
      inFlight--;
      return dev.read(offset, length);
    };
    const sent: ResyncPiece[] = [];
    let liveBlocked = 0;
    const done = runResync({
      regions,
      device: Object.assign(Object.create(dev) as MemoryDevice, { read: slow }),
      bucket: new TokenBucket(0, 0),
      signal: new AbortController().signal,
      maxReadBytes: 4 * REGION,
      readsInFlight: 4,
      send: (p) => {
        sent.push(p);
        if (regions.waitUnlocked(p.offset / REGION, p.offset / REGION + 1)) liveBlocked++;
        return 7;
      },
      waitForRoom: () => Promise.resolve(),
      onProgress: () => undefined,
    });
    await done;
    expect(maxInFlight).toBe(4);
    expect(sent.map((p) => p.offset)).toEqual([...sent.map((p) => p.offset)].sort((a, b) => a - b));
    expect(sent.reduce((n, p) => n + p.length, 0)).toBe(size);
    expect(sent[5]!.data![0]).toBe(sent[5]!.offset / REGION + 1); // each record carries its own read's bytes
    expect(liveBlocked).toBe(sent.length); // every record was queued while its region was locked
    expect(regions.resendBytes).toBe(0);
    expect(regions.waitUnlocked(0, 64)).toBeNull();
  });
});

describe('runResync with a bulk reader', () => {
  test('reads into its reusable buffers (never device.read), every record carries its own bytes', async () => {
    const REGION = 64 * K;
    const size = 40 * REGION;
    const dev = new MemoryDevice(size);
    for (let i = 0; i < 40; i++) if (i % 5 !== 0) await dev.write(i * REGION, Buffer.alloc(REGION, i + 1)); // every 5th region stays zero
    const bitmap = new DirtyBitmap(REGION, size);
    bitmap.setRange(0, 40);
    const regions = new RegionState(bitmap);
    const buffers = [0, 1].map(() => Buffer.alloc(4 * REGION));
    const targets = new Set<ArrayBufferLike>();
    const reader = {
      readInto: async (offset: number, target: Buffer): Promise<void> => {
        targets.add(target.buffer);
        await new Promise((res) => setTimeout(res, 5 - (offset / size) * 4));
        (await dev.read(offset, target.length)).copy(target);
      },
    };
    const device = Object.assign(Object.create(dev) as MemoryDevice, {
      read: () => Promise.reject(new Error('device.read must not be used with a bulk reader')),
    });
    const sent: ResyncPiece[] = [];
    await runResync({
      regions,
      device,
      bulk: { reader, buffers },
      bucket: new TokenBucket(0, 0),
      signal: new AbortController().signal,
      maxReadBytes: 4 * REGION,
      readsInFlight: 2,
      // send copies, as HubLink does: the buffers are reused by the next group
      send: (p) => (sent.push({ ...p, data: p.data ? Buffer.from(p.data) : null }), 3),
      waitForRoom: () => Promise.resolve(),
      onProgress: () => undefined,
    });
    expect(targets.size).toBe(2); // only the two given buffers were read into
    expect(sent.reduce((n, p) => n + p.length, 0)).toBe(size);
    for (const p of sent) {
      for (let r = p.offset / REGION; r < (p.offset + p.length) / REGION; r++) {
        if (r % 5 === 0) expect(p.kind).toBe('zeroes');
        else {
          expect(p.kind).toBe('data');
          expect(p.data![(r * REGION - p.offset)]).toBe(r + 1);
        }
      }
    }
    expect(regions.resendBytes).toBe(0);
  });

  test('refuses buffers smaller than a read', async () => {
    const regions = new RegionState(new DirtyBitmap(64 * K, 64 * K * 4));
    await expect(
      runResync({
        regions,
        device: new MemoryDevice(64 * K * 4),
        bulk: { reader: { readInto: () => Promise.resolve() }, buffers: [Buffer.alloc(K)] },
        bucket: new TokenBucket(0, 0),
        signal: new AbortController().signal,
        maxReadBytes: 64 * K,
        readsInFlight: 1,
        send: () => 1,
        waitForRoom: () => Promise.resolve(),
        onProgress: () => undefined,
      }),
    ).rejects.toThrow(/bulk reads need/);
  });
});
