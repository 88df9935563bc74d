/**
 * kill -9 of the hub at random moments while writes flow through the agent
 * (seeded; HUB_KILL_SEED replays, HUB_KILL_TRIALS sets the count, default 5).
 * The hub restarts on the same data dir and ports; the agent reconnects by
 * itself and catches up with a resync while writes continue. The hub's newest
 * recovery point is sampled before kills and after restarts (often inside the
 * catch-up resync group) and must always be a replay of the agent's reference
 * log up to some seal; at the end: wait-synced and qemu-img compare.
 */
import { Cluster, intFromEnv, seedFrom } from '../../helpers/e2e';
import { describeWithTools } from '../../helpers/tools';
import { hubKillScenario } from './lib/scenarios';

describeWithTools(['qemu-img'])('kill -9 of the hub', () => {
  let cluster: Cluster | null = null;
  afterEach(async () => {
    await cluster?.close();
    cluster = null;
  });

  const trials = intFromEnv('HUB_KILL_TRIALS', 5);

  test(`${trials} randomised hub kills: the agent reconnects by itself and the replica converges`, async () => {
    const seed = seedFrom('HUB_KILL_SEED');
    cluster = new Cluster('e2e-hub-kill-');
    try {
      const r = await hubKillScenario(cluster, { trials, seed, log: process.env.E2E_VERBOSE ? (l) => process.stderr.write(`${l}\n`) : undefined });
      expect(r.samples.samples).toBeGreaterThanOrEqual(trials + 1);
      // writes during each outage leave dirty regions: the catch-up resync was sampled from inside
      expect(r.samples.duringResync).toBeGreaterThan(0);
      process.stderr.write(
        `hub-kill: seed ${seed}, ${trials} trials in ${(r.elapsedMs / 1000).toFixed(1)} s, ` +
          `${r.samples.samples} samples (${r.samples.duringResync} in a resync group, ${r.samples.skipped} skipped)\n`,
      );
    } catch (err) {
      const dir = cluster.keepArtifacts();
      throw new Error(`HUB_KILL_SEED=${seed} HUB_KILL_TRIALS=${trials}: ${(err as Error).message}\nartifacts kept in ${dir}`);
    }
  }, 240_000);
});
