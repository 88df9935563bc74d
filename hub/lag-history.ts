/**
 * LagHistory: the recent replication lag of every volume, for
 * GET /v1/volumes/NAME/lag-history (drill reports, dashboards).
 *
 * A timer (unref'd: it never keeps the process alive) samples each volume's
 * lagSeconds/lagBytes every `intervalMs` (default 5 s) into a fixed-size ring
 * per volume holding `windowMs` (default 1 h) worth of samples; older samples
 * are overwritten, so memory is bounded (720 samples per volume by default).
 * Volumes that disappear from the sample source lose their history. The
 * sampling itself (record()) is synchronous and clock-injected, so the ring
 * logic is tested without timers.
 */

export interface LagSample {
  timeMs: number;
  lagSeconds: number;
  lagBytes: number;
}

export interface LagSampleJson {
  time: string;
  lagSeconds: number;
  lagBytes: number;
}

export interface LagReading {
  name: string;
  lagSeconds: number;
  lagBytes: number;
}

export interface LagHistoryOptions {
  /** Current lag of every volume. */
  source: () => LagReading[];
  intervalMs?: number;
  windowMs?: number;
  now?: () => number;
}

export const DEFAULT_LAG_INTERVAL_MS = 5000;
export const DEFAULT_LAG_WINDOW_MS = 3_600_000;

/** Fixed-capacity ring of samples, oldest first on read. */
class Ring {
  private readonly items: (LagSample | undefined)[];
  private next = 0;
  private count = 0;

  constructor(readonly capacity: number) {
    this.items = new Array<LagSample | undefined>(capacity);
  }

  push(s: LagSample): void {
    this.items[this.next] = s;
    this.next = (this.next + 1) % this.capacity;
    this.count = Math.min(this.count + 1, this.capacity);
  }

  toArray(): LagSample[] {
    const out: LagSample[] = [];
    const start = (this.next - this.count + this.capacity) % this.capacity;
    for (let i = 0; i < this.count; i++) out.push(this.items[(start + i) % this.capacity]!);
    return out;
  }
}

export class LagHistory {
  private readonly rings = new Map<string, Ring>();
  private readonly intervalMs: number;
  private readonly windowMs: number;
  private readonly capacity: number;
  private readonly now: () => number;
  private timer: NodeJS.Timeout | null = null;

  constructor(private readonly options: LagHistoryOptions) {
    this.intervalMs = options.intervalMs ?? DEFAULT_LAG_INTERVAL_MS;
    this.windowMs = options.windowMs ?? DEFAULT_LAG_WINDOW_MS;
    if (!(this.intervalMs > 0) || !(this.windowMs >= this.intervalMs)) {
      throw new RangeError(`lag history: interval ${this.intervalMs} ms / window ${this.windowMs} ms out of range`);
    }
    this.capacity = Math.ceil(this.windowMs / this.intervalMs) + 1;
    this.now = options.now ?? Date.now;
  }

  /** Takes a sample now and then every intervalMs until stop(). */
  start(): void {
    if (this.timer) return;
    this.record();
    this.timer = setInterval(() => this.record(), this.intervalMs);
    this.timer.unref();
  }

  stop(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }

  /** Samples every volume once (the timer's tick; tests call it directly). */
  record(nowMs = this.now()): void {
    const seen = new Set<string>();
    for (const r of this.options.source()) {
      seen.add(r.name);
      let ring = this.rings.get(r.name);
      if (!ring) {
        ring = new Ring(this.capacity);
        this.rings.set(r.name, ring);
      }
      ring.push({ timeMs: nowMs, lagSeconds: r.lagSeconds, lagBytes: r.lagBytes });
    }
    for (const name of [...this.rings.keys()]) if (!seen.has(name)) this.rings.delete(name);
  }

  /** Samples of the last window, oldest first ([] for a volume never sampled). */
  samples(volume: string, nowMs = this.now()): LagSample[] {
    const from = nowMs - this.windowMs;
    return (this.rings.get(volume)?.toArray() ?? []).filter((s) => s.timeMs >= from);
  }

  samplesJson(volume: string, nowMs = this.now()): LagSampleJson[] {
    return this.samples(volume, nowMs).map((s) => ({
      time: new Date(s.timeMs).toISOString(),
      lagSeconds: s.lagSeconds,
      lagBytes: s.lagBytes,
    }));
  }
}
