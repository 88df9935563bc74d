/**
 * kill -9 of the agent at random moments while writes are in flight (seeded;
 * AGENT_KILL_SEED replays a schedule, SOAK_TRIALS changes the trial count,
 * default 20). After each restart on the same state dir: wait-synced,
 * qemu-img compare, reference-log samples (during writes, while the agent is
 * down, inside the resync group, at the synced point), and the resync shipped
 * only the dirty regions: the hub's payload byte counter across the restart
 * stays within the write window's 4 MiB activity extent, a quarter of the
 * 16 MiB volume, which holds data everywhere (a full copy ships all of it).
 */
import { Cluster, MiB, intFromEnv, seedFrom } from '../../helpers/e2e';
import { describeWithTools } from '../../helpers/tools';
import { EXTENT, SIZE, agentKillScenario } from './lib/scenarios';

describeWithTools(['qemu-img'])('kill -9 of the agent', () => {
  let cluster: Cluster | null = null;
  afterEach(async () => {
    await cluster?.close();
    cluster = null;
  });

  const trials = intFromEnv('SOAK_TRIALS', 20);

  test(`${trials} randomised kill -9 trials converge, and each resync ships only dirty regions`, async () => {
    const seed = seedFrom('AGENT_KILL_SEED');
    cluster = new Cluster('e2e-agent-kill-');
    try {
      const r = await agentKillScenario(cluster, { trials, seed, log: process.env.E2E_VERBOSE ? (l) => process.stderr.write(`${l}\n`) : undefined });
      expect(r.resyncBytes).toHaveLength(trials);
      for (const bytes of r.resyncBytes) expect(bytes).toBeLessThanOrEqual(EXTENT);
      expect(Math.max(...r.resyncBytes)).toBeLessThanOrEqual(SIZE / 4);
      // samples were taken at the synced point of every trial and inside resync groups
      expect(r.samples.samples).toBeGreaterThanOrEqual(trials);
      expect(r.samples.duringResync).toBeGreaterThan(0);
      process.stderr.write(
        `agent-kill: seed ${seed}, ${trials} trials in ${(r.elapsedMs / 1000).toFixed(1)} s, ` +
          `${r.samples.samples} samples (${r.samples.duringResync} in a resync group), ` +
          `resync MiB per trial: ${r.resyncBytes.map((b) => (b / MiB).toFixed(1)).join(' ')}\n`,
      );
    } catch (err) {
      const dir = cluster.keepArtifacts();
      throw new Error(`AGENT_KILL_SEED=${seed} SOAK_TRIALS=${trials}: ${(err as Error).message}\nartifacts kept in ${dir}`);
    }
  }, 300_000);
});
