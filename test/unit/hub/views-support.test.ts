import { createHash, randomBytes } from 'node:crypto';
import { MemoryDevice } from '../../../common/block/memory-device';
import { LagHistory } from '../../../hub/lag-history';
import { regionChecksums } from '../../../hub/recovery-api';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

describe('regionChecksums', () => {
  it('hashes every region (last one short), zero regions included, like hashing the bytes', async () => {
    const MiB = 1024 * 1024;
    const size = 9 * MiB + 512; // 4 MiB regions: 3 regions, the last 1 MiB + 512 bytes
    const dev = new MemoryDevice(size);
    await dev.write(5 * MiB + 7 * 512, randomBytes(4096)); // region 1, second chunk only: zero prefix then data
    await dev.write(size - 512, randomBytes(512)); // region 2, tail
    const all = await dev.read(0, size);
    const regionSize = 4 * MiB;
    const expected = [0, 1, 2].map((i) => sha(all.subarray(i * regionSize, Math.min(size, (i + 1) * regionSize))));
    expect(await regionChecksums(dev, regionSize)).toEqual(expected);
    // regions larger than one read chunk, with data after zero chunks
    expect(await regionChecksums(dev, 8 * MiB)).toEqual([sha(all.subarray(0, 8 * MiB)), sha(all.subarray(8 * MiB))]);
    // an all-zero device
    const zero = new MemoryDevice(3 * MiB);
    expect(await regionChecksums(zero, MiB)).toEqual(Array(3).fill(sha(Buffer.alloc(MiB))));
  });

  it('skips reading regions the device reports as zero extents', async () => {
    const MiB = 1024 * 1024;
    const dev = new MemoryDevice(4 * MiB);
    await dev.write(MiB + 4096, randomBytes(4096));
    const read = jest.spyOn(dev, 'read');
    const all = Buffer.alloc(4 * MiB);
    (await dev.read(MiB, MiB)).copy(all, MiB);
    read.mockClear();
    const sums = await regionChecksums(dev, MiB);
    expect(sums).toEqual([0, 1, 2, 3].map((i) => sha(all.subarray(i * MiB, (i + 1) * MiB))));
    expect(read.mock.calls.map((c) => c[0])).toEqual([MiB]); // only the region with data was read
  });

  it('rejects a bad region size', async () => {
    await expect(regionChecksums(new MemoryDevice(4096), 0)).rejects.toMatchObject({ code: 'E_INVALID' });
  });
});

describe('LagHistory', () => {
  it('keeps one hour of samples per volume in a bounded ring, oldest first', () => {
    let lag = 0;
    let volumes = ['a', 'b'];
    const h = new LagHistory({
      source: () => volumes.map((name) => ({ name, lagSeconds: lag, lagBytes: lag * 100 })),
      intervalMs: 5000,
      windowMs: 3_600_000,
    });
    const t0 = 1_000_000_000;
    for (let i = 0; i < 800; i++) {
      lag = i;
      h.record(t0 + i * 5000);
    }
    const now = t0 + 799 * 5000;
    const s = h.samples('a', now);
    expect(s.length).toBe(721); // 3600 s / 5 s + the sample at the window's start
    expect(s[0]!.timeMs).toBe(now - 3_600_000);
    expect(s[s.length - 1]).toEqual({ timeMs: now, lagSeconds: 799, lagBytes: 79_900 });
    expect(s.every((x, i) => i === 0 || x.timeMs - s[i - 1]!.timeMs === 5000)).toBe(true);
    expect(h.samplesJson('b', now)[0]).toEqual({ time: new Date(now - 3_600_000).toISOString(), lagSeconds: 79, lagBytes: 7900 });
    // old samples age out of the window even without new ones
    expect(h.samples('a', now + 3_000_000)).toHaveLength(121);
    // a volume that is gone loses its history
    volumes = ['a'];
    h.record(now + 5000);
    expect(h.samples('b', now + 5000)).toEqual([]);
    expect(h.samples('nope')).toEqual([]);
  });

  it('samples on a timer that does not keep the process alive', () => {
    jest.useFakeTimers();
    try {
      let calls = 0;
      const h = new LagHistory({ source: () => (calls++, [{ name: 'a', lagSeconds: 1, lagBytes: 2 }]), intervalMs: 5000 });
      h.start();
      expect(calls).toBe(1);
      jest.advanceTimersByTime(15_000);
      expect(calls).toBe(4);
      h.stop();
      jest.advanceTimersByTime(15_000);
      expect(calls).toBe(4);
    } finally {
      jest.useRealTimers();
    }
  });

  it('rejects a window shorter than the interval', () => {
    expect(() => new LagHistory({ source: () => [], intervalMs: 10, windowMs: 5 })).toThrow(RangeError);
  });
});
