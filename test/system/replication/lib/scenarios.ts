/**
 * Randomised fault scenarios shared by the system tests (a few trials, CI
 * budget) and scripts/soak.ts (many trials). Each takes a Cluster (temp dir,
 * process ownership) and a seed; every random choice comes from that seed, so
 * a failure message naming the seed (and trial) replays the same schedule of
 * sizes, offsets and delays (timing on a busy machine still varies).
 *
 * Every scenario ends the way the issue demands: `repctl wait-synced`, then
 * `qemu-img compare` of the agent's volume file with the hub's NBD export,
 * then a crash-consistency sample pinned at the synced epoch. Along the way
 * the hub's newest recovery point is sampled at random moments (while writes
 * are in flight, while a peer is down, while a resync group is open) and
 * checked against the agent's reference log (lib/consistency.ts).
 */
import { NbdClient } from '../../../../common/nbd/client';
import {
  AgentHandle,
  Cluster,
  HubHandle,
  MiB,
  Rng,
  assertIdentical,
  bytesReceived,
  hubVolume,
  tail,
  waitConnected,
  waitSynced,
} from '../../../helpers/e2e';
import { FlakyProxy } from '../../../helpers/flaky-proxy';
import { sleep, waitFor } from '../../../helpers/wait-for';
import { ReferenceChecker, Sample, SampleStats, newStats, sampleHub } from './consistency';
import { Workload, WorkloadOptions } from './workload';

/** One NBD read covers the whole volume: keeps consistency samples single-point. */
export const SIZE = 16 * MiB;
export const EXTENT = 4 * MiB;

export interface ScenarioOptions {
  trials: number;
  seed: number;
  log?: (line: string) => void;
}

export interface ScenarioReport {
  seed: number;
  trials: number;
  samples: SampleStats;
  /** Per trial: payload bytes the hub received for the resync after the fault (agent-kill only). */
  resyncBytes: number[];
  elapsedMs: number;
}

interface Rig {
  cluster: Cluster;
  hub: HubHandle;
  agent: AgentHandle;
  checker: ReferenceChecker;
  stats: SampleStats;
  rng: Rng;
  log: (line: string) => void;
}

const volumeFile = (c: Cluster): string => c.path('v1.img');

async function setUp(cluster: Cluster, o: ScenarioOptions, agentExtra: { hubUrl?: (hub: HubHandle) => Promise<string>; resyncRate?: string } = {}): Promise<Rig> {
  const hub = await cluster.startHub();
  const agent = await cluster.startAgent({
    file: volumeFile(cluster),
    size: SIZE,
    stateDir: cluster.path('agent'),
    hubUrl: agentExtra.hubUrl ? await agentExtra.hubUrl(hub) : hub.url,
    referenceLog: cluster.path('ref.log'),
    resyncRate: agentExtra.resyncRate,
  });
  await waitSynced(hub);
  const checker = new ReferenceChecker(cluster.path('ref.log'), SIZE);
  const t0 = Date.now();
  const log = o.log ? (line: string) => o.log!(`[${((Date.now() - t0) / 1000).toFixed(2)}s] ${line}`) : () => undefined;
  return { cluster, hub, agent, checker, stats: newStats(), rng: new Rng(o.seed), log };
}

async function connectAgent(agent: AgentHandle): Promise<NbdClient> {
  return NbdClient.connect({ host: agent.nbd.host, port: agent.nbd.port, exportName: 'v1' });
}

/** Samples the hub now, tagging failures with the scenario's seed and trial. */
async function sample(rig: Rig, what: string): Promise<Sample | null> {
  const s = await sampleHub(rig.hub, rig.checker, rig.stats, what);
  rig.log(`${what}: sample ${s ? `epoch ${s.exactEpoch ?? '?'}${s.duringResync ? ' (resync group open)' : ''}, read ${s.readMs} ms, check ${s.checkMs} ms` : 'skipped'}`);
  return s;
}

/**
 * Samples up to `max` times while the hub shows an open resync group, until
 * one sample lands wholly inside it (the point readers see must stay the one
 * before the group). Returns the number of samples taken.
 */
async function sampleDuringResync(rig: Rig, what: string, max = 3): Promise<number> {
  let taken = 0;
  while (taken < max && (await hubVolume(rig.hub).catch(() => null))?.resync?.active) {
    taken++;
    if ((await sample(rig, `${what} #${taken}`))?.duringResync) break;
  }
  return taken;
}

/**
 * The common ending: synced, identical, and (if `pin`) the synced point is
 * exactly a logged seal. `quiet`: no write completed since the agent's session
 * began, so wait-synced needs no status settling time.
 */
async function converge(rig: Rig, what: string, pin = true, quiet = false): Promise<void> {
  try {
    await waitSynced(rig.hub, 'v1', 60, quiet ? 0 : 700);
    await assertIdentical(volumeFile(rig.cluster), rig.hub);
    if (!pin) return;
    const s = await sampleHub(rig.hub, rig.checker, rig.stats, `${what}: after wait-synced`);
    if (!s || s.exactEpoch === undefined) throw new Error(`${what}: could not pin a sample at the synced point`);
  } catch (err) {
    throw new Error(`${(err as Error).message}\n--- agent log tail ---\n${tail(rig.agent)}\n--- hub log tail ---\n${tail(rig.hub)}`);
  }
}

function report(rig: Rig, o: ScenarioOptions, started: number, resyncBytes: number[] = []): ScenarioReport {
  return { seed: o.seed, trials: o.trials, samples: { ...rig.stats }, resyncBytes, elapsedMs: Date.now() - started };
}

/** Fills the volume with seeded data so that a full copy would have to ship every byte. */
async function fill(rig: Rig): Promise<void> {
  const client = await connectAgent(rig.agent);
  try {
    const writes: Promise<void>[] = [];
    for (let off = 0; off < SIZE; off += MiB) writes.push(client.write(off, rig.rng.bytes(MiB)));
    await Promise.all(writes);
    await client.flush();
  } finally {
    await client.close();
  }
}

// ---- 1. kill -9 of the agent -------------------------------------------------

/**
 * Trials: writes in flight (queue depth 4) inside a fixed 4 MiB window ->
 * kill -9 at a random moment -> maybe sample while the agent is down ->
 * restart on the same state dir -> sample (usually inside the resync group,
 * which --resync-rate stretches) -> converge. The hub's payload byte counter
 * across the restart measures the resync: it must stay within the window's
 * activity extents, far below the volume size (the rest of the volume holds
 * data too, so a full copy would ship all of it).
 */
export async function agentKillScenario(cluster: Cluster, o: ScenarioOptions): Promise<ScenarioReport> {
  const started = Date.now();
  const rig = await setUp(cluster, o, { resyncRate: '4M' });
  const window = { offset: 2 * EXTENT, length: EXTENT };
  rig.log('set up');
  await fill(rig);
  rig.log('filled');
  await waitSynced(rig.hub);
  rig.log('fill synced');
  // the fill made every activity extent hot; a clean stop empties the hot set
  await cluster.stop(rig.agent, 'SIGTERM');
  rig.log('agent stopped');
  rig.agent = await cluster.restartAgent(rig.agent);
  await waitSynced(rig.hub);
  rig.log('restarted cleanly');
  const resyncBytes: number[] = [];
  try {
    for (let t = 0; t < o.trials; t++) {
      const tag = `agent-kill seed=${o.seed} trial=${t}`;
      const client = await connectAgent(rig.agent);
      const w = Workload.start(client, rig.rng, { ...window, depth: 4, maxLength: 128 * 1024, rate: 3 * MiB, flush: 0.02, fua: 0.02, zeroes: 0.03, trim: 0.02 });
      const killAt = rig.rng.between(300, 1500);
      // a sample racing the writes (and maybe the kill); its failure is rethrown below, never left unhandled
      let duringError: Error | null = null;
      const during = rig.rng.chance(0.5)
        ? sleep(rig.rng.int(killAt))
            .then(() => sample(rig, `${tag}: during writes`))
            .then(() => undefined, (err: Error) => void (duringError = err))
        : Promise.resolve();
      await sleep(killAt);
      // the kill lands while the initiator has requests outstanding
      await waitFor(() => client.inFlight > 0, { timeoutMs: 5000, intervalMs: 1, what: `${tag}: a write in flight` });
      const inFlight = client.inFlight;
      await cluster.stop(rig.agent, 'SIGKILL');
      await w.done;
      await client.close().catch(() => undefined);
      if (!w.failure) throw new Error(`${tag}: the workload did not notice the kill`);
      await during;
      if (duringError) throw duringError;
      rig.log(`${tag}: killed`);
      await waitConnected(rig.hub, false);
      const before = await bytesReceived(rig.hub);
      if (rig.rng.chance(0.3)) await sample(rig, `${tag}: agent down`);
      rig.agent = await cluster.restartAgent(rig.agent);
      rig.log(`${tag}: restarted`);
      const v = await waitFor(async () => {
        const x = await hubVolume(rig.hub);
        return x?.connected && (x.resync || x.synced) ? x : null;
      }, { timeoutMs: 30_000, intervalMs: 20, what: `${tag}: agent reconnected and resync begun` });
      rig.log(`${tag}: connected, resync ${JSON.stringify(v.resync)}`);
      if (v.resync?.full) throw new Error(`${tag}: the restart started a FULL sync`);
      if ((await sampleDuringResync(rig, `${tag}: resync after restart`)) === 0) await sample(rig, `${tag}: after restart`);
      await converge(rig, tag, t % 4 === 3 || t === o.trials - 1, true);
      rig.log(`${tag}: converged`);
      const shipped = (await bytesReceived(rig.hub)) - before;
      resyncBytes.push(shipped);
      rig.log(`${tag}: ${w.ops} writes (${(w.bytes / MiB).toFixed(1)} MiB), killed after ${killAt} ms with ${inFlight} in flight, resync shipped ${(shipped / MiB).toFixed(2)} MiB`);
    }
  } finally {
    rig.checker.close();
  }
  return report(rig, o, started, resyncBytes);
}

// ---- 2. kill -9 of the hub ---------------------------------------------------

/**
 * Writes run all the time across the whole volume. Trials: kill -9 the hub
 * at a random moment (often inside a resync group from the previous outage),
 * leave it down a little, restart it on the same data dir and ports, let the
 * agent reconnect by itself, and sample while the catch-up resync runs.
 */
export async function hubKillScenario(cluster: Cluster, o: ScenarioOptions): Promise<ScenarioReport> {
  const started = Date.now();
  const rig = await setUp(cluster, o, { resyncRate: '4M' });
  const client = await connectAgent(rig.agent);
  const w = Workload.start(client, rig.rng, { length: SIZE, depth: 4, maxLength: 128 * 1024, rate: 3 * MiB, flush: 0.02, fua: 0.02, zeroes: 0.03, trim: 0.02 });
  try {
    for (let t = 0; t < o.trials; t++) {
      const tag = `hub-kill seed=${o.seed} trial=${t}`;
      await sleep(rig.rng.between(300, 1500));
      if (rig.rng.chance(0.5)) await sample(rig, `${tag}: before the kill`);
      await cluster.stop(rig.hub, 'SIGKILL');
      rig.log(`${tag}: hub killed`);
      await sleep(rig.rng.between(0, 800));
      rig.hub = await cluster.restartHub(rig.hub);
      rig.log(`${tag}: hub restarted`);
      await waitConnected(rig.hub, true);
      rig.log(`${tag}: agent reconnected`);
      const wanted = rig.rng.between(1, 3);
      const taken = await sampleDuringResync(rig, `${tag}: catch-up resync`);
      for (let i = taken; i < wanted; i++) await sample(rig, `${tag}: after restart #${i}`);
      if (w.failure) throw new Error(`${tag}: a write through the agent failed while the hub was down: ${w.failure.message}`);
      rig.log(`${tag}: ${w.ops} writes so far, ${rig.stats.samples} samples (${rig.stats.duringResync} inside a resync group)`);
    }
    await w.stop();
    w.expectClean();
    await converge(rig, `hub-kill seed=${o.seed}`);
  } finally {
    await w.stop();
    await client.close().catch(() => undefined);
    rig.checker.close();
  }
  return report(rig, o, started);
}

// ---- 3. network faults between agent and hub --------------------------------

/**
 * The agent reaches the hub through a FlakyProxy (repctl and the samples talk
 * to the hub directly). Phases per trial, in seeded order: cut the
 * connections; add 50-200 ms of delay; flap the link. Writes never stop.
 */
export async function networkScenario(cluster: Cluster, o: ScenarioOptions): Promise<ScenarioReport & { connections: number }> {
  const started = Date.now();
  let proxy: FlakyProxy | null = null;
  let rig: Rig | null = null;
  let w: Workload | null = null;
  let client: NbdClient | null = null;
  try {
    rig = await setUp(cluster, o, {
      resyncRate: '4M', // catch-up resyncs last long enough to be sampled
      hubUrl: async (hub) => {
        proxy = await FlakyProxy.start({ port: hub.http.port });
        return `ws://127.0.0.1:${proxy.port}`;
      },
    });
    const p = proxy as unknown as FlakyProxy;
    const r = rig;
    client = await connectAgent(r.agent);
    w = Workload.start(client, r.rng, { length: SIZE, depth: 4, maxLength: 128 * 1024, rate: 3 * MiB, flush: 0.02, fua: 0.02, zeroes: 0.03, trim: 0.02 });
    for (let t = 0; t < o.trials; t++) {
      const phases = ['cut', 'delay', 'flap'];
      for (let i = phases.length - 1; i > 0; i--) {
        const j = r.rng.int(i + 1);
        [phases[i], phases[j]] = [phases[j]!, phases[i]!];
      }
      for (const phase of phases) {
        const tag = `network seed=${o.seed} trial=${t} phase=${phase}`;
        await networkPhase(r, p, phase, tag);
        if (w.failure) throw new Error(`${tag}: a write through the agent failed: ${w.failure.message}`);
        r.log(`${tag}: ${w.ops} writes so far, ${p.stats.connections} proxy connections, ${r.stats.samples} samples (${r.stats.duringResync} inside a resync group)`);
      }
    }
    p.flap(0);
    p.setDelay(0);
    await w.stop();
    w.expectClean();
    await converge(r, `network seed=${o.seed}`);
    return { ...report(r, o, started), connections: p.stats.connections };
  } finally {
    await w?.stop();
    await client?.close().catch(() => undefined);
    rig?.checker.close();
    await (proxy as FlakyProxy | null)?.close();
  }
}

async function networkPhase(rig: Rig, proxy: FlakyProxy, phase: string, tag: string): Promise<void> {
  const { rng } = rig;
  if (phase === 'cut') {
    for (let i = rng.between(2, 4); i > 0; i--) {
      await sleep(rng.between(200, 900));
      proxy.cut();
      if (rng.chance(0.5)) await sample(rig, `${tag}: after a cut`);
    }
  } else if (phase === 'delay') {
    for (let i = 0; i < 2; i++) {
      proxy.setDelay(rng.between(50, 200));
      await sleep(rng.between(400, 1000));
      await sample(rig, `${tag}: delayed link`);
    }
    proxy.setDelay(0);
  } else {
    proxy.flap(rng.between(300, 700), rng.between(150, 400));
    const until = Date.now() + rng.between(1500, 3000);
    while (Date.now() < until) {
      await sleep(rng.between(100, 600));
      await sample(rig, `${tag}: flapping link`);
    }
    proxy.flap(0);
  }
  // the link is healthy again: the agent reconnects and catches up while writes go on
  await waitConnected(rig.hub, true);
  if ((await sampleDuringResync(rig, `${tag}: catch-up resync`, 2)) === 0) await sample(rig, `${tag}: reconnected`);
}
