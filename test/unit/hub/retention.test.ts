import { planRetention, RetentionPolicy } from '../../../hub/retention';

const SEG = 100;
const ordinalOf = (p: number) => Math.floor(p / 1000);
// points at positions 1000k+10 (segment k), time 10*k
const points = [0, 1, 2, 3, 4, 5].map((k) => ({ position: k * 1000 + 10, timeMs: k * 10, epoch: k }));
const segments = [0, 1, 2, 3, 4, 5, 6].map((ordinal) => ({ ordinal, bytes: SEG }));
const big: RetentionPolicy = { retentionMs: 25, journalBytes: 10_000 };

function plan(over: Partial<Parameters<typeof planRetention>[0]>) {
  return planRetention({ points, appliedPosition: 0, segments, pinned: [], ordinalOf, nowMs: 50, policy: big, ...over });
}

describe('planRetention', () => {
  it.each([
    ['time window keeps the newest point at or before the cutoff', {}, 2, false, false],
    ['nothing older than the window', { nowMs: 10 }, null, false, false],
    ['already applied', { appliedPosition: 2010 }, null, false, false],
    ['byte budget shortens history', { policy: { retentionMs: 25, journalBytes: 350 } }, 4, true, false],
    ['budget unreachable: newest point', { policy: { retentionMs: 1e9, journalBytes: 10 } }, 5, true, false],
    ['pin holds the base back', { pinned: [1010], policy: { retentionMs: 25, journalBytes: 250 } }, 1, false, true],
    ['pin at the oldest point blocks everything', { pinned: [10], nowMs: 1e9 }, 0, false, true],
  ] as const)('%s', (_name, over, expected, shortened, blocked) => {
    const r = plan(over as Partial<Parameters<typeof planRetention>[0]>);
    expect(r.target ? (r.target as (typeof points)[number]).epoch : null).toBe(expected);
    expect(r.shortened).toBe(shortened);
    expect(r.blockedByPin).toBe(blocked);
  });
});
