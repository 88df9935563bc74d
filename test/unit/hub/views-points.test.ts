import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { ReplError } from '../../../common/errors';
import { RecoveryPoint } from '../../../hub/replica-store';
import {
  VIEW_FILE,
  ViewRecord,
  newViewId,
  parsePointSelector,
  readViewRecord,
  selectPoint,
  viewIdentity,
  writeViewRecord,
} from '../../../hub/view-record';
import { useTmpDir } from '../../helpers/tmpdir';

const T0 = Date.parse('2024-05-01T10:00:00.000Z');
/** Points of epochs 3, 4, 5, 7 one second apart, positions growing. */
const POINTS: RecoveryPoint[] = [3, 4, 5, 7].map((epoch, i) => ({ epoch, seq: epoch * 10, timeMs: T0 + i * 1000, position: 100 * (i + 1) }));

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as ReplError).code;
  }
  return 'none';
}

describe('parsePointSelector', () => {
  it.each([
    [undefined, { kind: 'latest' }],
    [null, { kind: 'latest' }],
    ['latest', { kind: 'latest' }],
    ['42', { kind: 'epoch', epoch: 42 }],
    [' 7 ', { kind: 'epoch', epoch: 7 }],
    [42, { kind: 'epoch', epoch: 42 }],
    [0, { kind: 'epoch', epoch: 0 }],
    ['2024-05-01T10:00:01.500Z', { kind: 'time', timeMs: T0 + 1500 }],
    ['2024-05-01T12:00:01.500+02:00', { kind: 'time', timeMs: T0 + 1500 }],
  ])('accepts %p', (at, expected) => {
    expect(parsePointSelector(at)).toEqual(expected);
  });

  it.each([['yesterday'], [''], ['-3'], [1.5], [-1], [true], [{}], [['latest']], ['2024-13-45T99:00:00Z'], ['1234567890123456']])(
    'rejects %p with E_INVALID',
    (at) => {
      expect(code(() => parsePointSelector(at))).toBe('E_INVALID');
    },
  );

  it('never throws anything but E_INVALID on arbitrary input', () => {
    fc.assert(
      fc.property(fc.anything(), (at) => {
        try {
          parsePointSelector(at);
        } catch (err) {
          return err instanceof ReplError && err.code === 'E_INVALID';
        }
        return true;
      }),
    );
  });
});

describe('selectPoint', () => {
  it('latest is the newest point', () => {
    expect(selectPoint(POINTS, { kind: 'latest' }, 'v').epoch).toBe(7);
  });

  it('a time selects the newest point at or before it', () => {
    expect(selectPoint(POINTS, { kind: 'time', timeMs: T0 }, 'v').epoch).toBe(3);
    expect(selectPoint(POINTS, { kind: 'time', timeMs: T0 + 1999 }, 'v').epoch).toBe(4);
    expect(selectPoint(POINTS, { kind: 'time', timeMs: T0 + 2000 }, 'v').epoch).toBe(5);
    expect(selectPoint(POINTS, { kind: 'time', timeMs: T0 + 10 ** 9 }, 'v').epoch).toBe(7);
  });

  it('a time before the oldest retained point is E_RANGE', () => {
    expect(code(() => selectPoint(POINTS, { kind: 'time', timeMs: T0 - 1 }, 'v'))).toBe('E_RANGE');
    expect(() => selectPoint(POINTS, { kind: 'time', timeMs: T0 - 1 }, 'v')).toThrow(/point outside retention/);
  });

  it('an epoch must match exactly', () => {
    expect(selectPoint(POINTS, { kind: 'epoch', epoch: 5 }, 'v')).toBe(POINTS[2]);
    for (const epoch of [2, 6, 8]) expect(code(() => selectPoint(POINTS, { kind: 'epoch', epoch }, 'v'))).toBe('E_RANGE');
  });

  it('a volume without points has nothing to select', () => {
    expect(code(() => selectPoint([], { kind: 'latest' }, 'v'))).toBe('E_RANGE');
  });

  it('the selected point is never after the time asked for, and no retained point lies between', () => {
    fc.assert(
      fc.property(fc.integer({ min: T0, max: T0 + 5000 }), (t) => {
        const p = selectPoint(POINTS, { kind: 'time', timeMs: t }, 'v');
        return p.timeMs <= t && !POINTS.some((q) => q.timeMs > p.timeMs && q.timeMs <= t);
      }),
    );
  });
});

describe('view identities and records', () => {
  const tmp = useTmpDir('views-points-');

  it('derives stable, distinct names and namespace ids from the view id', () => {
    const a = viewIdentity('hub_1', 'vol1-test-abcdef');
    expect(viewIdentity('hub_1', 'vol1-test-abcdef')).toEqual(a);
    const b = viewIdentity('hub_1', 'vol1-test-abcdf0');
    expect(b.nguid.equals(a.nguid)).toBe(false);
    expect(b.uuid).not.toBe(a.uuid);
    expect(a.exportName).toBe('vol1-test-abcdef');
    expect(a.nqn).toBe('nqn.2024-01.io.blockrep:view:vol1-test-abcdef');
    expect(a.serial).toMatch(/^[\x20-\x7e]{1,20}$/);
    expect(a.nguid).toHaveLength(16);
    expect(a.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  });

  it('new ids avoid taken ones', () => {
    const seen = new Set<string>();
    for (let i = 0; i < 50; i++) {
      const id = newViewId('vol1', 'test', (c) => seen.has(c));
      expect(id).toMatch(/^vol1-test-[0-9a-f]{6}$/);
      expect(seen.has(id)).toBe(false);
      seen.add(id);
    }
    expect(() => newViewId('vol1', 'test', () => true)).toThrow(ReplError);
  });

  it('round-trips view.json and rejects a malformed one', async () => {
    const dir = path.join(tmp.path, 'v');
    expect(await readViewRecord(dir)).toBeNull();
    const rec: ViewRecord = {
      format: 1, id: 'vol1-failover-000001', volume: 'vol1', kind: 'failover', readOnly: false,
      point: POINTS[1]!, generation: 3, createdMs: T0, readyMs: 1.25,
    };
    await writeViewRecord(dir, rec);
    expect(await readViewRecord(dir)).toEqual(rec);
    fs.writeFileSync(path.join(dir, VIEW_FILE), JSON.stringify({ ...rec, kind: 'other' }));
    await expect(readViewRecord(dir)).rejects.toMatchObject({ code: 'E_IO' });
    fs.writeFileSync(path.join(dir, VIEW_FILE), '{"format":1,');
    await expect(readViewRecord(dir)).rejects.toMatchObject({ code: 'E_IO' });
  });
});
