import { DirtyBitmap } from '../../../agent/dirty-bitmap';
import { RegionState } from '../../../agent/region-state';
import { HotExtents, ReplicationFilter, ReplicationSink } from '../../../agent/replication-filter';
import { BlockDevice, MUTATING_METHODS } from '../../../common/block/device';
import { MemoryDevice } from '../../../common/block/memory-device';
import { WriteKind } from '../../../proto/codec';

const REGION = 4096;
const SIZE = 1024 * 1024;

/** Records calls of every layer into one shared trace. */
function setup(options?: { mode?: 'async' | 'sync'; onLinkFailure?: 'degrade' | 'fail-writes'; replicate?: boolean }) {
  const trace: string[] = [];
  const mem = new MemoryDevice(SIZE);
  const next: BlockDevice = {
    info: mem.info,
    read: (o, l) => (trace.push('next.read'), mem.read(o, l)),
    write: (o, d, w) => (trace.push('next.write'), mem.write(o, d, w)),
    writeZeroes: (o, l, w) => (trace.push('next.writeZeroes'), mem.writeZeroes(o, l, w)),
    trim: (o, l, w) => (trace.push('next.trim'), mem.trim(o, l, w)),
    flush: () => (trace.push('next.flush'), mem.flush()),
    close: () => mem.close(),
  };
  const regions = new RegionState(new DirtyBitmap(REGION, SIZE));
  let hotResolve: (() => void) | null = null;
  const activity: HotExtents = {
    ensureHot: () => {
      trace.push(`hot(bits=${regions.bitmap.countSet()})`);
      return new Promise<void>((r) => (hotResolve = r)).then(() => void trace.push('hot.durable'));
    },
  };
  let epoch = 1;
  let durable: (() => void) | null = null;
  const records: { offset: number; length: number; kind: WriteKind }[] = [];
  const sink: ReplicationSink = {
    canReplicate: () => options?.replicate ?? true,
    recordWrite: (offset, length, kind) => {
      trace.push(`record.${kind}`);
      records.push({ offset, length, kind });
      return options?.replicate === false ? null : epoch;
    },
    seal: (reason) => (trace.push(`seal.${reason}`), epoch++),
    waitDurable: () => (trace.push('waitDurable'), new Promise<void>((r) => (durable = r))),
    resendNeeded: () => void trace.push('resendNeeded'),
  };
  const filter = new ReplicationFilter(next, regions, activity, sink, { mode: options?.mode ?? 'async', onLinkFailure: options?.onLinkFailure ?? 'degrade' });
  const pump = async (): Promise<void> => {
    for (let i = 0; i < 5; i++) {
      await new Promise((r) => setImmediate(r));
      if (hotResolve) {
        const h = hotResolve;
        hotResolve = null;
        h();
      }
    }
  };
  return { trace, filter, regions, records, pump, resolveDurable: () => durable?.(), mem };
}

const call = (f: BlockDevice, m: (typeof MUTATING_METHODS)[number], offset: number, length: number, fua = false): Promise<void> =>
  m === 'write' ? f.write(offset, Buffer.alloc(length, 7), { fua }) : f[m](offset, length, { fua });

describe('ReplicationFilter', () => {
  test.each(MUTATING_METHODS.map((m) => [m]))('%s marks the bitmap and produces a record', async (m) => {
    const { filter, regions, records, pump } = setup();
    const p = call(filter, m, 3 * REGION + 100, 2 * REGION);
    await pump();
    await p;
    expect([...regions.bitmap.extents()]).toEqual([{ start: 3, count: 3 }]);
    const kind = m === 'write' ? 'data' : m === 'writeZeroes' ? 'zeroes' : 'trim';
    expect(records).toEqual([{ offset: 3 * REGION + 100, length: 2 * REGION, kind }]);
  });

  test('every mutating method of BlockDevice is spelled out by the filter (no pass-through)', () => {
    const proto = ReplicationFilter.prototype as unknown as Record<string, unknown>;
    for (const m of MUTATING_METHODS) expect(Object.prototype.hasOwnProperty.call(proto, m)).toBe(true);
  });

  test.each(MUTATING_METHODS.map((m) => [m]))('layer order for %s: bits -> hot -> forward -> record -> ack', async (m) => {
    const { trace, filter, pump } = setup();
    let acked = false;
    const p = call(filter, m, 0, REGION, true).then(() => {
      trace.push('ack');
      acked = true;
    });
    await new Promise((r) => setImmediate(r));
    expect(acked).toBe(false);
    expect(trace).toEqual(['hot(bits=1)']); // bits set before the extent is made hot; nothing forwarded yet
    await pump();
    await p;
    expect(trace).toEqual(['hot(bits=1)', 'hot.durable', `next.${m}`, `record.${m === 'write' ? 'data' : m === 'writeZeroes' ? 'zeroes' : 'trim'}`, 'seal.fua', 'ack']);
  });

  test('flush: next.flush then seal', async () => {
    const { trace, filter } = setup();
    await filter.flush();
    expect(trace).toEqual(['next.flush', 'seal.flush']);
  });

  test('sync mode waits for durability before acknowledging', async () => {
    const { trace, filter, pump, resolveDurable } = setup({ mode: 'sync' });
    let acked = false;
    const p = filter.write(0, Buffer.alloc(512)).then(() => (acked = true));
    await pump();
    expect(trace.slice(-1)).toEqual(['waitDurable']);
    expect(acked).toBe(false);
    resolveDurable();
    await p;
    expect(acked).toBe(true);
  });

  test('fail-writes refuses before touching the volume when the link is down', async () => {
    const { trace, filter, regions } = setup({ onLinkFailure: 'fail-writes', replicate: false });
    await expect(filter.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_IO' });
    expect(trace).toEqual([]);
    expect(regions.bitmap.countSet()).toBe(0);
  });

  test('a dropped payload leaves the regions for resend; a failed forward too', async () => {
    const { filter, regions, pump, mem } = setup({ replicate: false });
    const p = filter.write(0, Buffer.alloc(512));
    await pump();
    await p;
    expect(regions.resendRuns()).toEqual([{ start: 0, count: 1 }]);
    await mem.close(); // the next write fails in next.write
    const q = filter.write(5 * REGION, Buffer.alloc(512));
    await pump();
    await expect(q).rejects.toBeDefined();
    expect(regions.resendRuns()).toEqual([
      { start: 0, count: 1 },
      { start: 5, count: 1 },
    ]);
    expect(regions.inflightCount).toBe(0);
  });

  test('filter never changes data', async () => {
    const { filter, pump, mem } = setup();
    const data = Buffer.from('abcdefgh'.repeat(64));
    const p = filter.write(512, data);
    await pump();
    await p;
    expect((await mem.read(512, data.length)).equals(data)).toBe(true);
    expect((await filter.read(512, data.length)).equals(data)).toBe(true);
  });
});
