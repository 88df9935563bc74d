/**
 * Failback under adverse conditions, in process (see harness.ts):
 *  - failover at an older point: what the replica received after it is rolled
 *    back too; failback requested while the agent is offline waits, and the
 *    request survives a hub restart;
 *  - interruption mid-shipping: initiator I/O is held while the volume is
 *    rolled over; the agent stops with its crash marker, starts again with
 *    I/O still held, and the restarted failback completes; the held write
 *    lands after the rollback and replicates;
 *  - a hub crash during the commit ('resuming' on disk) is finished on start.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FailbackManager } from '../../../hub/failback';
import { useTmpDir } from '../../helpers/tmpdir';
import { sleep, waitFor } from '../../helpers/wait-for';
import { FailbackRig, KiB, MiB, REGION, pattern } from './harness';

const SIZE = 32 * MiB;

describe('failback faults', () => {
  const tmp = useTmpDir('failback-faults-');
  let rig: FailbackRig;

  beforeEach(() => {
    rig = new FailbackRig(tmp.path, SIZE);
  });
  afterEach(async () => {
    await rig.stop();
  });

  async function replicate(expected: Buffer, pieces: { offset: number; data: Buffer }[]): Promise<void> {
    const dev = rig.agent!.device('vol1');
    for (const w of pieces) {
      await dev.write(w.offset, w.data);
      w.data.copy(expected, w.offset);
    }
    await dev.flush();
    await rig.synced();
  }

  test('failover at an older point: newer replicated regions roll back too; a request made while the agent is away waits across a hub restart', async () => {
    await rig.startHub();
    await rig.startAgent();
    const expected = Buffer.alloc(SIZE);
    await replicate(expected, [{ offset: 2 * MiB, data: pattern(256 * KiB, 1) }]);
    const points = (await rig.api('GET', '/v1/volumes/vol1/points')).body.points;
    const older = points[points.length - 1].epoch;
    const after = Buffer.alloc(SIZE); // what the volume holds after the newer writes (not the failover content)
    await replicate(after, [
      { offset: 6 * MiB, data: pattern(REGION, 2) },
      { offset: 2 * MiB + 64 * KiB, data: pattern(4 * KiB, 3) },
    ]);
    await rig.stopAgent();

    const fo = await rig.api('POST', '/v1/volumes/vol1/failover', { at: String(older) });
    expect(fo.status).toBe(201);
    expect(fo.body.view.point.epoch).toBe(older);
    await rig.writeExport(fo.body.view.nbd.export, [{ offset: 12 * MiB, data: pattern(128 * KiB, 4) }], expected);

    const post = await rig.api('POST', '/v1/volumes/vol1/failback', {});
    expect(post.body.state).toBe('waiting-for-agent');
    expect((await rig.api('POST', '/v1/volumes/vol1/failback', {})).body.startedAt).toBe(post.body.startedAt); // joins
    await rig.stopHub();
    await rig.startHub();
    expect((await rig.api('GET', '/v1/volumes/vol1/failback')).body.state).toBe('waiting-for-agent');

    await rig.startAgent();
    const f = await rig.failbackDone();
    expect(f.hubAheadBytes).toBe(REGION + 4 * KiB);
    expect(f.agentDirtyBytes).toBe(0);
    expect(f.shippedBytes).toBeLessThanOrEqual(f.changedBytes + f.hubAheadBytes);
    expect(f.shippedBytes).toBeGreaterThanOrEqual(128 * KiB + REGION);
    expect((await rig.readAgent()).equals(expected)).toBe(true);
    await rig.synced();
    expect((await rig.readExport('vol1')).equals(expected)).toBe(true);
  }, 90_000);

  test('interrupted mid-shipping: I/O stays held across an agent restart, the failback restarts and the held write lands after it', async () => {
    await rig.startHub();
    await rig.startAgent();
    const expected = Buffer.alloc(SIZE);
    await replicate(expected, [{ offset: 0, data: pattern(128 * KiB, 1) }]);
    await rig.stopAgent();
    const fo = await rig.api('POST', '/v1/volumes/vol1/failover', {});
    await rig.writeExport(fo.body.view.nbd.export, [{ offset: 4 * MiB, data: pattern(20 * MiB, 5) }], expected);
    await rig.api('POST', '/v1/volumes/vol1/failback', {});

    // stall the link once a few MiB went out, so the attempt is caught mid-way
    const manager = rig.hub!.failback as FailbackManager;
    const progress = manager.progress.bind(manager);
    let stalled = false;
    manager.progress = (volume, patch) => {
      progress(volume, patch);
      if (!stalled && (patch.shippedBytes ?? 0) >= 4 * MiB) {
        stalled = true;
        rig.proxy!.stall(true);
      }
    };
    const agent = await rig.startAgent();
    await waitFor(() => stalled, { timeoutMs: 20_000, what: 'shipping under way' });
    const dev = agent.device('vol1');
    let readDone = false;
    const read = dev.read(0, 4 * KiB).then(() => (readDone = true));
    const write = dev.write(0, pattern(4 * KiB, 9));
    write.catch(() => undefined);
    await sleep(200);
    expect(readDone).toBe(false); // initiator I/O is held during the rollback
    const marker = path.join(tmp.path, 'agent', 'volumes', 'vol1', 'failback.json');
    expect(JSON.parse(fs.readFileSync(marker, 'utf8')).state).toBe('receiving');

    // the protected side stops mid-way: the held calls fail as closed, the marker stays
    rig.proxy!.stall(false);
    rig.proxy!.cut();
    await rig.stopAgent();
    await expect(write).rejects.toMatchObject({ code: 'E_CLOSED' });
    await read.catch(() => undefined);
    expect(fs.existsSync(marker)).toBe(true);
    await waitFor(async () => (await rig.api('GET', '/v1/volumes/vol1/failback')).body.state === 'waiting-for-agent', {
      what: 'hub waits for the agent again',
    });
    manager.progress = progress;

    // restart: I/O held from the start until the failback completes, then the write lands on top
    const again = await rig.startAgent();
    const W = pattern(8 * KiB, 10);
    const heldWrite = again.device('vol1').write(12 * KiB, W);
    const f = await rig.failbackDone();
    await heldWrite;
    W.copy(expected, 12 * KiB);
    expect(f.attempts).toBe(2);
    expect(fs.existsSync(marker)).toBe(false);
    expect((await rig.readAgent()).equals(expected)).toBe(true);
    await again.device('vol1').flush();
    await rig.synced();
    expect((await rig.readExport('vol1')).equals(expected)).toBe(true);
  }, 90_000);

  test('a hub crash during the commit is finished when the hub starts again', async () => {
    await rig.startHub();
    await rig.startAgent();
    const expected = Buffer.alloc(SIZE);
    await replicate(expected, [{ offset: MiB, data: pattern(64 * KiB, 1) }]);
    await rig.stopAgent();
    const generation = (await rig.api('GET', '/v1/volumes/vol1')).body.generation;
    const fo = await rig.api('POST', '/v1/volumes/vol1/failover', {});
    await rig.writeExport(fo.body.view.nbd.export, [{ offset: 3 * MiB, data: pattern(96 * KiB, 2) }], expected);
    const post = await rig.api('POST', '/v1/volumes/vol1/failback', {});
    await rig.stopHub();
    // what the hub had persisted when it died: the agent applied generation + 1, the commit began
    const file = path.join(tmp.path, 'hub', 'failback', 'vol1.json');
    const rec = JSON.parse(fs.readFileSync(file, 'utf8'));
    fs.writeFileSync(file, JSON.stringify({ ...rec, state: 'resuming', generation: generation + 1, attempts: 1 }));

    await rig.startHub();
    const f = (await rig.api('GET', '/v1/volumes/vol1/failback')).body;
    expect(f).toMatchObject({ state: 'done', generation: generation + 1, startedAt: post.body.startedAt });
    expect((await rig.api('GET', '/v1/views')).body.views).toEqual([]);
    expect((await rig.api('GET', '/v1/volumes/vol1')).body).toMatchObject({ failedOver: false, generation: generation + 1 });
    expect((await rig.readExport('vol1')).equals(expected)).toBe(true);
    // and again: the record stays 'done', nothing is redone
    await rig.stopHub();
    await rig.startHub();
    expect((await rig.api('GET', '/v1/volumes/vol1/failback')).body.state).toBe('done');
    expect((await rig.readExport('vol1')).equals(expected)).toBe(true);
  }, 60_000);
});
