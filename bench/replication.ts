/**
 * Replication benchmark (issue 3 targets), real repagent + rephub processes
 * unless stated otherwise, all on loopback:
 *
 * 1. throughput with replication on vs off: the front-end workloads
 *    4k-randwrite-qd32 and 128k-seqwrite-qd8 (bench/frontends.ts) through
 *    qemu-img bench on the agent's NBD export; on = after the initial sync
 *    finished. Rounds alternate off/on; the best round of each counts (the
 *    machine is shared, the best round is the least disturbed one). Then the
 *    same rounds with the hub pinned to its own core (oneRound).
 * 2. agent fdatasyncs per 1000 writes, random and sequential (in-process
 *    agent, bench/replication-inproc.ts).
 * 3. replication lag per write at 50% of the measured max IOPS (in-process
 *    agent, hub process; plus hub in-process).
 * 4. resync efficiency: hub stopped, N distinct 64 KiB regions written, hub
 *    restarted; payload bytes the hub received / dirty bytes.
 * 5. the hub's applier: 4 KiB records folded into the base image per second,
 *    vs records appended per second (bench/applier.ts).
 * 6. initial sync MB/s of a 1 GiB file full of random data vs a plain
 *    sequential read of the same file, page cache dropped before each; and
 *    vs the disk's durable write rate (O_DIRECT + fdatasync), the ceiling.
 */
import * as path from 'node:path';
import { NbdClient } from '../common/nbd/client';
import { makeSparse, qemuImgBench, Result, WORKLOADS, Workload } from './frontends';
import {
  canPin, directWriteMBps, distinctBlocks, dropCaches, fillFile, hubSynced, loadAvg, pinProcess, ProcSet, ratio, round1, round2,
  scrapeCounter, sequentialReadMBps, sleep, startAgent, startHub, subdir,
} from './harness';
import { measureApplier } from './applier';
import { LagResult, measureLag, measureSyncs, SyncCounts } from './replication-inproc';
import type { Section, SectionOutput } from './sections';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const VOLUME_SIZE = GiB;
const ROUNDS = 2;
const LAG_SECONDS = 5;
const LAG_VOLUME_SIZE = 256 * MiB; // smaller: each lag run starts with its own initial sync
const OUTAGE_REGIONS = 1024; // 64 MiB in 64 KiB regions
const REGION = 64 * 1024;
const APPLIER_RECORDS = 100_000;

function workload(name: string): Workload {
  const w = WORKLOADS.find((x) => x.name === name);
  if (!w) throw new Error(`no workload ${name}`);
  return w;
}

const THROUGHPUT = [workload('4k-randwrite-qd32'), workload('128k-seqwrite-qd8')];

interface ThroughputRow {
  workload: string;
  off: Result;
  on: Result;
  offRuns: Result[];
  onRuns: Result[];
}

/**
 * pinned: the hub runs on CPU 1 and the agent and qemu-img share CPU 0, in
 * both modes. That stands in for a hub on another host: the ratio then shows
 * what replication costs the protected host's CPU, which is what the target
 * is about in a real deployment; unpinned, the hub competes for the same two
 * cores as the workload it replicates.
 */
async function oneRound(dir: string, round: number | `pinned-${number}`, replicate: boolean): Promise<Result[]> {
  const procs = new ProcSet();
  const d = subdir(dir, `tp-${replicate ? 'on' : 'off'}-${round}`);
  const file = path.join(d, 'vol.img');
  const pinned = typeof round === 'string';
  makeSparse(file, VOLUME_SIZE);
  try {
    const hub = replicate ? await startHub(procs, path.join(d, 'hub')) : null;
    if (hub && pinned) pinProcess(hub.proc.child.pid!, '1');
    const agent = await startAgent(procs, file, path.join(d, 'agent'), 'vol', hub?.port ?? null);
    if (pinned) pinProcess(agent.proc.child.pid!, '0');
    if (hub) await hubSynced(hub, 'vol');
    const out: Result[] = [];
    for (const w of THROUGHPUT) {
      const target = `replication-${replicate ? 'on' : 'off'}${pinned ? '-pinned' : ''}`;
      out.push(await qemuImgBench(w, `nbd://127.0.0.1:${agent.nbdPort}/vol`, target, pinned ? '0' : undefined));
      if (hub) await hubSynced(hub, 'vol'); // the next workload starts from an idle, synced stream
    }
    return out;
  } finally {
    await procs.stopAll();
  }
}

async function throughput(dir: string, log: (s: string) => void): Promise<ThroughputRow[]> {
  const runs: Record<'on' | 'off', Result[]> = { on: [], off: [] };
  for (let r = 0; r < ROUNDS; r++) {
    for (const mode of ['off', 'on'] as const) {
      runs[mode].push(...(await oneRound(dir, r, mode === 'on')));
      log(`  throughput round ${r + 1} replication ${mode} done (load ${loadAvg()[0]})`);
    }
  }
  return rows(runs);
}

function rows(runs: Record<'on' | 'off', Result[]>): ThroughputRow[] {
  const best = (rs: Result[]): Result => rs.reduce((a, b) => (b.iops > a.iops ? b : a));
  return THROUGHPUT.map((w) => {
    const offRuns = runs.off.filter((x) => x.workload === w.name);
    const onRuns = runs.on.filter((x) => x.workload === w.name);
    return { workload: w.name, off: best(offRuns), on: best(onRuns), offRuns, onRuns };
  });
}

/** Alternating off/on rounds with the hub on its own core (oneRound); null where taskset or a second CPU is missing. */
async function pinnedThroughput(dir: string, log: (s: string) => void): Promise<ThroughputRow[] | null> {
  if (!canPin()) {
    log('  pinned round skipped (no taskset or a single CPU)');
    return null;
  }
  const runs: Record<'on' | 'off', Result[]> = { on: [], off: [] };
  for (let r = 0; r < ROUNDS; r++) {
    for (const mode of ['off', 'on'] as const) {
      runs[mode].push(...(await oneRound(dir, `pinned-${r}`, mode === 'on')));
      log(`  throughput round ${r + 1}, hub on its own core, replication ${mode} done`);
    }
  }
  return rows(runs);
}

interface ResyncResult {
  dirtyBytes: number;
  reportedDirtyBytes: number | null;
  shippedBytes: number;
  ratio: number;
  resyncSeconds: number;
}

async function resyncAfterOutage(dir: string, log: (s: string) => void): Promise<ResyncResult> {
  const procs = new ProcSet();
  const d = subdir(dir, 'outage');
  const file = path.join(d, 'vol.img');
  makeSparse(file, VOLUME_SIZE);
  try {
    let hub = await startHub(procs, path.join(d, 'hub'));
    const agent = await startAgent(procs, file, path.join(d, 'agent'), 'vol', hub.port);
    await hubSynced(hub, 'vol');
    await procs.stop(hub.proc);
    const blocks = distinctBlocks(OUTAGE_REGIONS, VOLUME_SIZE / REGION, 7);
    const nbd = await NbdClient.connect({ host: '127.0.0.1', port: agent.nbdPort, exportName: 'vol' });
    try {
      const buf = Buffer.alloc(REGION, 0x3c);
      let next = 0;
      const worker = async (): Promise<void> => {
        while (next < blocks.length) await nbd.write(blocks[next++]! * REGION, buf);
      };
      await Promise.all(Array.from({ length: 8 }, worker));
      await nbd.flush();
    } finally {
      await nbd.close();
    }
    log(`  outage: wrote ${(OUTAGE_REGIONS * REGION) / MiB} MiB in ${OUTAGE_REGIONS} distinct regions with the hub down`);
    const t0 = Date.now();
    hub = await startHub(procs, path.join(d, 'hub'), hub.port);
    let reported: number | null = null;
    for (let i = 0; i < 200 && reported === null; i++) {
      const v = await hub.client.get<{ agent: { dirtyBytes: number } | null }>('/v1/volumes/vol').catch(() => null);
      if (v?.agent) reported = v.agent.dirtyBytes;
      else await sleep(20);
    }
    await hubSynced(hub, 'vol');
    const resyncSeconds = (Date.now() - t0) / 1000;
    const shipped = await scrapeCounter(hub, 'rephub_bytes_received_total', 'vol');
    const dirty = OUTAGE_REGIONS * REGION;
    return { dirtyBytes: dirty, reportedDirtyBytes: reported, shippedBytes: shipped, ratio: round2(shipped / dirty), resyncSeconds: round2(resyncSeconds) };
  } finally {
    await procs.stopAll();
  }
}

interface InitialSyncResult {
  bytes: number;
  readSeconds: number;
  readMBps: number;
  syncSeconds: number;
  syncMBps: number;
  shippedBytes: number;
  cacheDropped: boolean;
  /** The disk's own durable sequential write rate (directWriteMBps), the ceiling for any replica. */
  diskWriteMBps: number;
  diskWriteDirect: boolean;
}

async function initialSync(dir: string): Promise<InitialSyncResult> {
  const procs = new ProcSet();
  const d = subdir(dir, 'initial');
  const file = path.join(d, 'vol.img');
  fillFile(file, VOLUME_SIZE);
  try {
    const dropped = dropCaches();
    const read = sequentialReadMBps(file);
    const disk = directWriteMBps(path.join(d, 'disk-probe.img'), VOLUME_SIZE);
    dropCaches();
    const hub = await startHub(procs, path.join(d, 'hub'));
    const t0 = process.hrtime.bigint();
    await startAgent(procs, file, path.join(d, 'agent'), 'vol', hub.port);
    await hubSynced(hub, 'vol');
    const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
    const shipped = await scrapeCounter(hub, 'rephub_bytes_received_total', 'vol');
    return {
      bytes: VOLUME_SIZE,
      readSeconds: round2(read.seconds),
      readMBps: read.mbps,
      syncSeconds: round2(seconds),
      syncMBps: round1(VOLUME_SIZE / seconds / 1e6),
      shippedBytes: shipped,
      cacheDropped: dropped,
      diskWriteMBps: disk.mbps,
      diskWriteDirect: disk.direct,
    };
  } finally {
    await procs.stopAll();
  }
}

/** Syncs and lag share one hub process. */
async function inProcessParts(dir: string, lagIops: number, log: (s: string) => void): Promise<{ syncs: SyncCounts[]; lag: LagResult[] }> {
  const procs = new ProcSet();
  const d = subdir(dir, 'inproc');
  try {
    const hub = await startHub(procs, path.join(d, 'hub'));
    const syncs = await measureSyncs(d, VOLUME_SIZE, hub.port, THROUGHPUT, log);
    log(`  lag: paced 4 KiB writes at ${Math.round(lagIops)} IOPS for ${LAG_SECONDS} s`);
    const lag = await measureLag(d, LAG_VOLUME_SIZE, hub.port, lagIops, LAG_SECONDS, true);
    return { syncs, lag };
  } finally {
    await procs.stopAll();
  }
}

export async function benchReplication(dir: string, log: (s: string) => void): Promise<SectionOutput> {
  const load: Record<string, number[]> = { start: loadAvg() };
  const tp = await throughput(dir, log);
  const pinned = await pinnedThroughput(dir, log);
  load.afterThroughput = loadAvg();
  const maxIops = tp[0]!.on.iops;
  const { syncs, lag } = await inProcessParts(dir, maxIops / 2, log);
  load.afterLag = loadAvg();
  const resync = await resyncAfterOutage(dir, log);
  log(`  resync after outage: ${resync.shippedBytes} bytes shipped for ${resync.dirtyBytes} dirty`);
  const applier = await measureApplier(dir, APPLIER_RECORDS, VOLUME_SIZE);
  log(`  applier: ${applier.applyPerSecond} records/s applied, ${applier.appendPerSecond} records/s appended`);
  const init = await initialSync(dir);
  log(`  initial sync: ${init.syncMBps} MB/s vs read ${init.readMBps} MB/s`);
  load.end = loadAvg();

  const rows: string[][] = [['metric', 'replication off / baseline', 'replication on / measured', 'ratio', 'target', 'met']];
  const rand = tp[0]!;
  const seq = tp[1]!;
  const randRatio = rand.on.iops / rand.off.iops;
  const seqRatio = seq.on.mbps / seq.off.mbps;
  rows.push(['4k randwrite QD32 IOPS', String(rand.off.iops), String(rand.on.iops), ratio(rand.on.iops, rand.off.iops), '>= 0.90x', yes(randRatio >= 0.9)]);
  rows.push(['128k seqwrite QD8 MB/s', String(seq.off.mbps), String(seq.on.mbps), ratio(seq.on.mbps, seq.off.mbps), '>= 0.95x', yes(seqRatio >= 0.95)]);
  if (pinned) {
    const [r, q] = [pinned[0]!, pinned[1]!];
    rows.push(['  same, hub on its own core: 4k IOPS', String(r.off.iops), String(r.on.iops), ratio(r.on.iops, r.off.iops), '(>= 0.90x)', '-']);
    rows.push(['  same, hub on its own core: 128k MB/s', String(q.off.mbps), String(q.on.mbps), ratio(q.on.mbps, q.off.mbps), '(>= 0.95x)', '-']);
  }
  for (const l of lag) {
    rows.push([`lag p50/p99 ms (hub ${l.hub}, ${l.achievedIops} IOPS)`, '-', `${l.p50ms} / ${l.p99ms}`, '-', 'p99 <= 50 ms', yes(l.p99ms <= 50)]);
    rows.push([`  hub seal->ack mean ms / agent max queue`, '-', `${l.hubAckMeanMs ?? '?'} / ${round1(l.maxQueueBytes / MiB)} MiB`, '-', '-', '-']);
  }
  for (const s of syncs) rows.push([`agent fsyncs / 1000 writes (${s.workload})`, '-', String(s.perThousand), '-', '-', '-']);
  rows.push(['resync bytes / dirty bytes', `${resync.dirtyBytes / MiB} MiB`, `${round1(resync.shippedBytes / MiB)} MiB`, `${resync.ratio.toFixed(2)}x`, '<= 1.1x', yes(resync.ratio <= 1.1)]);
  rows.push([
    'hub applier, 4 KiB records/s (vs appends)',
    `${applier.appendPerSecond} (append)`,
    String(applier.applyPerSecond),
    `${applier.ratio.toFixed(2)}x`,
    '-',
    '-',
  ]);
  const initRatio = init.syncMBps / init.readMBps;
  rows.push(['initial sync MB/s (1 GiB random data)', `${init.readMBps} (seq read)`, String(init.syncMBps), ratio(init.syncMBps, init.readMBps), '>= 0.80x', yes(initRatio >= 0.8)]);
  rows.push([
    '  same vs the disk\'s durable write rate',
    `${init.diskWriteMBps} (${init.diskWriteDirect ? 'O_DIRECT' : 'buffered'} + fdatasync)`,
    String(init.syncMBps),
    ratio(init.syncMBps, init.diskWriteMBps),
    '-',
    '-',
  ]);
  return {
    rows,
    json: {
      throughput: tp.map(withRatio),
      throughputHubOwnCore: pinned?.map(withRatio) ?? null,
      lag,
      fsyncs: syncs,
      resync,
      applier,
      initialSync: { ...init, ratio: round2(initRatio) },
      loadavg: load,
    },
  };
}

/** A throughput row with its on/off ratio: IOPS for the 4k workload, MB/s for the 128k one. */
function withRatio(t: ThroughputRow): ThroughputRow & { ratio: number } {
  return { ...t, ratio: round2(t.workload.startsWith('4k') ? t.on.iops / t.off.iops : t.on.mbps / t.off.mbps) };
}

function yes(ok: boolean): string {
  return ok ? 'yes' : 'NO';
}

export const replicationSection: Section = {
  name: 'replication',
  title: 'Replication (issue 3): on vs off, lag, fsyncs, resync, initial sync',
  run: benchReplication,
};
