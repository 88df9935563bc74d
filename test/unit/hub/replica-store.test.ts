import fc from 'fast-check';
import { silentLogger } from '../../../common/log';
import { Write } from '../../../proto/codec';
import { RecoveryVolume } from '../../../hub/recovery-volume';
import { ReplicaStore } from '../../../hub/replica-store';
import { VolumeMeta } from '../../../hub/volume-meta';
import { makeTmpDir, removeTmpDir, useTmpDir } from '../../helpers/tmpdir';

const SIZE = 128 * 1024;
const META: VolumeMeta = {
  format: 1,
  name: 'vol1',
  uuid: 'u-1',
  size: SIZE,
  blockSize: 512,
  regionSize: 4096,
  generation: 1,
  agentId: 'agent-1',
  flags: { failedOver: false },
  createdMs: 1,
};

function storeOptions(policy = { retentionMs: 3_600_000, journalBytes: 1 << 30 }) {
  return { logger: silentLogger, owner: 'hubtest', policy, segmentBytes: 256 * 1024, maxRecordBytes: 32 * 1024 };
}

type Op =
  | { t: 'data'; offset: number; length: number; byte: number }
  | { t: 'zeroes' | 'trim'; offset: number; length: number }
  | { t: 'seal' }
  | { t: 'begin' }
  | { t: 'end' };

const rangeArb = fc
  .tuple(fc.integer({ min: 0, max: SIZE - 1 }), fc.integer({ min: 1, max: 20000 }))
  .map(([offset, len]) => ({ offset, length: Math.min(len, SIZE - offset) }));

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 5, arbitrary: fc.tuple(rangeArb, fc.integer({ min: 1, max: 255 })).map(([r, byte]) => ({ t: 'data' as const, ...r, byte })) },
  { weight: 1, arbitrary: rangeArb.map((r) => ({ t: 'zeroes' as const, ...r })) },
  { weight: 1, arbitrary: rangeArb.map((r) => ({ t: 'trim' as const, ...r })) },
  { weight: 3, arbitrary: fc.constant({ t: 'seal' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'begin' as const }) },
  { weight: 1, arbitrary: fc.constant({ t: 'end' as const }) },
);

/** Feeds ops into the store; returns the naive model's image at each recovery point, in order. */
async function feed(store: ReplicaStore, ops: Op[], model: Buffer, state: { seq: number; epoch: number; inGroup: boolean }) {
  const snapshots: Buffer[] = [];
  const pending: Promise<void>[] = [];
  const seal = () => {
    pending.push(store.appendSeal({ epoch: state.epoch, lastSeq: state.seq, timeMs: 1000 + state.epoch, reason: 'timer' }));
    state.epoch++;
  };
  for (const op of ops) {
    switch (op.t) {
      case 'data':
      case 'zeroes':
      case 'trim': {
        const w: Write = {
          seq: ++state.seq,
          epoch: state.epoch,
          offset: op.offset,
          length: op.length,
          kind: op.t,
          origin: state.inGroup ? 'resync' : 'live',
          data: op.t === 'data' ? Buffer.alloc(op.length, op.byte) : Buffer.alloc(0),
          crc32c: 0,
          timeMs: 0,
        };
        pending.push(store.appendWrite(w));
        if (op.t === 'data') model.fill(op.byte, op.offset, op.offset + op.length);
        else model.fill(0, op.offset, op.offset + op.length);
        break;
      }
      case 'seal':
        seal();
        if (!state.inGroup) snapshots.push(Buffer.from(model));
        break;
      case 'begin':
        pending.push(store.appendResyncBegin({ resyncId: state.epoch, full: false, totalBytes: 0 }, 5));
        state.inGroup = true;
        break;
      case 'end':
        if (!state.inGroup) break;
        pending.push(store.appendResyncEnd({ resyncId: 0, epoch: state.epoch }, 5));
        seal();
        state.inGroup = false;
        snapshots.push(Buffer.from(model));
        break;
    }
  }
  await Promise.all(pending);
  return snapshots;
}

async function checkViews(store: ReplicaStore, expected: Buffer[]): Promise<void> {
  const points = store.points();
  // the base point (if any) plus every later point; compare the tail
  const tail = expected.slice(expected.length - points.length);
  expect(points.length).toBeLessThanOrEqual(expected.length);
  for (let i = 0; i < points.length; i++) {
    const view = RecoveryVolume.atPoint(store, points[i]!);
    const got = await view.read(0, SIZE);
    await view.close();
    if (!got.equals(tail[i]!)) throw new Error(`view at point ${i} (epoch ${points[i]!.epoch}) differs from the model`);
  }
}

describe('ReplicaStore + RecoveryVolume', () => {
  const tmp = useTmpDir('hub-store-');

  it('view at every point equals a naive replay (random writes/zeroes/trims/seals/groups), across apply and reopen', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { minLength: 1, maxLength: 60 }), fc.nat(), async (ops, applyAt) => {
        const dir = makeTmpDir('hub-store-prop-');
        try {
          let store = await ReplicaStore.create(dir, META, storeOptions());
          const model = Buffer.alloc(SIZE);
          const state = { seq: 0, epoch: 1, inGroup: false };
          const snapshots = await feed(store, ops, model, state);
          expect(store.points().length).toBe(snapshots.length);
          await checkViews(store, snapshots);
          // random partial reads against the latest snapshot
          const last = snapshots[snapshots.length - 1];
          if (last) {
            const latest = RecoveryVolume.latest(store);
            const off = applyAt % SIZE;
            const len = Math.min(9000, SIZE - off);
            expect((await latest.read(off, len)).equals(last.subarray(off, off + len))).toBe(true);
            await latest.close();
          }
          // fold the older half into the base image (time-based retention)
          if (snapshots.length > 0) {
            const cut = store.points()[applyAt % store.points().length]!;
            await store.runRetention(cut.timeMs + 3_600_000);
            expect(store.points()[0]!.position).toBe(cut.position);
            await checkViews(store, snapshots);
          }
          await store.close();
          store = await ReplicaStore.open(dir, storeOptions());
          expect(store.group !== null).toBe(state.inGroup);
          await checkViews(store, snapshots);
          // continue after reopen: the open group (if any) completes
          const more = await feed(store, [{ t: 'data', offset: 0, length: 100, byte: 7 }, { t: 'end' }, { t: 'seal' }], model, state);
          await checkViews(store, [...snapshots, ...more]);
          await store.close();
        } finally {
          removeTmpDir(dir);
        }
      }),
      { numRuns: 30 },
    );
  });

  it('keeps the previous point while a resync group is open, even across a reopen', async () => {
    let store = await ReplicaStore.create(tmp.path, META, storeOptions());
    const model = Buffer.alloc(SIZE);
    const state = { seq: 0, epoch: 1, inGroup: false };
    const first = await feed(store, [{ t: 'data', offset: 0, length: 4096, byte: 1 }, { t: 'seal' }], model, state);
    await feed(store, [{ t: 'begin' }, { t: 'data', offset: 0, length: 8192, byte: 2 }, { t: 'seal' }, { t: 'seal' }], model, state);
    expect(store.points().length).toBe(1);
    const latest = RecoveryVolume.latest(store);
    expect((await latest.read(0, SIZE)).equals(first[0]!)).toBe(true);
    await latest.close();
    await store.close();
    store = await ReplicaStore.open(dir(), storeOptions());
    expect(store.group).not.toBeNull();
    expect(store.points().length).toBe(1);
    const done = await feed(store, [{ t: 'end' }], model, state);
    expect(store.group).toBeNull();
    expect(store.points().length).toBe(2);
    const view = RecoveryVolume.latest(store);
    expect((await view.read(0, SIZE)).equals(done[0]!)).toBe(true);
    await view.close();
    await store.close();
    function dir(): string {
      return tmp.path;
    }
  });

  it('shortens history when the journal exceeds its byte budget, and counts it', async () => {
    const store = await ReplicaStore.create(tmp.path, META, storeOptions({ retentionMs: 3_600_000, journalBytes: 600 * 1024 }));
    const model = Buffer.alloc(SIZE);
    const state = { seq: 0, epoch: 1, inGroup: false };
    const ops: Op[] = [];
    for (let i = 0; i < 80; i++) ops.push({ t: 'data', offset: (i * 16384) % SIZE, length: 16384, byte: i + 1 }, { t: 'seal' });
    const snaps = await feed(store, ops, model, state);
    expect(store.journalBytes).toBeGreaterThan(600 * 1024);
    await store.runRetention(0);
    expect(store.journalBytes).toBeLessThanOrEqual(600 * 1024);
    expect(store.stats.historyShortened).toBe(1);
    await checkViews(store, snaps);
    await store.close();
  });

  it('never applies past a pinned view', async () => {
    const store = await ReplicaStore.create(tmp.path, META, storeOptions());
    const model = Buffer.alloc(SIZE);
    const state = { seq: 0, epoch: 1, inGroup: false };
    const snaps = await feed(store, [
      { t: 'data', offset: 0, length: 512, byte: 1 }, { t: 'seal' },
      { t: 'data', offset: 0, length: 512, byte: 2 }, { t: 'seal' },
      { t: 'data', offset: 0, length: 512, byte: 3 }, { t: 'seal' },
    ], model, state);
    const view = RecoveryVolume.atPoint(store, store.points()[0]!);
    await store.runRetention(Number.MAX_SAFE_INTEGER);
    expect(store.points().length).toBe(3);
    expect((await view.read(0, 512)).equals(snaps[0]!.subarray(0, 512))).toBe(true);
    await view.close();
    await store.runRetention(Number.MAX_SAFE_INTEGER);
    expect(store.points().length).toBe(1);
    await checkViews(store, snaps);
    await expect(view.read(0, 512)).rejects.toMatchObject({ code: 'E_CLOSED' });
    await store.close();
  });

  it('refuses writes on views and has no latest view before the first point', async () => {
    const store = await ReplicaStore.create(tmp.path, META, storeOptions());
    expect(() => RecoveryVolume.latest(store)).toThrow(/no recovery point/);
    await store.appendSeal({ epoch: 1, lastSeq: 0, timeMs: 1, reason: 'timer' });
    const v = RecoveryVolume.latest(store);
    await expect(v.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(v.writeZeroes(0, 512)).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(v.trim(0, 512)).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(v.read(SIZE - 1, 2)).rejects.toMatchObject({ code: 'E_RANGE' });
    expect(v.info.readOnly).toBe(true);
    await v.close();
    await store.close();
  });
});

describe('resync group closing rule', () => {
  const tmp = useTmpDir('hub-store-group-');
  it('a Seal before the ResyncEnd epoch is a checkpoint; the Seal of that epoch completes the group', async () => {
    const store = await ReplicaStore.create(tmp.path, META, storeOptions());
    await store.appendSeal({ epoch: 1, lastSeq: 0, timeMs: 1, reason: 'timer' });
    await store.appendResyncBegin({ resyncId: 1, full: true, totalBytes: SIZE }, 2);
    await store.appendResyncEnd({ resyncId: 1, epoch: 5 }, 3);
    await store.appendSeal({ epoch: 4, lastSeq: 0, timeMs: 4, reason: 'timer' });
    expect(store.points().length).toBe(1);
    expect(store.group).not.toBeNull();
    await store.appendSeal({ epoch: 5, lastSeq: 0, timeMs: 5, reason: 'resync-end' });
    expect(store.group).toBeNull();
    expect(store.points().map((p) => p.epoch)).toEqual([1, 5]);
    await store.close();
  });
});

describe('interrupted apply', () => {
  const tmp = useTmpDir('hub-store-apply-');
  it('finishes an apply whose intent was persisted before a crash', async () => {
    let store = await ReplicaStore.create(tmp.path, META, storeOptions());
    const model = Buffer.alloc(SIZE);
    const state = { seq: 0, epoch: 1, inGroup: false };
    const ops: Op[] = [];
    for (let i = 0; i < 30; i++) ops.push({ t: 'data', offset: (i * 9000) % (SIZE - 16384), length: 16384, byte: i + 1 }, { t: 'seal' });
    const snaps = await feed(store, ops, model, state);
    const target = store.points()[20]!;
    // crash point: intent committed, base image partly written with newer data than the base point
    const internals = store as unknown as { journal: { updateMeta(m: Record<string, unknown>): Promise<void> }; baseDevice: { write(o: number, d: Buffer): Promise<void> } };
    await internals.journal.updateMeta({ basePoint: null, appliedPosition: 0, applying: target });
    await internals.baseDevice.write(0, Buffer.alloc(16384, 0xee));
    await store.close();
    store = await ReplicaStore.open(tmp.path, storeOptions());
    expect(store.points()[0]!.position).toBe(target.position);
    await checkViews(store, snaps);
    await store.close();
  });
});
