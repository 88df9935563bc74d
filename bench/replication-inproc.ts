/**
 * Replication measurements that need the agent in this process:
 *
 * - fdatasyncs per 1000 writes: fs.fdatasync / fs.fsyncSync are wrapped with
 *   counters while qemu-img bench drives the in-process agent's NBD export
 *   (the hub runs elsewhere, so every call counted is the agent's: activity
 *   log group commits, flush/FUA, bitmap and identity saves).
 * - replication lag (RPO) per write: a paced open-loop writer issues 4 KiB
 *   aligned writes through agent.device() (one record each, seq assigned in
 *   completion order), timestamps each completion and each 'ack' event; the
 *   hub's recovery point list (epoch -> last seq) maps a write's seq to the
 *   epoch that first contains it; lag = ack time of that epoch - completion.
 */
import * as path from 'node:path';
import fs = require('node:fs');
import { performance } from 'node:perf_hooks';
import { createAgent, Agent } from '../agent';
import { createHub, Hub } from '../hub';
import { HubClient } from '../cli/hub-client';
import { waitSynced } from '../cli/commands/status';
import { createLogger } from '../common/log';
import { freePort } from '../cli/procs';
import { qemuImgBench, Workload, makeSparse } from './frontends';
import { httpText, percentile, round1, round2, sleep, subdir } from './harness';

const logger = createLogger({ level: 'warn', name: 'bench' });

export interface SyncCounts {
  workload: string;
  writes: number;
  fdatasync: number;
  fsyncSync: number;
  perThousand: number;
  hubFsyncsPerThousand: number | null;
}

export interface LagResult {
  hub: 'process' | 'in-process';
  targetIops: number;
  achievedIops: number;
  writes: number;
  p50ms: number;
  p90ms: number;
  p99ms: number;
  maxms: number;
  /** Lag to the hub's durable ack (seq), not yet a recovery point. */
  durableP50ms: number;
  durableP99ms: number;
  /** Mean hub time from receiving a Seal to sending its Ack (journal group commit), from /metrics. */
  hubAckMeanMs: number | null;
  /** Largest agent send-queue backlog seen during the run (bytes not yet written to the socket). */
  maxQueueBytes: number;
  seqCheck: boolean;
}

/** Counts fs.fdatasync and fs.fsyncSync calls while `fn` runs. */
export async function countSyncs<T>(fn: () => Promise<T>): Promise<{ value: T; fdatasync: number; fsyncSync: number }> {
  // the raw module object (import = require), not an esModuleInterop copy, so the wrappers are seen by every importer
  const m = fs as { fdatasync: typeof fs.fdatasync; fsyncSync: typeof fs.fsyncSync };
  const origAsync = m.fdatasync;
  const origSync = m.fsyncSync;
  let fdatasync = 0;
  let fsyncSync = 0;
  m.fdatasync = ((...args: Parameters<typeof fs.fdatasync>) => {
    fdatasync++;
    return origAsync(...args);
  }) as typeof fs.fdatasync;
  m.fsyncSync = ((fd: number) => {
    fsyncSync++;
    return origSync(fd);
  }) as typeof fs.fsyncSync;
  try {
    const value = await fn();
    return { value, fdatasync, fsyncSync };
  } finally {
    m.fdatasync = origAsync;
    m.fsyncSync = origSync;
  }
}

interface InProc {
  name: string;
  agent: Agent;
  client: HubClient;
  nbdPort: number;
  stop(): Promise<void>;
}

/**
 * Starts an in-process agent on a fresh sparse volume replicating to `hubBase`
 * (ws URL derived) and waits for the initial sync.
 */
async function startInProcAgent(dir: string, name: string, volumeSize: number, hubPort: number): Promise<InProc> {
  const file = path.join(dir, `${name}.img`);
  makeSparse(file, volumeSize);
  const agent = createAgent({
    stateDir: subdir(dir, `${name}-agent-state`),
    volumes: [{ name, path: file }],
    nvmeListen: null,
    nbdListen: { host: '127.0.0.1', port: 0 },
    hub: { url: `ws://127.0.0.1:${hubPort}/v1/replicate`, ackMode: 'async', queueBytes: 256 * 1024 * 1024, resyncRate: 0, regionSize: 64 * 1024 },
    logger,
  });
  const st = await agent.start();
  const client = new HubClient({ baseUrl: `http://127.0.0.1:${hubPort}` });
  try {
    await waitSynced(client, name, 300_000);
  } catch (err) {
    await agent.stop();
    throw err;
  }
  return { name, agent, client, nbdPort: st.nbd!.port, stop: () => agent.stop() };
}

async function hubFsyncs(hubPort: number, volume: string): Promise<number | null> {
  try {
    const text = await httpText(`http://127.0.0.1:${hubPort}/metrics`);
    const line = text.split('\n').find((l) => l.startsWith('rephub_fsyncs_total{') && l.includes(`volume="${volume}"`));
    return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
  } catch {
    return null;
  }
}

/** [sum seconds, count] of the hub's ack latency histogram for `volume`. */
async function ackLatency(hubPort: number, volume: string): Promise<[number, number] | null> {
  try {
    const text = await httpText(`http://127.0.0.1:${hubPort}/metrics`);
    const pick = (name: string): number => {
      const line = text.split('\n').find((l) => l.startsWith(`${name}{`) && l.includes(`volume="${volume}"`));
      return line ? Number(line.slice(line.lastIndexOf(' ') + 1)) : 0;
    };
    return [pick('rephub_ack_latency_seconds_sum'), pick('rephub_ack_latency_seconds_count')];
  } catch {
    return null;
  }
}

/** fdatasyncs per 1000 writes on the agent for each workload (hub is a separate process on `hubPort`). */
export async function measureSyncs(dir: string, volumeSize: number, hubPort: number, workloads: Workload[], log: (s: string) => void): Promise<SyncCounts[]> {
  const ip = await startInProcAgent(dir, 'syncs', volumeSize, hubPort);
  const out: SyncCounts[] = [];
  try {
    for (const w of workloads) {
      const hub0 = await hubFsyncs(hubPort, ip.name);
      const r = await countSyncs(() => qemuImgBench(w, `nbd://127.0.0.1:${ip.nbdPort}/${ip.name}`, 'inproc'));
      await waitSynced(ip.client, ip.name, 120_000);
      const hub1 = await hubFsyncs(hubPort, ip.name);
      const total = r.fdatasync + r.fsyncSync;
      out.push({
        workload: w.name,
        writes: w.count,
        fdatasync: r.fdatasync,
        fsyncSync: r.fsyncSync,
        perThousand: round2((total / w.count) * 1000),
        hubFsyncsPerThousand: hub0 !== null && hub1 !== null ? round2(((hub1 - hub0) / w.count) * 1000) : null,
      });
      log(`  fsync count ${w.name}: agent ${total} (${r.fdatasync} fdatasync + ${r.fsyncSync} fsync) for ${w.count} writes`);
    }
  } finally {
    await ip.stop();
  }
  return out;
}

/** Paced open-loop 4 KiB writer; returns completion times (ms, performance.now) in completion order. */
async function pacedWrites(ip: InProc, volumeSize: number, iops: number, seconds: number): Promise<{ done: number[]; elapsed: number }> {
  const dev = ip.agent.device(ip.name);
  const blocks = volumeSize / 4096;
  const buf = Buffer.alloc(4096, 0xa5);
  const total = Math.round(iops * seconds);
  const done: number[] = [];
  let issued = 0;
  let inflight = 0;
  let failure: unknown = null;
  let x = 0x9e3779b9;
  const t0 = performance.now();
  while (issued < total && !failure) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) / 1000) * iops));
    for (; issued < due && inflight < 1024; issued++) {
      x ^= x << 13;
      x ^= x >>> 17;
      x ^= x << 5;
      inflight++;
      dev.write(((x >>> 0) % blocks) * 4096, buf).then(
        () => {
          done.push(performance.now());
          inflight--;
        },
        (err) => (failure = err),
      );
    }
    await sleep(1);
  }
  while (inflight > 0 && !failure) await sleep(1);
  if (failure) throw failure;
  return { done, elapsed: (performance.now() - t0) / 1000 };
}

/** Per-write lag at `iops` (paced) with the hub on `hubPort`. */
async function lagRun(dir: string, volumeSize: number, hubPort: number, iops: number, seconds: number, hub: LagResult['hub']): Promise<LagResult> {
  const ip = await startInProcAgent(dir, `lag-${hub}`, volumeSize, hubPort);
  try {
    await sleep(300); // let the post-sync status/ack settle
    const base = ip.agent.status().volumes[0]!.replication!.lastAckedSeq;
    const acks: { epoch: number; seq: number; t: number }[] = [];
    const onEvent = (e: { type: string; epoch?: number; seq?: number }): void => {
      if (e.type === 'ack') acks.push({ epoch: e.epoch!, seq: e.seq!, t: performance.now() });
    };
    ip.agent.on('event', onEvent as never);
    const ack0 = await ackLatency(hubPort, ip.name);
    let maxQueueBytes = 0;
    const sampler = setInterval(() => (maxQueueBytes = Math.max(maxQueueBytes, ip.agent.status().volumes[0]!.replication!.queueBytes)), 5);
    const { done, elapsed } = await pacedWrites(ip, volumeSize, iops, seconds).finally(() => clearInterval(sampler));
    const lastSeq = base + done.length;
    const deadline = Date.now() + 30_000;
    while (ip.agent.status().volumes[0]!.replication!.lastAckedSeq < lastSeq && Date.now() < deadline) await sleep(5);
    await sleep(100);
    ip.agent.off('event', onEvent as never);
    const ack1 = await ackLatency(hubPort, ip.name);
    const hubAckMeanMs = ack0 && ack1 && ack1[1] > ack0[1] ? round1(((ack1[0] - ack0[0]) / (ack1[1] - ack0[1])) * 1000) : null;
    const pts = (await ip.client.get<{ points: { epoch: number; seq: number }[] }>(`/v1/volumes/${ip.name}/points`)).points;
    const pointSeqs = pts.filter((p) => p.seq > base).sort((a, b) => a.epoch - b.epoch);
    const ackByEpoch = new Map<number, number>();
    for (const a of acks) if (!ackByEpoch.has(a.epoch)) ackByEpoch.set(a.epoch, a.t);
    const lags: number[] = [];
    const durable: number[] = [];
    let pi = 0;
    let ai = 0;
    for (let k = 0; k < done.length; k++) {
      const seq = base + 1 + k;
      while (pi < pointSeqs.length && pointSeqs[pi]!.seq < seq) pi++;
      const p = pointSeqs[pi];
      // acks are cumulative: the first ack at or after the point's epoch covers it
      const at = p ? firstAckAtOrAfter(acks, p.epoch, ackByEpoch) : undefined;
      if (at !== undefined) lags.push(at - done[k]!);
      while (ai < acks.length && acks[ai]!.seq < seq) ai++;
      if (ai < acks.length) durable.push(acks[ai]!.t - done[k]!);
    }
    lags.sort((a, b) => a - b);
    durable.sort((a, b) => a - b);
    const maxPointSeq = pointSeqs.length ? pointSeqs[pointSeqs.length - 1]!.seq : base;
    return {
      hub,
      targetIops: Math.round(iops),
      achievedIops: Math.round(done.length / elapsed),
      writes: lags.length,
      p50ms: round1(percentile(lags, 50)),
      p90ms: round1(percentile(lags, 90)),
      p99ms: round1(percentile(lags, 99)),
      maxms: round1(lags[lags.length - 1] ?? NaN),
      durableP50ms: round1(percentile(durable, 50)),
      durableP99ms: round1(percentile(durable, 99)),
      hubAckMeanMs,
      maxQueueBytes,
      seqCheck: maxPointSeq === lastSeq && lags.length === done.length,
    };
  } finally {
    await ip.stop();
  }
}

function firstAckAtOrAfter(acks: { epoch: number; t: number }[], epoch: number, exact: Map<number, number>): number | undefined {
  const t = exact.get(epoch);
  if (t !== undefined) return t;
  return acks.find((a) => a.epoch >= epoch)?.t;
}

/** Lag with the hub as a separate process (hubPort) and, when `inProcessHub`, with createHub in this process. */
export async function measureLag(dir: string, volumeSize: number, hubPort: number, iops: number, seconds: number, inProcessHub: boolean): Promise<LagResult[]> {
  const out = [await lagRun(subdir(dir, 'lag-p'), volumeSize, hubPort, iops, seconds, 'process')];
  if (inProcessHub) {
    const port = await freePort();
    const hub: Hub = createHub({ listen: { host: '127.0.0.1', port }, dataDir: subdir(dir, 'lag-hub'), nbdListen: null, logger });
    try {
      const ports = await hub.start();
      out.push(await lagRun(subdir(dir, 'lag-i'), volumeSize, ports.httpPort, iops, seconds, 'in-process'));
    } finally {
      await hub.stop();
    }
  }
  return out;
}
