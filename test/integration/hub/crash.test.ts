/**
 * kill -9 of a hub child process at random moments while a fake agent streams
 * writes and seals; after every kill the replica is reopened and checked:
 *  - every epoch the hub acked is still a recovery point;
 *  - every recovery point equals the agent's volume as of that seal (naive model).
 * The fake agent then reconnects to a restarted hub and, like the real agent,
 * resends (inside a resync group) every region written since its last ack.
 * Seeded: the seed is printed on failure.
 */
import { ChildProcess } from 'node:child_process';
import * as path from 'node:path';
import { silentLogger } from '../../../common/log';
import { RecoveryVolume } from '../../../hub/recovery-volume';
import { ReplicaStore } from '../../../hub/replica-store';
import { FakeAgent, makeHello } from '../../helpers/fake-agent';
import { killHard, spawnTs } from '../../helpers/run-ts';
import { useTmpDir } from '../../helpers/tmpdir';

const SIZE = 128 * 1024;
const REGION = 16 * 1024;
const ROUNDS = 5;
const tmp = useTmpDir('hub-crash-');
let child: ChildProcess | null = null;

afterEach(async () => {
  if (child) await killHard(child);
  child = null;
});

function rng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) / 0x100000000;
  };
}

async function startChild(dataDir: string): Promise<number> {
  const proc = spawnTs(path.join(__dirname, 'hub-child.ts'), [dataDir, JSON.stringify({ segmentBytes: 17 * 1024 * 1024 })]);
  child = proc;
  return new Promise((resolve, reject) => {
    let out = '';
    let err = '';
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /READY (.*)\n/.exec(out);
      if (m) resolve((JSON.parse(m[1]!) as { httpPort: number }).httpPort);
    });
    proc.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    proc.once('exit', (code) => reject(new Error(`hub child exited early (${code}): ${err}`)));
  });
}

async function verify(dataDir: string, snapshots: Map<number, Buffer>, acked: number): Promise<number> {
  const store = await ReplicaStore.open(path.join(dataDir, 'volumes', 'vol1'), {
    logger: silentLogger,
    owner: 'verify',
    policy: { retentionMs: 3_600_000, journalBytes: 1 << 40 },
    segmentBytes: 17 * 1024 * 1024,
  });
  try {
    const epochs = store.points().map((p) => p.epoch);
    if (acked > 0) expect(epochs).toContain(acked);
    for (const p of store.points()) {
      const view = RecoveryVolume.atPoint(store, p);
      const data = await view.read(0, SIZE);
      await view.close();
      const want = snapshots.get(p.epoch);
      if (!want) throw new Error(`point at epoch ${p.epoch} was never sealed by the agent`);
      if (!data.equals(want)) throw new Error(`point at epoch ${p.epoch} differs from the agent's volume at that seal`);
    }
    return store.latestPoint()?.epoch ?? 0;
  } finally {
    await store.close();
  }
}

describe('hub crash recovery (kill -9)', () => {
  it('keeps every acked epoch and only consistent points across random kills', async () => {
    const seed = Number(process.env.HUB_CRASH_SEED ?? Date.now() % 1_000_000);
    const rand = rng(seed);
    const volume = Buffer.alloc(SIZE); // the agent's disk
    const snapshots = new Map<number, Buffer>();
    let generation = 0;
    let seq = 0;
    let epoch = 1;
    let ackedEpoch = 0;
    let dirty = new Set<number>(Array.from({ length: SIZE / REGION }, (_, i) => i)); // FULL at first
    const unacked: { epoch: number; regions: number[] }[] = [];
    try {
      for (let round = 0; round < ROUNDS; round++) {
        const port = await startChild(tmp.path);
        const agent = await FakeAgent.connect(`ws://127.0.0.1:${port}/v1/replicate`);
        const { welcome } = await agent.hello(makeHello({ volumeSize: SIZE, regionSize: REGION, generation, nextSeq: seq + 1, nextEpoch: epoch }));
        if (!welcome) throw new Error('refused');
        generation = welcome.generation;
        const onAck = (e: number): void => {
          ackedEpoch = Math.max(ackedEpoch, e);
          while (unacked.length > 0 && unacked[0]!.epoch <= ackedEpoch) unacked.shift();
        };
        agent.ws.on('message', () => {
          for (const m of agent.received.splice(0)) if (m.type === 'ack') onAck(m.ack.durableEpoch);
        });
        // resync group: every region still dirty (never acked) is read back from the "disk"
        for (const u of unacked) for (const r of u.regions) dirty.add(r);
        unacked.length = 0;
        agent.resyncBegin(welcome.syncMode === 'full', dirty.size * REGION, round + 1);
        const groupRegions = [...dirty];
        for (const r of groupRegions) {
          agent.seq = seq;
          agent.epoch = epoch;
          agent.write(r * REGION, Buffer.from(volume.subarray(r * REGION, (r + 1) * REGION)), 'data', 'resync');
          seq = agent.seq;
        }
        agent.send({ type: 'resyncEnd', resyncEnd: { resyncId: round + 1, epoch } });
        snapshots.set(epoch, Buffer.from(volume));
        agent.send({ type: 'seal', seal: { epoch, lastSeq: seq, timeMs: Date.now(), reason: 'resync-end' } });
        unacked.push({ epoch, regions: groupRegions });
        dirty = new Set();
        epoch++;
        // live stream until a random kill
        const killAt = Date.now() + 30 + Math.floor(rand() * 300);
        let touched: number[] = [];
        while (Date.now() < killAt) {
          const offset = Math.floor(rand() * (SIZE - 4096));
          const length = 1 + Math.floor(rand() * 4096);
          const byte = 1 + Math.floor(rand() * 255);
          volume.fill(byte, offset, offset + length);
          agent.seq = seq;
          agent.epoch = epoch;
          agent.write(offset, Buffer.alloc(length, byte));
          seq = agent.seq;
          for (let r = Math.floor(offset / REGION); r <= Math.floor((offset + length - 1) / REGION); r++) touched.push(r);
          if (rand() < 0.3) {
            snapshots.set(epoch, Buffer.from(volume));
            agent.send({ type: 'seal', seal: { epoch, lastSeq: seq, timeMs: Date.now(), reason: 'timer' } });
            unacked.push({ epoch, regions: touched });
            touched = [];
            epoch++;
          }
          if (rand() < 0.2) await new Promise((r) => setTimeout(r, 1));
        }
        for (const r of touched) dirty.add(r); // unsealed writes: bits stay set
        await killHard(child!);
        child = null;
        agent.terminate();
        const latest = await verify(tmp.path, snapshots, ackedEpoch);
        expect(latest).toBeGreaterThanOrEqual(ackedEpoch);
        if (process.env.HUB_CRASH_DEBUG) process.stderr.write(`round ${round}: sent epoch ${epoch - 1}, acked ${ackedEpoch}, latest point ${latest}\n`);
      }
    } catch (err) {
      throw new Error(`seed ${seed}: ${(err as Error).message}`);
    }
  }, 120_000);
});
