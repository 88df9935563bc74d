/**
 * Crash-consistency sampling (design.md §4): the hub's newest recovery point,
 * read at a random moment, must equal a replay of the agent's reference log up
 * to some recovery-point seal. The comparison itself is the product's checker
 * (agent checkReplica); this file feeds it incrementally.
 *
 * Sampling: the hub's "latest" NBD export resolves each READ against the
 * newest point at the time of that read (hub/recovery-volume.ts), so the
 * whole volume (<= 32 MiB, the NBD payload limit) is read in ONE request: the
 * sample is one point, never a mix. When the hub's latestPoint epoch is the
 * same before and after the read, the sample must match exactly that epoch.
 *
 * Incremental replay: the log only grows (the agent appends, across restarts),
 * and the hub's newest point never moves backwards (points are exposed only
 * once durable). So after a sample matched, the model is advanced to the
 * OLDEST matching seal and replay restarts there: later samples may match
 * that seal or a later one, never an earlier one. This keeps every check
 * proportional to the log written since, and additionally checks that the
 * served point is monotonic.
 */
import * as fs from 'node:fs';
import { checkReplica, RefEntry } from '../../../../agent';
import { NbdClient } from '../../../../common/nbd/client';
import { HubHandle, HubVolume, REGION, hubVolume } from '../../../helpers/e2e';

export interface CheckOutcome {
  ok: boolean;
  /** Epochs whose replay equals the replica (the checkpoint's epoch included when it matches). */
  matching: number[];
  minMismatches: number;
}

export class ReferenceChecker {
  private readonly logFd: number;
  private readonly dataFd: number;
  private logPos = 0;
  private partial = '';
  /** Entries after the checkpoint. */
  private entries: RefEntry[] = [];
  /** Model at the checkpoint (a recovery-point seal, or the initial content). */
  private model: Buffer;
  private modelEpoch = 0;
  checks = 0;

  constructor(
    readonly logFile: string,
    readonly size: number,
    readonly regionSize = REGION,
    base?: Buffer,
  ) {
    this.logFd = fs.openSync(logFile, 'r');
    this.dataFd = fs.openSync(`${logFile}.data`, 'r');
    this.model = Buffer.alloc(size);
    if (base) base.copy(this.model);
  }

  close(): void {
    fs.closeSync(this.logFd);
    fs.closeSync(this.dataFd);
  }

  /** Reads the complete lines appended since the last call (data first is not needed: LOG.data is written before its line). */
  private refresh(): void {
    const chunk = Buffer.alloc(1 << 20);
    for (;;) {
      const n = fs.readSync(this.logFd, chunk, 0, chunk.length, this.logPos);
      if (n === 0) break;
      this.logPos += n;
      const text = this.partial + chunk.toString('utf8', 0, n);
      const lines = text.split('\n');
      this.partial = lines.pop() ?? '';
      for (const line of lines) {
        if (line.length === 0) continue;
        // a kill -9 cannot tear a line (one write(2) each); anything garbled is a real defect
        this.entries.push(JSON.parse(line) as RefEntry);
      }
    }
  }

  private readonly data = (pos: number, length: number): Buffer => {
    const b = Buffer.alloc(length);
    let done = 0;
    while (done < length) {
      const n = fs.readSync(this.dataFd, b, done, length - done, pos + done);
      if (n === 0) throw new Error(`reference log data ends at ${pos + done}, entry wants ${pos + length}`);
      done += n;
    }
    return b;
  };

  /**
   * Checks `replica` against the log written so far. With `exactEpoch` only
   * that seal counts. On success the checkpoint moves to the oldest match.
   */
  check(replica: Buffer, exactEpoch?: number): CheckOutcome {
    this.refresh();
    this.checks++;
    const r = checkReplica(this.entries, this.data, replica, { size: this.size, regionSize: this.regionSize, base: this.model });
    // checkReplica reports the state before the first entry as epoch 0: that is our checkpoint
    const matching = r.matching.map((e) => (e === 0 ? this.modelEpoch : e));
    const ok = exactEpoch === undefined ? matching.length > 0 : matching.includes(exactEpoch);
    if (ok) this.advance(Math.min(...matching));
    return { ok, matching, minMismatches: r.minMismatches };
  }

  private advance(epoch: number): void {
    if (epoch === this.modelEpoch) return;
    const idx = this.entries.findIndex((e) => e.t === 's' && e.pt && e.ep === epoch);
    if (idx < 0) throw new Error(`internal: matched seal ${epoch} not in the log`);
    for (const e of this.entries.slice(0, idx)) {
      if (e.t !== 'w') continue;
      if (e.k === 'data') this.data(e.d ?? 0, e.len).copy(this.model, e.off);
      else this.model.fill(0, e.off, e.off + e.len);
    }
    this.entries = this.entries.slice(idx + 1);
    this.modelEpoch = epoch;
  }
}

export interface Sample {
  /** Epoch the sample was pinned to (hub latestPoint unchanged across the read), if known. */
  exactEpoch: number | undefined;
  matching: number[];
  /** A resync group was open on the hub for the whole read. */
  duringResync: boolean;
  readMs: number;
  checkMs: number;
}

export interface SampleStats {
  samples: number;
  duringResync: number;
  skipped: number;
}

export function newStats(): SampleStats {
  return { samples: 0, duringResync: 0, skipped: 0 };
}

/**
 * Reads the hub's newest recovery point of `volume` in one NBD request and
 * checks it. Returns null (counted as skipped) when the hub is down or has no
 * point yet; throws when the replica is not a replay prefix.
 */
export async function sampleHub(hub: HubHandle, checker: ReferenceChecker, stats: SampleStats, label: string, volume = 'v1'): Promise<Sample | null> {
  const status = (): Promise<HubVolume | null> => hubVolume(hub, volume).catch(() => null);
  const before = await status();
  if (!before?.latestPoint) return skip(stats);
  let replica: Buffer;
  const t0 = Date.now();
  try {
    const client = await NbdClient.connect({ host: '127.0.0.1', port: hub.nbd.port, exportName: volume });
    try {
      if (client.size !== checker.size || checker.size > client.maxPayload) {
        throw new Error(`sample needs one read of the whole ${client.size}-byte export (max payload ${client.maxPayload}, checker size ${checker.size})`);
      }
      replica = await client.read(0, checker.size);
    } finally {
      await client.close().catch(() => undefined);
    }
  } catch (err) {
    if ((err as Error).message.startsWith('sample needs')) throw err;
    return skip(stats); // hub went away mid-sample
  }
  const t1 = Date.now();
  const after = await status();
  const exactEpoch = after?.latestPoint && after.latestPoint.epoch === before.latestPoint.epoch ? before.latestPoint.epoch : undefined;
  const t2 = Date.now();
  const r = checker.check(replica, exactEpoch);
  const checkMs = Date.now() - t2;
  if (!r.ok) {
    const file = `${checker.logFile}.mismatch-${checker.checks}.img`;
    fs.writeFileSync(file, replica);
    throw new Error(
      `${label}: hub recovery point is not a replay of the reference log up to any seal` +
        `${exactEpoch !== undefined ? ` (pinned at epoch ${exactEpoch}; matching ${JSON.stringify(r.matching.slice(-5))})` : ''}; ` +
        `${r.minMismatches} regions differ at best (sample saved as ${file}; before ${JSON.stringify(before)}, after ${JSON.stringify(after)})`,
    );
  }
  // open before the read, and still open after it or not completed during it
  // (completing the group creates a point, so an unchanged point means still open)
  const duringResync = Boolean(before.resync?.active && (after?.resync?.active || exactEpoch !== undefined));
  stats.samples++;
  if (duringResync) stats.duringResync++;
  return { exactEpoch, matching: r.matching, duringResync, readMs: t1 - t0, checkMs };
}

function skip(stats: SampleStats): null {
  stats.skipped++;
  return null;
}
