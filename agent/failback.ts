/**
 * FailbackClient: the agent side of failback (replication.proto, "failback").
 * The hub welcomes a fenced agent with sync mode 'failback' once an operator
 * asked for it; the volume is then rolled over to the recovery volume's
 * content before replication resumes from that common base.
 *
 *   Welcome{failback} -> pause initiator I/O (ReplicationFilter.pause) ->
 *   marker 'receiving' -> FailbackDirty (the whole dirty bitmap) ->
 *   FailbackData* written to the FileDevice below the filter (not tracked),
 *   FailbackAck after each -> FailbackEnd{G}: fdatasync, adopt generation G,
 *   marker 'applied' -> FailbackApplied -> FailbackDone{G}: clear the bitmap,
 *   persist identity + bitmap, remove the marker, resume initiator I/O; the
 *   replicator then runs the session as a RESUME at generation G.
 *
 * Marker STATE/volumes/NAME/failback.json (atomic JSON) is what makes a crash
 * safe: while it exists initiator I/O stays paused from agent start on,
 * because the volume is (or may be) partly rolled back and local writes made
 * now would be rolled back by a restarted failback.
 *  - 'receiving': the volume holds an unknown mix; bits are untouched. The
 *    next failback Welcome starts over (the writes are idempotent). If the hub
 *    welcomes normally instead (it gave up on the failback), the hub cannot
 *    know which regions changed: every region is marked for resend.
 *  - 'applied': the volume equals the recovery volume and generation G is
 *    persisted, so the Hello presents G. A RESUME Welcome at G means the hub
 *    committed (its FailbackDone was lost): drop the marker and go on (the old
 *    bits are resent: same content, harmless). A failback Welcome starts over.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockDevice } from '../common/block/device';
import { ReplError } from '../common/errors';
import { Logger } from '../common/log';
import { crc32c } from '../common/nvme-tcp/crc32c';
import { AgentMessage, FailbackRange, HubFailbackMessage, MAX_FAILBACK_RANGES, Welcome } from '../proto/codec';
import { IdentityStore, VolumeIdentity, writeJsonAtomic } from './identity';
import { RegionState } from './region-state';

export const FAILBACK_MARKER_FILE = 'failback.json';

export interface FailbackMarker {
  version: 1;
  state: 'receiving' | 'applied';
  /** Generation adopted ('applied') or held when the failback began. */
  generation: number;
  startedMs: number;
}

/** What the client needs from the ReplicationFilter. */
export interface InitiatorGate {
  pause(): Promise<void>;
  resume(): void;
}

export interface FailbackResult {
  generation: number;
  durableEpoch: number;
  durableSeq: number;
  appliedBytes: number;
}

export interface FailbackClientOptions {
  /** The volume's state directory (holds the marker). */
  dir: string;
  /** The device below the replication filter. */
  device: BlockDevice;
  regions: RegionState;
  identity: VolumeIdentity;
  identityStore: IdentityStore;
  persistBitmap(): Promise<void>;
  gate: InitiatorGate;
  link: FailbackLink;
  logger: Logger;
}

/** The part of the HubLink the client uses. */
export interface FailbackLink {
  send(m: AgentMessage): boolean;
  on(event: 'failback', listener: (m: HubFailbackMessage) => void): unknown;
  off(event: 'failback', listener: (m: HubFailbackMessage) => void): unknown;
}

export function readFailbackMarker(dir: string): FailbackMarker | null {
  let text: string;
  try {
    text = fs.readFileSync(path.join(dir, FAILBACK_MARKER_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ReplError.io(`cannot read failback marker in ${dir}`, err);
  }
  let m: Partial<FailbackMarker>;
  try {
    m = JSON.parse(text) as Partial<FailbackMarker>;
  } catch {
    m = {};
  }
  if (m.version !== 1 || (m.state !== 'receiving' && m.state !== 'applied') || !Number.isSafeInteger(m.generation)) {
    // unreadable: the volume may be half rolled back, the safe reading is 'receiving'
    return { version: 1, state: 'receiving', generation: 0, startedMs: 0 };
  }
  return m as FailbackMarker;
}

export class FailbackClient {
  private marker: FailbackMarker | null;
  private running = false;

  constructor(private readonly o: FailbackClientOptions) {
    this.marker = readFailbackMarker(o.dir);
    if (this.marker) {
      o.logger.warn({ volume: o.identity.name, marker: this.marker.state }, 'failback was in progress: initiator I/O held until it completes');
      void o.gate.pause();
    }
  }

  /** A failback is in progress (initiator I/O is held). */
  get pending(): FailbackMarker['state'] | null {
    return this.marker?.state ?? null;
  }

  private writeMarker(m: FailbackMarker | null): void {
    const file = path.join(this.o.dir, FAILBACK_MARKER_FILE);
    if (m) writeJsonAtomic(file, m);
    else fs.rmSync(file, { force: true });
    this.marker = m;
  }

  /** A RESUME/FULL Welcome arrived: settle a marker left by an earlier failback (see file header). */
  async onNormalWelcome(w: Welcome): Promise<void> {
    const m = this.marker;
    if (!m) return;
    if (m.state !== 'applied' || w.generation !== m.generation) {
      this.o.logger.warn({ volume: this.o.identity.name, marker: m.state }, 'failback abandoned by the hub: every region will be resent');
      this.o.regions.markAllForResend();
      await this.o.persistBitmap();
    }
    this.writeMarker(null);
    this.o.gate.resume();
  }

  /** Runs one failback on the current session; rejects when it cannot finish (the caller drops the session). */
  async run(welcome: Welcome, signal: AbortSignal): Promise<FailbackResult> {
    if (this.running) throw ReplError.internal('failback already running');
    this.running = true;
    const log = this.o.logger.child({ volume: this.o.identity.name });
    try {
      await this.o.gate.pause();
      if (signal.aborted) throw ReplError.closed('failback session');
      this.writeMarker({ version: 1, state: 'receiving', generation: this.o.identity.generation, startedMs: Date.now() });
      log.warn({ hubGeneration: welcome.generation, dirtyBytes: this.o.regions.bitmap.dirtyBytes() }, 'failback: initiator I/O held, receiving the recovery volume delta');
      const result = await this.receive(signal);
      log.info({ generation: result.generation, appliedBytes: result.appliedBytes }, 'failback complete: volume equals the recovery volume');
      return result;
    } finally {
      this.running = false;
    }
  }

  private sendDirty(): void {
    const bitmap = this.o.regions.bitmap;
    let batch: FailbackRange[] = [];
    for (const run of bitmap.extents()) {
      batch.push(bitmap.bytesOf(run.start, run.start + run.count));
      if (batch.length === MAX_FAILBACK_RANGES) {
        this.o.link.send({ type: 'failbackDirty', failbackDirty: { ranges: batch, last: false } });
        batch = [];
      }
    }
    this.o.link.send({ type: 'failbackDirty', failbackDirty: { ranges: batch, last: true } });
  }

  /** Handles the hub's messages one at a time, in order, until FailbackDone. */
  private receive(signal: AbortSignal): Promise<FailbackResult> {
    return new Promise<FailbackResult>((resolve, reject) => {
      const st = { begun: false, applied: 0, generation: 0 };
      let chain = Promise.resolve();
      let finished = false;
      const finish = (err: unknown, result?: FailbackResult): void => {
        if (finished) return;
        finished = true;
        this.o.link.off('failback', onMessage);
        signal.removeEventListener('abort', onAbort);
        if (err) reject(err);
        else resolve(result!);
      };
      const onMessage = (msg: HubFailbackMessage): void => {
        chain = chain
          .then(async () => {
            if (finished) return;
            const r = await this.handle(msg, st);
            if (r) finish(null, r);
          })
          .catch((err: unknown) => finish(err));
      };
      const onAbort = (): void => finish(ReplError.closed('failback session'));
      this.o.link.on('failback', onMessage);
      signal.addEventListener('abort', onAbort, { once: true });
      this.sendDirty();
    });
  }

  private async handle(msg: HubFailbackMessage, st: { begun: boolean; applied: number; generation: number }): Promise<FailbackResult | null> {
    const device = this.o.device;
    switch (msg.type) {
      case 'failbackBegin':
        st.begun = true;
        return null;
      case 'failbackData': {
        const d = msg.failbackData;
        if (!st.begun || st.generation !== 0) throw ReplError.protocol('failback data outside FailbackBegin..FailbackEnd');
        if (d.length === 0 || d.offset + d.length > device.info.size) throw ReplError.protocol(`failback data ${d.offset}+${d.length} outside the volume`);
        if (d.kind === 'data') {
          if (d.crc32c !== 0 && crc32c(d.data) !== d.crc32c) throw ReplError.protocol(`failback data at ${d.offset}: CRC32C mismatch`);
          await device.write(d.offset, d.data);
        } else {
          await device.writeZeroes(d.offset, d.length);
        }
        st.applied += d.length;
        this.o.link.send({ type: 'failbackAck', failbackAck: { appliedBytes: st.applied } });
        return null;
      }
      case 'failbackEnd': {
        const e = msg.failbackEnd;
        if (!st.begun) throw ReplError.protocol('FailbackEnd before FailbackBegin');
        if (e.shippedBytes !== st.applied) throw ReplError.protocol(`failback: hub shipped ${e.shippedBytes} bytes, ${st.applied} arrived`);
        if (e.generation <= 0) throw ReplError.protocol(`failback: generation ${e.generation}`);
        await device.flush();
        // generation first, then the marker naming it: a crash in between re-runs the failback
        this.o.identity.generation = e.generation;
        this.o.identityStore.saveVolume(this.o.identity);
        this.writeMarker({ version: 1, state: 'applied', generation: e.generation, startedMs: this.marker?.startedMs ?? Date.now() });
        st.generation = e.generation;
        this.o.link.send({ type: 'failbackApplied', failbackApplied: { generation: e.generation, appliedBytes: st.applied } });
        return null;
      }
      case 'failbackDone': {
        const d = msg.failbackDone;
        if (st.generation === 0 || d.generation !== st.generation) throw ReplError.protocol(`FailbackDone for generation ${d.generation}, applied ${st.generation}`);
        const bitmap = this.o.regions.bitmap;
        bitmap.clearRange(0, bitmap.regionCount);
        this.o.regions.resend.clearRange(0, bitmap.regionCount);
        this.o.identity.durableEpoch = Math.max(this.o.identity.durableEpoch, d.durableEpoch);
        this.o.identityStore.saveVolume(this.o.identity);
        await this.o.persistBitmap();
        this.writeMarker(null);
        this.o.gate.resume();
        return { generation: d.generation, durableEpoch: d.durableEpoch, durableSeq: d.durableSeq, appliedBytes: st.applied };
      }
    }
  }
}
