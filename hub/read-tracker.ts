/**
 * ReadTracker: lets the applier wait for reads that planned against index
 * entries it is about to make unreadable (an RCU-style grace period). Each
 * read enters the current generation; waitForOlder() bumps the generation and
 * resolves once every read of an older generation has left. Later reads never
 * delay it, so a steady stream of readers cannot starve the applier.
 */
export class ReadTracker {
  private generation = 0;
  /** generation -> reads still running in it. */
  private readonly active = new Map<number, number>();
  private readonly waiters: { before: number; resolve: () => void }[] = [];

  enter(): number {
    const g = this.generation;
    this.active.set(g, (this.active.get(g) ?? 0) + 1);
    return g;
  }

  leave(ticket: number): void {
    const n = (this.active.get(ticket) ?? 1) - 1;
    if (n <= 0) this.active.delete(ticket);
    else this.active.set(ticket, n);
    this.wake();
  }

  /** Resolves when no read that entered before this call is still running. */
  waitForOlder(): Promise<void> {
    const before = ++this.generation;
    return new Promise((resolve) => {
      this.waiters.push({ before, resolve });
      this.wake();
    });
  }

  private wake(): void {
    for (let i = this.waiters.length - 1; i >= 0; i--) {
      const w = this.waiters[i]!;
      if (![...this.active.keys()].some((g) => g < w.before)) {
        this.waiters.splice(i, 1);
        w.resolve();
      }
    }
  }
}
