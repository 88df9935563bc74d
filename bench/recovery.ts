/**
 * Recovery benchmark (issue 4), real rephub process on loopback:
 *
 * 1. view creation for a 10 GiB volume holding 1 GiB of journal: a scripted
 *    stream (bench/fake-stream.ts) does a zero initial sync, then 1 GiB of
 *    64 KiB writes at random 64 KiB-aligned offsets in the first 2 GiB, a
 *    recovery point every 64 writes; retention 24 h, so nothing is applied.
 *    POST /v1/views at the latest point and at a point in the middle: wall
 *    time of the request and the hub's own readyMs.
 * 2. read throughput of a view: qemu-img bench, 128 KiB sequential reads at
 *    QD8 over the first 1 GiB (about 40% of it lives in the journal) through
 *    the view's NBD export, vs nbdkit's file plugin over a flat file holding
 *    exactly the same bytes (the bench applies every write to it as well) -
 *    the replica's content without a journal - and vs the hub's "latest"
 *    export. Warm page cache, and cold (caches dropped) for view vs nbdkit.
 * 3. failback: agent and hub in sync, agent stopped, failover, X MiB written
 *    into the failover view in distinct 64 KiB regions, agent restarted,
 *    failback; shippedBytes / changedBytes and the time it took.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NbdClient } from '../common/nbd/client';
import { makeSparse, qemuImgBench, Result, startNbdkit, Workload } from './frontends';
import { FakeStream } from './fake-stream';
import { distinctBlocks, dropCaches, hubSynced, loadAvg, ProcSet, ratio, rng, round1, round2, sleep, startAgent, startHub, subdir } from './harness';
import type { Section, SectionOutput } from './sections';

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;
const REGION = 64 * 1024;
const VOLUME_SIZE = 10 * GiB;
const JOURNAL_BYTES = GiB;
const WRITE_SPAN = 2 * GiB;
const WRITES_PER_POINT = 64;
const FAILBACK_VOLUME = 256 * MiB;
const FAILBACK_REGIONS = 512; // 32 MiB

const READ: Workload = { name: '128k-seqread-qd8', write: false, size: 128 * 1024, depth: 8, count: 8192, step: 128 * 1024 };

interface ViewJson {
  id: string;
  readyMs: number;
  point: { epoch: number; seq: number };
  nbd: { uri: string; host: string; port: number; export: string } | null;
}

interface ViewTiming {
  at: string;
  wallMs: number;
  readyMs: number;
}

/** Streams the 10 GiB volume with 1 GiB of journal into the hub; mirrors the writes into `flat`. */
async function fillJournal(hubPort: number, flat: string, log: (s: string) => void): Promise<{ seconds: number; points: number }> {
  const stream = await FakeStream.connect(`ws://127.0.0.1:${hubPort}/v1/replicate`);
  const fd = fs.openSync(flat, 'r+');
  try {
    await stream.hello('rec', VOLUME_SIZE);
    await stream.zeroSync(VOLUME_SIZE);
    const pool = crypto.randomBytes(4 * MiB);
    const r = rng(11);
    const writes = JOURNAL_BYTES / REGION;
    const t0 = Date.now();
    let points = 0;
    for (let i = 0; i < writes; i++) {
      const offset = Math.floor(r() * (WRITE_SPAN / REGION)) * REGION;
      const start = ((i * 4096) % (pool.length - REGION)) & ~511;
      const data = pool.subarray(start, start + REGION);
      stream.write(offset, data);
      fs.writeSync(fd, data, 0, REGION, offset);
      if ((i + 1) % WRITES_PER_POINT === 0) {
        const e = stream.seal();
        points++;
        if (e > 16) await stream.waitAck(e - 16);
      }
    }
    await stream.waitAck(stream.seal());
    const seconds = (Date.now() - t0) / 1000;
    log(`  recovery: 1 GiB of journal streamed in ${seconds.toFixed(1)} s`);
    return { seconds, points: points + 1 };
  } finally {
    fs.closeSync(fd);
    await stream.close();
  }
}

async function createView(base: string, body: Record<string, unknown>): Promise<{ view: ViewJson; wallMs: number }> {
  const t0 = process.hrtime.bigint();
  const res = await fetch(`${base}/v1/views`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
  const wallMs = Number(process.hrtime.bigint() - t0) / 1e6;
  const json = (await res.json()) as ViewJson & { error?: string };
  if (res.status !== 201) throw new Error(`POST /v1/views: ${res.status} ${json.error ?? ''}`);
  return { view: json, wallMs: round1(wallMs) };
}

async function deleteView(base: string, id: string): Promise<void> {
  await fetch(`${base}/v1/views/${id}`, { method: 'DELETE' });
}

async function readBench(uri: string, target: string, cold: boolean): Promise<Result> {
  if (cold) dropCaches();
  return qemuImgBench(READ, uri, target);
}

interface ViewsResult {
  journal: { seconds: number; points: number; journalBytes: number };
  views: ViewTiming[];
  reads: Result[];
}

async function viewsAndReads(dir: string, log: (s: string) => void): Promise<ViewsResult> {
  const procs = new ProcSet();
  const d = subdir(dir, 'recovery');
  const flat = path.join(d, 'flat.img');
  makeSparse(flat, VOLUME_SIZE);
  try {
    const hub = await startHub(procs, path.join(d, 'hub'), 0, ['--retention', '24h', '--journal-bytes', '4G']);
    const fill = await fillJournal(hub.port, flat, log);
    const status = await hub.client.get<{ journalBytes: number }>('/v1/volumes/rec');
    const pts = (await hub.client.get<{ points: { epoch: number }[] }>('/v1/volumes/rec/points')).points;
    const mid = pts[Math.floor(pts.length / 2)]!.epoch;
    const views: ViewTiming[] = [];
    const latest = await createView(hub.base, { volume: 'rec', at: 'latest', kind: 'test' });
    views.push({ at: 'latest', wallMs: latest.wallMs, readyMs: round1(latest.view.readyMs) });
    const middle = await createView(hub.base, { volume: 'rec', at: String(mid), kind: 'test' });
    views.push({ at: `epoch ${mid} (middle)`, wallMs: middle.wallMs, readyMs: round1(middle.view.readyMs) });
    await deleteView(hub.base, middle.view.id);
    log(`  recovery: views ready in ${latest.view.readyMs} / ${middle.view.readyMs} ms`);
    const nbdkit = await startNbdkit(flat, d);
    const reads: Result[] = [];
    try {
      const viewUri = latest.view.nbd!.uri;
      const flatUri = `nbd://127.0.0.1:${nbdkit.port}`;
      for (const cold of [false, true]) {
        const tag = cold ? 'cold' : 'warm';
        reads.push(await readBench(flatUri, `nbdkit-flat-${tag}`, cold));
        reads.push(await readBench(viewUri, `view-${tag}`, cold));
      }
      if (hub.nbdPort !== null) reads.push(await readBench(`nbd://127.0.0.1:${hub.nbdPort}/rec`, 'hub-latest-warm', false));
    } finally {
      await nbdkit.stop();
      await deleteView(hub.base, latest.view.id);
    }
    return { journal: { seconds: round1(fill.seconds), points: fill.points, journalBytes: status.journalBytes }, views, reads };
  } finally {
    await procs.stopAll();
  }
}

interface FailbackResult {
  changedBytes: number;
  shippedBytes: number;
  agentDirtyBytes: number;
  ratio: number;
  seconds: number;
  state: string;
}

async function failback(dir: string, log: (s: string) => void): Promise<FailbackResult> {
  const procs = new ProcSet();
  const d = subdir(dir, 'failback');
  const file = path.join(d, 'vol.img');
  makeSparse(file, FAILBACK_VOLUME);
  try {
    const hub = await startHub(procs, path.join(d, 'hub'));
    let agent = await startAgent(procs, file, path.join(d, 'agent'), 'fb', hub.port);
    await hubSynced(hub, 'fb');
    await procs.stop(agent.proc);
    const fo = await hub.client.post<{ view: ViewJson }>('/v1/volumes/fb/failover', {});
    const nbd = await NbdClient.connect({ host: fo.view.nbd!.host, port: fo.view.nbd!.port, exportName: fo.view.nbd!.export });
    try {
      const buf = crypto.randomBytes(REGION);
      for (const b of distinctBlocks(FAILBACK_REGIONS, FAILBACK_VOLUME / REGION, 5)) await nbd.write(b * REGION, buf);
      await nbd.flush();
    } finally {
      await nbd.close();
    }
    log(`  failback: wrote ${(FAILBACK_REGIONS * REGION) / MiB} MiB into the failover view`);
    agent = await startAgent(procs, file, path.join(d, 'agent'), 'fb', hub.port);
    const t0 = Date.now();
    await hub.client.post('/v1/volumes/fb/failback', {});
    type Fb = { state: string; changedBytes: number; shippedBytes: number; agentDirtyBytes: number; error?: string };
    let fb: Fb = await hub.client.get<Fb>('/v1/volumes/fb/failback');
    while (fb.state !== 'done' && fb.state !== 'failed' && Date.now() - t0 < 180_000) {
      await sleep(100);
      fb = await hub.client.get<Fb>('/v1/volumes/fb/failback');
    }
    if (fb.state !== 'done') throw new Error(`failback ended in state ${fb.state}: ${fb.error ?? 'timeout'}`);
    return {
      changedBytes: fb.changedBytes,
      shippedBytes: fb.shippedBytes,
      agentDirtyBytes: fb.agentDirtyBytes,
      ratio: round2(fb.shippedBytes / fb.changedBytes),
      seconds: round2((Date.now() - t0) / 1000),
      state: fb.state,
    };
  } finally {
    await procs.stopAll();
  }
}

export async function benchRecovery(dir: string, log: (s: string) => void): Promise<SectionOutput> {
  const load: Record<string, number[]> = { start: loadAvg() };
  const vr = await viewsAndReads(dir, log);
  load.afterViews = loadAvg();
  const fb = await failback(dir, log);
  load.end = loadAvg();
  const rows: string[][] = [['metric', 'baseline', 'measured', 'ratio']];
  for (const v of vr.views) rows.push([`view ready, 10 GiB vol + 1 GiB journal, at ${v.at} (ms)`, '-', `${v.readyMs} (wall ${v.wallMs})`, '-']);
  const get = (t: string): Result => vr.reads.find((r) => r.target === t)!;
  for (const tag of ['warm', 'cold']) {
    const base = get(`nbdkit-flat-${tag}`);
    const view = get(`view-${tag}`);
    rows.push([`view read 128K QD8 MB/s (${tag} cache)`, `${base.mbps} (nbdkit flat file)`, String(view.mbps), ratio(view.mbps, base.mbps)]);
  }
  const latest = vr.reads.find((r) => r.target === 'hub-latest-warm');
  if (latest) rows.push(['hub latest export read MB/s (warm)', `${get('nbdkit-flat-warm').mbps} (nbdkit flat file)`, String(latest.mbps), ratio(latest.mbps, get('nbdkit-flat-warm').mbps)]);
  rows.push([`failback shipped / changed (${fb.seconds} s)`, `${round1(fb.changedBytes / MiB)} MiB changed`, `${round1(fb.shippedBytes / MiB)} MiB shipped`, `${fb.ratio.toFixed(2)}x`]);
  return { rows, json: { ...vr, failback: fb, loadavg: load } };
}

export const recoverySection: Section = {
  name: 'recovery',
  title: 'Recovery (issue 4): view creation, view reads, failback',
  run: benchRecovery,
};
