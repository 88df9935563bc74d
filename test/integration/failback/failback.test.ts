/**
 * Failback end to end, in process: a real hub and a real agent (link through
 * a FlakyProxy so it can be cut), the recovery side writing through the
 * failover view's NBD export.
 *
 * Scenario: X replicated; link lost; Y written on the agent only (dirty);
 * failover at the latest point; Z written on the recovery side; the agent
 * comes back and is refused; failback: the agent volume must equal the
 * recovery volume (X + Z, Y's regions rolled back), only the delta ships,
 * and replication resumes from the new common base.
 */
import { useTmpDir } from '../../helpers/tmpdir';
import { waitFor } from '../../helpers/wait-for';
import { FailbackRig, KiB, MiB, REGION, pattern } from './harness';

const SIZE = 32 * MiB;

describe('failback of the delta', () => {
  const tmp = useTmpDir('failback-');
  let rig: FailbackRig;

  beforeEach(() => {
    rig = new FailbackRig(tmp.path, SIZE);
  });
  afterEach(async () => {
    await rig.stop();
  });

  test('ships only changed + unreplicated regions, rolls the agent to the recovery volume, resumes replication', async () => {
    await rig.startHub();
    const agent = await rig.startAgent();
    const expected = Buffer.alloc(SIZE);
    const dev = agent.device('vol1');
    // X: replicated
    const X = [
      { offset: 1 * MiB, data: pattern(512 * KiB, 1) },
      { offset: 10 * MiB + 4 * KiB, data: pattern(200 * KiB, 2) },
      { offset: 20 * MiB, data: pattern(REGION, 3) },
    ];
    for (const w of X) {
      await dev.write(w.offset, w.data);
      w.data.copy(expected, w.offset);
    }
    await dev.flush();
    await rig.synced();

    // the link drops; Y only on the agent (one region overwrites X, one is fresh)
    rig.proxy!.refuse(true);
    rig.proxy!.cut();
    await waitFor(() => rig.repl().state !== 'streaming', { what: 'agent disconnected' });
    const Y = [
      { offset: 20 * MiB, data: pattern(REGION, 4) },
      { offset: 25 * MiB + 8 * KiB, data: pattern(8 * KiB, 5) },
    ];
    for (const w of Y) await dev.write(w.offset, w.data);
    await dev.flush();
    expect(rig.repl().dirtyBytes).toBe(2 * REGION);

    // fail over; refuse failback before that
    const early = await rig.api('POST', '/v1/volumes/vol1/failback', {});
    expect(early.status).toBe(409);
    expect(early.body.error).toMatch(/not failed over/);
    const fo = await rig.api('POST', '/v1/volumes/vol1/failover', { at: 'latest' });
    expect(fo.status).toBe(201);
    const view = fo.body.view;

    // Z on the recovery side: a fresh range, part of an X range, a zeroed range
    await rig.writeExport(view.nbd.export, [
      { offset: 5 * MiB, data: pattern(300 * KiB, 6) },
      { offset: 1 * MiB + 64 * KiB, data: pattern(16 * KiB, 7) },
      { offset: 10 * MiB + 4 * KiB, data: Buffer.alloc(64 * KiB) },
    ], expected);
    const changedBytes = 300 * KiB + 16 * KiB + 64 * KiB;

    // the protected side comes back: refused while no failback was asked for
    rig.proxy!.refuse(false);
    await waitFor(() => rig.repl().refused?.code === 'failed-over', { what: 'agent refused failed-over' });

    const post = await rig.api('POST', '/v1/volumes/vol1/failback', {});
    expect(post.status).toBe(202);
    expect(post.body).toMatchObject({ volume: 'vol1', volumeSize: SIZE, changedBytes });
    const f = await rig.failbackDone();

    // the protected volume equals the recovery volume: X + Z, Y rolled back
    const local = await rig.readAgent();
    expect(local.equals(expected)).toBe(true);
    expect(f.changedBytes).toBe(changedBytes);
    expect(f.agentDirtyBytes).toBe(2 * REGION);
    expect(f.hubAheadBytes).toBe(0);
    expect(f.shippedBytes).toBeLessThanOrEqual(changedBytes + 2 * REGION);
    expect(f.shippedBytes).toBeGreaterThanOrEqual(2 * REGION);
    expect(f.shippedBytes).toBeLessThan(SIZE / 32);
    expect(f.generation).toBeGreaterThan(1);

    // the failover view is retired, the fence lifted, the replica equals the recovery volume
    expect((await rig.api('GET', '/v1/views')).body.views).toEqual([]);
    const st = (await rig.api('GET', '/v1/volumes/vol1')).body;
    expect(st).toMatchObject({ failedOver: false, failoverView: null, generation: f.generation });
    await rig.synced();
    expect((await rig.readExport('vol1')).equals(expected)).toBe(true);
    expect(rig.repl().generation).toBe(f.generation);

    // replication resumed: a new write reaches the hub's latest point
    const W = pattern(128 * KiB, 8);
    await dev.write(30 * MiB, W);
    W.copy(expected, 30 * MiB);
    await dev.flush();
    await rig.synced();
    expect((await rig.readExport('vol1')).equals(expected)).toBe(true);
    expect((await rig.readAgent()).equals(expected)).toBe(true);
    // a second POST after done: nothing to fail back any more
    expect((await rig.api('POST', '/v1/volumes/vol1/failback', {})).status).toBe(409);
  }, 90_000);
});
