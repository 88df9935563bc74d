/**
 * The hub's applier against its own journal, in this process: N random
 * 4 KiB writes (a recovery point every 64) are appended to a ReplicaStore
 * (durable, group-committed: the rate a hub can take them), then one
 * retention pass folds all of them into the base image. Under sustained load
 * with a full journal budget the applier has to keep up with appends, so the
 * ratio apply/append is the figure that matters (>= 1: it keeps up).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { silentLogger } from '../common/log';
import { ReplicaStore } from '../hub/replica-store';
import { VolumeMeta } from '../hub/volume-meta';
import { round2 } from './harness';

export interface ApplierResult {
  records: number;
  recordBytes: number;
  appendPerSecond: number;
  applyPerSecond: number;
  applyCpuSeconds: number;
  ratio: number;
}

const RECORD = 4096;

export async function measureApplier(dir: string, records: number, volumeSize: number): Promise<ApplierResult> {
  const d = path.join(dir, 'applier');
  const meta: VolumeMeta = {
    format: 1,
    name: 'applier',
    uuid: 'bench-applier',
    size: volumeSize,
    blockSize: 512,
    regionSize: 64 * 1024,
    generation: 1,
    agentId: 'bench',
    flags: { failedOver: false },
    createdMs: Date.now(),
  };
  const store = await ReplicaStore.create(d, meta, {
    logger: silentLogger,
    owner: 'bench',
    policy: { retentionMs: 3_600_000, journalBytes: 64 * 1024 ** 3 },
  });
  try {
    const data = Buffer.alloc(RECORD, 0x5a);
    const blocks = volumeSize / RECORD;
    let seq = 0;
    let epoch = 1;
    let pending: Promise<void>[] = [];
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < records; i++) {
      seq++;
      const offset = Math.floor(Math.random() * blocks) * RECORD;
      pending.push(store.appendWrite({ kind: 'data', origin: 'live', seq, epoch, offset, length: RECORD, timeMs: Date.now(), data, crc32c: 0 }));
      if (seq % 64 === 0 || i === records - 1) {
        pending.push(store.appendSeal({ epoch, lastSeq: seq, timeMs: Date.now(), reason: 'timer' }));
        epoch++;
      }
      if (pending.length >= 2048) {
        await Promise.all(pending);
        pending = [];
      }
    }
    await Promise.all(pending);
    const appendSeconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const t1 = process.hrtime.bigint();
    const cpu0 = process.cpuUsage();
    await store.runRetention(Date.now() + 10 * 3_600_000); // everything is older than the window
    const applySeconds = Number(process.hrtime.bigint() - t1) / 1e9;
    const cpu = process.cpuUsage(cpu0);
    if (store.stats.appliedRecords !== records) throw new Error(`applier applied ${store.stats.appliedRecords} of ${records} records`);
    const appendPerSecond = Math.round(records / appendSeconds);
    const applyPerSecond = Math.round(records / applySeconds);
    return {
      records,
      recordBytes: RECORD,
      appendPerSecond,
      applyPerSecond,
      applyCpuSeconds: round2((cpu.user + cpu.system) / 1e6),
      ratio: round2(applyPerSecond / appendPerSecond),
    };
  } finally {
    await store.close();
    fs.rmSync(d, { recursive: true, force: true });
  }
}
