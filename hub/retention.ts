/**
 * Retention planning (pure): which recovery point the base image should be
 * advanced to, given the policy, the clock, the journal's segments and the
 * points pinned by open views.
 *
 * Rules, in order:
 *  1. time: fold everything older than the window into the base, keeping the
 *     newest point at or before now - retentionMs (so every instant of the
 *     window stays recoverable);
 *  2. bytes: when the journal exceeds journalBytes, advance further to the
 *     oldest point after which the remaining segments fit the budget (or the
 *     newest point if none does): history is shortened, replication never
 *     stops. Records staged in an open resync group lie after the newest point
 *     and are never applied, so a big FULL resync may exceed the budget until
 *     it completes;
 *  3. pins: never past the oldest pinned point (a view reading it would see
 *     newer data).
 */
export interface RetentionPolicy {
  /** Keep every recovery point of this window. */
  retentionMs: number;
  /**
   * Optional longer window (>= retentionMs): history between retentionMs and
   * retentionLongMs stays recoverable, with its points thinned to one per
   * THIN_INTERVAL_MS; only records older than this window reach the base.
   */
  retentionLongMs?: number;
  /** Journal budget in bytes (segments retained); exceeding it shortens history. */
  journalBytes: number;
}

export const DEFAULT_RETENTION: RetentionPolicy = { retentionMs: 3_600_000, journalBytes: 8 * 1024 ** 3 };

export interface PlanPoint {
  position: number;
  timeMs: number;
}

export interface RetentionInput<P extends PlanPoint> {
  /** Retained points in journal order; the first is the base image's point (if any). */
  points: readonly P[];
  /** Position the base image holds (records at or before it are applied). */
  appliedPosition: number;
  /** Retained segments in journal order. */
  segments: readonly { ordinal: number; bytes: number }[];
  /** Positions of points held by open views. */
  pinned: readonly number[];
  /** Maps a position to its segment ordinal. */
  ordinalOf: (position: number) => number;
  nowMs: number;
  policy: RetentionPolicy;
}

export interface RetentionPlan<P> {
  /** Point to advance the base image to, or null for "nothing to do". */
  target: P | null;
  /** True when the byte budget (not time) moved the target: history was shortened. */
  shortened: boolean;
  /** True when a pin kept the journal above its budget. */
  blockedByPin: boolean;
}

export function planRetention<P extends PlanPoint>(input: RetentionInput<P>): RetentionPlan<P> {
  const { points, policy } = input;
  const cutoff = input.nowMs - Math.max(policy.retentionMs, policy.retentionLongMs ?? 0);
  let timeIdx = -1;
  for (let i = 0; i < points.length && points[i]!.timeMs <= cutoff; i++) timeIdx = i;

  let bytesIdx = -1;
  const total = input.segments.reduce((s, seg) => s + seg.bytes, 0);
  if (total > policy.journalBytes && points.length > 0) {
    bytesIdx = points.length - 1;
    for (let i = 0; i < points.length; i++) {
      const keepFrom = input.ordinalOf(points[i]!.position);
      const kept = input.segments.filter((s) => s.ordinal >= keepFrom).reduce((s, seg) => s + seg.bytes, 0);
      if (kept <= policy.journalBytes) {
        bytesIdx = i;
        break;
      }
    }
  }
  const wanted = Math.max(timeIdx, bytesIdx);
  let idx = wanted;
  if (input.pinned.length > 0) {
    const oldestPin = Math.min(...input.pinned);
    while (idx >= 0 && points[idx]!.position > oldestPin) idx--;
  }
  const blockedByPin = idx < wanted;
  const target = idx >= 0 ? points[idx]! : null;
  if (!target || target.position <= input.appliedPosition) return { target: null, shortened: false, blockedByPin };
  return { target, shortened: idx > timeIdx, blockedByPin };
}

export const THIN_INTERVAL_MS = 60_000;

/**
 * Points to forget between the long and the short window: keeps the first
 * point of every THIN_INTERVAL_MS slot, pinned points, and everything outside
 * (now - retentionLongMs, now - retentionMs]. Data is not touched: thinning
 * only shortens the list of points offered for recovery.
 */
export function planThinning<P extends PlanPoint>(
  points: readonly P[],
  pinned: readonly number[],
  nowMs: number,
  policy: RetentionPolicy,
): P[] {
  if (policy.retentionLongMs === undefined || policy.retentionLongMs <= policy.retentionMs) return [];
  const from = nowMs - policy.retentionLongMs;
  const to = nowMs - policy.retentionMs;
  const drop: P[] = [];
  let slot = Number.NaN;
  for (const p of points) {
    if (p.timeMs <= from || p.timeMs > to) continue;
    const s = Math.floor(p.timeMs / THIN_INTERVAL_MS);
    if (s === slot && !pinned.includes(p.position)) drop.push(p);
    slot = s;
  }
  return drop;
}
