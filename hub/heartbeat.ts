/**
 * Heartbeat: pings a peer every intervalMs and declares it stale after
 * `misses` intervals without a pong (then the caller terminates the socket,
 * never a polite close). The timer is injected so tests need no real time.
 */
export interface HeartbeatTimer {
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
}

const realTimer: HeartbeatTimer = {
  setInterval: (fn, ms) => {
    const t = setInterval(fn, ms);
    t.unref();
    return t;
  },
  clearInterval: (h) => clearInterval(h as NodeJS.Timeout),
};

export interface HeartbeatOptions {
  intervalMs: number;
  misses?: number;
  sendPing(): void;
  onStale(): void;
  timer?: HeartbeatTimer;
}

export class Heartbeat {
  /** Intervals since the last pong. */
  private missed = 0;
  private handle: unknown = null;
  private readonly timer: HeartbeatTimer;

  constructor(private readonly options: HeartbeatOptions) {
    this.timer = options.timer ?? realTimer;
  }

  start(): void {
    if (this.handle !== null) return;
    this.handle = this.timer.setInterval(() => this.tick(), this.options.intervalMs);
  }

  onPong(): void {
    this.missed = 0;
  }

  stop(): void {
    if (this.handle !== null) this.timer.clearInterval(this.handle);
    this.handle = null;
  }

  private tick(): void {
    if (this.missed >= (this.options.misses ?? 3)) {
      this.stop();
      this.options.onStale();
      return;
    }
    this.missed++;
    this.options.sendPing();
  }
}
