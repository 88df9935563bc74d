import { ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { createAgent } from '../../../agent';
import { ActivityLog } from '../../../agent/activity-log';
import { silentLogger } from '../../../common/log';
import { FakeHub } from '../../helpers/fake-hub';
import { killHard, spawnTs } from '../../helpers/run-ts';
import { useTmpDir } from '../../helpers/tmpdir';
import { sleep, waitFor } from '../../helpers/wait-for';

const SIZE = 8 * 1024 * 1024;
const REGION = 64 * 1024;
const CHILD = path.join(__dirname, 'fixtures', 'crash-writer.ts');

/** Regions whose content differs between two images. */
function differing(a: Buffer, b: Buffer): number[] {
  const out: number[] = [];
  for (let r = 0; r * REGION < SIZE; r++) {
    if (!a.subarray(r * REGION, (r + 1) * REGION).equals(b.subarray(r * REGION, (r + 1) * REGION))) out.push(r);
  }
  return out;
}

describe('agent killed with SIGKILL while writing', () => {
  const tmp = useTmpDir('agent-crash-');
  let hub: FakeHub;
  let child: ChildProcess | null = null;

  beforeEach(async () => {
    hub = await FakeHub.start();
    hub.snapshotPoints = false;
  });
  afterEach(async () => {
    if (child) await killHard(child);
    child = null;
    await hub.close();
  });

  test('the reopened dirty set covers every region the hub does not have, and resync converges', async () => {
    const stateDir = path.join(tmp.path, 'state');
    const volume = path.join(tmp.path, 'vol1.img');
    const seed = Number(process.env.CRASH_SEED ?? Date.now() % 100000);
    let leftBehind = 0;
    for (let round = 0; round < 3; round++) {
      const s = seed + round;
      // odd rounds: a tiny hot set (evictions persist the bitmap); even: recovery relies on the hot set
      const hot = round % 2 === 1 ? 3 : 64;
      child = spawnTs(CHILD, [stateDir, volume, hub.url, String(s), String(hot)]);
      let out = '';
      let err = '';
      child.stdout!.on('data', (d) => (out += d));
      child.stderr!.on('data', (d) => (err += d));
      await waitFor(() => out.includes('ready'), { timeoutMs: 20_000, what: `child ready (stderr: ${err})` });
      await sleep(100 + ((s * 7919) % 700)); // a random moment: mid FULL sync, mid commit, mid stream
      await waitFor(() => hub.live().some((x) => x.hello !== null), { what: 'child session' });
      hub.stall(); // the hub stops reading: what the agent sends from now on never arrives
      await sleep(50 + ((s * 31) % 100));
      await killHard(child);
      child = null;
      hub.dropAll();

      const onDisk = fs.readFileSync(volume);
      const replica = hub.images.get('vol1')!;
      const must = differing(onDisk, replica);
      const { log } = await ActivityLog.open({ dir: path.join(stateDir, 'volumes', 'vol1'), regionSize: REGION, deviceSize: SIZE, extentSize: 1024 * 1024, hotExtents: hot, generation: () => 0, logger: silentLogger });
      const missing = must.filter((r) => !log.bitmap.isSet(r));
      log.abandon(); // leave the files as the crash left them (plus the persisted recovery)
      leftBehind += must.length;
      if (missing.length > 0) throw new Error(`seed ${s}: regions ${missing.join(',')} differ from the hub but are not dirty`);

      // restart in-process: the resync must make the replica equal the volume
      const agent = createAgent({
        stateDir,
        volumes: [{ name: 'vol1', path: volume, size: SIZE }],
        nvmeListen: null,
        nbdListen: null,
        hub: { url: hub.url, ackMode: 'async', queueBytes: 1024 * 1024, resyncRate: 0, regionSize: REGION, extentSize: 1024 * 1024, hotExtents: hot, reconnectBaseMs: 50, reconnectMaxMs: 200 },
        logger: silentLogger,
      });
      try {
        await agent.start();
        await waitFor(() => {
          const r = agent.status().volumes[0]!.replication!;
          return r.state === 'streaming' && r.dirtyBytes === 0 && !r.resync?.active;
        }, { timeoutMs: 20_000, what: `seed ${s}: agent in sync after restart` });
        expect(differing(fs.readFileSync(volume), hub.images.get('vol1')!)).toEqual([]);
      } finally {
        await agent.stop();
      }
    }
    expect(leftBehind).toBeGreaterThan(0); // the crashes really left unreplicated work behind
  }, 120_000);
});
