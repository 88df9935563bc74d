/**
 * Hub down for longer than the agent's queue holds (--queue-bytes 4M): with
 * the hub killed, 128 MiB of seeded random 64 KiB-aligned writes go through
 * the agent (32x its queue). The agent must not buffer them: its RSS
 * (/proc/PID/status VmRSS, sampled every 50 ms) grows by less than 64 MiB.
 * The hub restarts on the same data dir; the agent reconnects, reports a
 * bounded send queue while it resyncs, and the resync ships at most 1.1x the
 * dirty bytes (distinct 64 KiB regions written, from the workload's own log)
 * — measured by the restarted hub's payload byte counter, which counts
 * nothing but the resync. Then wait-synced and qemu-img compare.
 */
import { NbdClient } from '../../../common/nbd/client';
import { Cluster, MiB, REGION, Rng, assertIdentical, bytesReceived, hubVolume, rssBytes, seedFrom, waitConnected, waitSynced } from '../../helpers/e2e';
import { describeWithTools } from '../../helpers/tools';
import { Workload } from './lib/workload';

const SIZE = 256 * MiB;
const QUEUE = 4 * MiB;
const WRITTEN = 128 * MiB;
/** Largest record the agent queues (a resync read or write piece, agent/replicator.ts). */
const MAX_RECORD = MiB;

describeWithTools(['qemu-img'])('hub down longer than the agent queue holds', () => {
  let cluster: Cluster | null = null;
  afterEach(async () => {
    await cluster?.close();
    cluster = null;
  });

  test('memory stays bounded, the resync ships only the dirty regions, the replica converges', async () => {
    const seed = seedFrom('OUTAGE_SEED');
    const rng = new Rng(seed);
    const t0 = Date.now();
    const log = (m: string): void => void (process.env.E2E_VERBOSE && process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(2)}s] ${m}\n`));
    const c = (cluster = new Cluster('e2e-outage-'));
    let hub = await c.startHub();
    const agent = await c.startAgent({ file: c.path('v1.img'), size: SIZE, stateDir: c.path('agent'), hubUrl: hub.url, queueBytes: '4M' });
    const client = await NbdClient.connect({ host: agent.nbd.host, port: agent.nbd.port, exportName: 'v1' });
    try {
      await waitSynced(hub);
      log('initial sync done');
      // warm-up: the write path's buffers and code are in place before the baseline
      const warm = Workload.start(client, rng, { length: SIZE, align: REGION, maxLength: REGION, depth: 8, totalBytes: 16 * MiB });
      await warm.done;
      warm.expectClean();
      await waitSynced(hub);
      const baseline = rssBytes(agent.pid);
      log('warm-up synced');

      await c.stop(hub, 'SIGKILL');
      let peak = baseline;
      const sampler = setInterval(() => (peak = Math.max(peak, rssBytes(agent.pid))), 50);
      const w = Workload.start(client, rng, { length: SIZE, align: REGION, maxLength: REGION, depth: 8, totalBytes: WRITTEN });
      try {
        await w.done;
      } finally {
        clearInterval(sampler);
      }
      w.expectClean();
      log('outage writes done');
      peak = Math.max(peak, rssBytes(agent.pid));
      const dirty = w.regions.size * REGION;
      const report = `OUTAGE_SEED=${seed}: wrote ${w.bytes / MiB} MiB (${dirty / MiB} MiB distinct), agent RSS ${(baseline / MiB).toFixed(0)} -> peak ${(peak / MiB).toFixed(0)} MiB`;
      process.stderr.write(`hub-outage: ${report}\n`);
      expect(w.bytes).toBeGreaterThanOrEqual(WRITTEN);
      expect(peak - baseline).toBeLessThan(64 * MiB);

      hub = await c.restartHub(hub);
      await waitConnected(hub, true);
      log('hub restarted, agent reconnected');
      let maxQueue = 0;
      let sawResync = false;
      for (;;) {
        const v = await hubVolume(hub);
        if (v?.agent) maxQueue = Math.max(maxQueue, v.agent.queueBytes);
        if (v?.resync?.active) sawResync = true;
        if (v?.synced) break;
        await new Promise((r) => setTimeout(r, 50));
      }
      await waitSynced(hub);
      log('resync done');
      const shipped = await bytesReceived(hub);
      process.stderr.write(`hub-outage: resync shipped ${(shipped / MiB).toFixed(2)} MiB for ${dirty / MiB} MiB dirty; agent queue peak ${(maxQueue / MiB).toFixed(2)} MiB\n`);
      expect(sawResync).toBe(true);
      expect(maxQueue).toBeLessThanOrEqual(QUEUE + MAX_RECORD);
      expect(shipped).toBeGreaterThanOrEqual(dirty); // every dirty region holds random data: all of it is shipped
      expect(shipped).toBeLessThanOrEqual(1.1 * dirty);
      await assertIdentical(c.path('v1.img'), hub);
      log('compared');
    } finally {
      await client.close().catch(() => undefined);
    }
  }, 180_000);
});
