/**
 * Network faults between agent and hub through a FlakyProxy (the agent's
 * --hub points at the proxy; repctl and the samples reach the hub directly):
 * connection cuts, 50-200 ms of delay, and a flapping link, in seeded order
 * (NET_SEED replays, NET_TRIALS repeats the three phases, default 1), with
 * writes flowing all the time. Every phase ends with a reconnect and a
 * reference-log sample; at the end: wait-synced, qemu-img compare, and a
 * sample pinned at the synced point.
 */
import { Cluster, intFromEnv, seedFrom } from '../../helpers/e2e';
import { describeWithTools } from '../../helpers/tools';
import { networkScenario } from './lib/scenarios';

describeWithTools(['qemu-img'])('network faults between agent and hub', () => {
  let cluster: Cluster | null = null;
  afterEach(async () => {
    await cluster?.close();
    cluster = null;
  });

  const trials = intFromEnv('NET_TRIALS', 1);

  test('cuts, delay and flapping: the agent reconnects and the replica converges', async () => {
    const seed = seedFrom('NET_SEED');
    cluster = new Cluster('e2e-net-');
    try {
      const r = await networkScenario(cluster, { trials, seed, log: process.env.E2E_VERBOSE ? (l) => process.stderr.write(`${l}\n`) : undefined });
      // the first cut of a cut phase and every flap phase force a new connection through the proxy
      expect(r.connections).toBeGreaterThanOrEqual(2 * trials + 1);
      expect(r.samples.samples).toBeGreaterThanOrEqual(3 * trials + 1);
      process.stderr.write(
        `network: seed ${seed}, ${trials} trial(s) in ${(r.elapsedMs / 1000).toFixed(1)} s, ${r.connections} proxy connections, ` +
          `${r.samples.samples} samples (${r.samples.duringResync} in a resync group)\n`,
      );
    } catch (err) {
      const dir = cluster.keepArtifacts();
      throw new Error(`NET_SEED=${seed} NET_TRIALS=${trials}: ${(err as Error).message}\nartifacts kept in ${dir}`);
    }
  }, 180_000);
});
