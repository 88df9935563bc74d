import { planRetention, planThinning, RetentionPolicy } from '../../../hub/retention';

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

describe('planThinning', () => {
  const pts = Array.from({ length: 10 }, (_, i) => ({ position: i, timeMs: i * 30_000 }));
  it('keeps one point per minute between the long and the short window, and pinned ones', () => {
    const policy = { retentionMs: 60_000, retentionLongMs: 1e9, journalBytes: 1 };
    const drop = planThinning(pts, [3], 300_000, policy).map((p) => p.position);
    // window (now-1e9, 240000]: slots of 60 s: [0,1] [2,3] [4,5]..; pinned 3 kept; 9 at 270000 is inside the short window
    expect(drop).toEqual([1, 5, 7]);
  });
  it('does nothing without a long window', () => {
    expect(planThinning(pts, [], 300_000, { retentionMs: 60_000, journalBytes: 1 })).toEqual([]);
  });
});
