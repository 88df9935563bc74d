import fc from 'fast-check';
import { decideHello } from '../../../hub/fencing';
import {
  FailbackRecord,
  failbackJson,
  isAllZero,
  mergeRanges,
  pieces,
  rangeBytes,
  readFailbackRecords,
  validateFailbackRecord,
  writeFailbackRecord,
} from '../../../hub/failback-plan';
import { makeHello } from '../../helpers/fake-agent';
import { useTmpDir } from '../../helpers/tmpdir';

describe('failback range algebra', () => {
  test('merges, clips and sorts', () => {
    expect(
      mergeRanges(
        [
          [{ offset: 100, length: 50 }, { offset: 0, length: 10 }],
          [{ offset: 10, length: 5 }, { offset: 140, length: 30 }, { offset: 990, length: 100 }, { offset: 2000, length: 1 }],
        ],
        1000,
      ),
    ).toEqual([
      { offset: 0, length: 15 },
      { offset: 100, length: 70 },
      { offset: 990, length: 10 },
    ]);
  });

  test('property: the merge covers exactly the union, disjoint and sorted; pieces tile it', () => {
    const range = fc.record({ offset: fc.nat(4000), length: fc.nat(600) });
    fc.assert(
      fc.property(fc.array(range, { maxLength: 20 }), fc.array(range, { maxLength: 20 }), fc.integer({ min: 1, max: 700 }), (a, b, piece) => {
        const size = 4096;
        const merged = mergeRanges([a, b], size);
        const want = new Uint8Array(size);
        for (const r of [...a, ...b]) for (let i = r.offset; i < Math.min(size, r.offset + r.length); i++) want[i] = 1;
        const got = new Uint8Array(size);
        for (const r of merged) for (let i = r.offset; i < r.offset + r.length; i++) got[i]++;
        expect(got).toEqual(want);
        for (let i = 1; i < merged.length; i++) expect(merged[i]!.offset).toBeGreaterThan(merged[i - 1]!.offset + merged[i - 1]!.length);
        const ps = [...pieces(merged, piece)];
        expect(rangeBytes(ps)).toBe(rangeBytes(merged));
        for (const p of ps) expect(p.length).toBeLessThanOrEqual(piece);
      }),
    );
  });

  test('isAllZero', () => {
    expect(isAllZero(Buffer.alloc(4096))).toBe(true);
    const b = Buffer.alloc(4096);
    b[4095] = 1;
    expect(isAllZero(b)).toBe(false);
  });
});

describe('failback record', () => {
  const tmp = useTmpDir('failback-rec-');
  const rec: FailbackRecord = {
    format: 1, volume: 'vol1', viewId: 'vol1-failover-abc', state: 'waiting-for-agent', startedMs: 1_700_000_000_000, finishedMs: null,
    changedBytes: 10, agentDirtyBytes: 0, hubAheadBytes: 0, shippedBytes: 0, volumeSize: 1 << 20, generation: 0, attempts: 0, error: null,
  };

  test('round trips through the data dir; malformed files are reported and skipped', async () => {
    await writeFailbackRecord(tmp.path, rec);
    await writeFailbackRecord(tmp.path, { ...rec, volume: 'vol2', state: 'done', finishedMs: rec.startedMs + 5 });
    require('node:fs').writeFileSync(`${tmp.path}/failback/bad.json`, '{"format":1}');
    const errors: string[] = [];
    const got = await readFailbackRecords(tmp.path, (file) => errors.push(file));
    expect(got.map((r) => [r.volume, r.state])).toEqual([['vol1', 'waiting-for-agent'], ['vol2', 'done']]);
    expect(errors).toHaveLength(1);
    expect(await readFailbackRecords(`${tmp.path}/none`, () => undefined)).toEqual([]);
  });

  test('validation and the API form', () => {
    expect(() => validateFailbackRecord({ ...rec, state: 'sleeping' })).toThrow(expect.objectContaining({ code: 'E_IO' }));
    expect(() => validateFailbackRecord({ ...rec, volume: '../x' })).toThrow(expect.objectContaining({ code: 'E_IO' }));
    expect(failbackJson({ ...rec, error: 'x', finishedMs: rec.startedMs })).toMatchObject({
      volume: 'vol1', state: 'waiting-for-agent', error: 'x', startedAt: '2023-11-14T22:13:20.000Z', finishedAt: '2023-11-14T22:13:20.000Z',
    });
    expect(failbackJson(rec)).not.toHaveProperty('finishedAt');
  });
});

describe('fencing with a pending failback', () => {
  const volume = { uuid: 'uuid-1', size: 1024 * 1024, blockSize: 512, generation: 5, failedOver: true, agentId: 'agent-1', failbackPending: true };
  const decide = (hello: Parameters<typeof makeHello>[0], over: Partial<typeof volume> = {}, busy = false) =>
    decideHello({ token: 't', busy, volume: { ...volume, ...over }, hello: makeHello({ token: 't', ...hello }) });

  test.each([
    ['same agent + uuid -> failback at the hub generation', { generation: 5 }, {}, { action: 'welcome', mode: 'failback', generation: 5 }],
    ['whatever generation the agent presents', { generation: 9 }, {}, { action: 'welcome', mode: 'failback', generation: 5 }],
    ['another agent id -> failed-over', { agentId: 'agent-2' }, {}, { action: 'refuse', code: 'failed-over' }],
    ['another uuid -> failed-over', { volumeUuid: 'uuid-2' }, {}, { action: 'refuse', code: 'failed-over' }],
    ['another size -> failed-over', { volumeSize: 2048 * 1024 }, {}, { action: 'refuse', code: 'failed-over' }],
    ['no failback requested -> failed-over', {}, { failbackPending: false }, { action: 'refuse', code: 'failed-over' }],
    ['wrong token first', { token: 'x' }, {}, { action: 'refuse', code: 'auth' }],
  ] as const)('%s', (_name, hello, over, expected) => {
    expect(decide(hello, over)).toMatchObject(expected);
  });

  test('busy still wins', () => {
    expect(decide({}, {}, true)).toMatchObject({ action: 'refuse', code: 'busy' });
  });
});
