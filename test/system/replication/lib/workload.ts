/**
 * Workload: a seeded stream of writes (plus optional write-zeroes, trims,
 * flushes and FUA writes) against any initiator, with a fixed number of
 * requests in flight and an optional byte-rate limit, so a kill -9 always
 * lands while writes are outstanding and the reference log stays small.
 *
 * It records every region it touched (distinct 64 KiB regions: the dirty set
 * the agent must ship later) and stops at the first failed request: a killed
 * agent fails every request in flight, which fault tests expect; they look at
 * `failure` and decide.
 */
import { Rng } from '../../../helpers/e2e';

/** The initiator surface a workload needs (NbdClient fits; NVMe via an adapter). */
export interface WriteTarget {
  write(offset: number, data: Buffer, options?: { fua?: boolean }): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  trim(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

export interface WorkloadOptions {
  /** Byte range the workload writes in (default: the whole device). */
  offset?: number;
  length: number;
  /** Requests in flight (default 4). */
  depth?: number;
  /** Request sizes are multiples of `align` up to maxLength (defaults 4 KiB / 64 KiB). */
  align?: number;
  maxLength?: number;
  /** Payload bytes per second, 0 = unlimited (default 0). */
  rate?: number;
  /** Probabilities per request (default 0 each). */
  zeroes?: number;
  trim?: number;
  flush?: number;
  fua?: number;
  /** Stop after this many payload bytes (default: until stop()). */
  totalBytes?: number;
  regionSize?: number;
}

export class Workload {
  readonly regions = new Set<number>();
  ops = 0;
  /** Bytes covered by all requests / carried as payload (writes only). */
  bytes = 0;
  dataBytes = 0;
  failure: Error | null = null;
  readonly done: Promise<void>;
  private stopping = false;
  private readonly started = Date.now();

  private constructor(
    private readonly target: WriteTarget,
    private readonly rng: Rng,
    private readonly o: WorkloadOptions,
  ) {
    const depth = o.depth ?? 4;
    this.done = Promise.all(Array.from({ length: depth }, () => this.lane())).then(() => undefined);
  }

  static start(target: WriteTarget, rng: Rng, options: WorkloadOptions): Workload {
    return new Workload(target, rng, options);
  }

  /** Stops issuing requests and waits for the ones in flight. */
  async stop(): Promise<void> {
    this.stopping = true;
    await this.done;
  }

  /** Throws the first request failure, if any. */
  expectClean(): void {
    if (this.failure) throw this.failure;
  }

  private finished(): boolean {
    return this.stopping || this.failure !== null || (this.o.totalBytes !== undefined && this.bytes >= this.o.totalBytes);
  }

  private async lane(): Promise<void> {
    while (!this.finished()) {
      await this.throttle();
      if (this.finished()) return;
      try {
        await this.one();
      } catch (err) {
        this.failure ??= err as Error;
        return;
      }
    }
  }

  private async throttle(): Promise<void> {
    const rate = this.o.rate ?? 0;
    if (rate <= 0) return;
    const due = this.started + (this.bytes / rate) * 1000;
    const wait = due - Date.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }

  private async one(): Promise<void> {
    const { rng, o } = this;
    const align = o.align ?? 4096;
    const base = o.offset ?? 0;
    const length = align * rng.between(1, Math.max(1, Math.floor((o.maxLength ?? 64 * 1024) / align)));
    const len = Math.min(length, o.length);
    const offset = base + align * rng.int(Math.floor((o.length - len) / align) + 1);
    const pick = rng.next();
    this.ops++;
    this.bytes += len;
    this.mark(offset, len);
    if (pick < (o.zeroes ?? 0)) await this.target.writeZeroes(offset, len);
    else if (pick < (o.zeroes ?? 0) + (o.trim ?? 0)) await this.target.trim(offset, len);
    else {
      this.dataBytes += len;
      await this.target.write(offset, rng.bytes(len), { fua: rng.chance(o.fua ?? 0) });
    }
    if (rng.chance(o.flush ?? 0)) await this.target.flush();
  }

  private mark(offset: number, length: number): void {
    const region = this.o.regionSize ?? 64 * 1024;
    for (let r = Math.floor(offset / region); r * region < offset + length; r++) this.regions.add(r);
  }
}

/** NVMe/TCP namespace as a WriteTarget (trim = Dataset Management deallocate). */
export function nvmeTarget(host: import('../../../../common/nvme-tcp/initiator').NvmeTcpHost, nsid: number): WriteTarget {
  return {
    write: (offset, data, options) => host.write(nsid, offset, data, options),
    writeZeroes: (offset, length) => host.writeZeroes(nsid, offset, length),
    trim: (offset, length) => host.deallocate(nsid, offset, length),
    flush: () => host.flush(nsid),
  };
}
