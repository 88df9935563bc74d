/**
 * Authentication: a hub started with --token-file refuses an agent that
 * presents a wrong token (or none): the agent logs the refusal with code
 * 'auth', the hub counts it in rephub_agents_refused_total and never creates
 * the volume. Restarted with the right token on the same state dir, the agent
 * syncs and replicates writes (wait-synced, qemu-img compare).
 */
import * as fs from 'node:fs';
import { NbdClient } from '../../../common/nbd/client';
import { AgentHandle, Cluster, HubHandle, MiB, assertIdentical, hubMetrics, hubVolume, metricValue, repctlStatus, waitSynced } from '../../helpers/e2e';
import { describeWithTools } from '../../helpers/tools';
import { waitFor } from '../../helpers/wait-for';

const SIZE = 16 * MiB;

describeWithTools(['qemu-img'])('agent authentication with a shared token', () => {
  let cluster: Cluster;
  let hub: HubHandle;

  beforeEach(async () => {
    cluster = new Cluster('e2e-token-');
    fs.writeFileSync(cluster.path('hub.token'), 'correct horse battery staple\n', { mode: 0o600 });
    fs.writeFileSync(cluster.path('wrong.token'), 'incorrect horse\n', { mode: 0o600 });
    hub = await cluster.startHub({ tokenFile: cluster.path('hub.token') });
  });
  afterEach(async () => {
    await cluster.close();
  });

  const startAgent = (tokenFile?: string): Promise<AgentHandle> =>
    cluster.startAgent({ file: cluster.path('v1.img'), size: SIZE, stateDir: cluster.path('agent'), hubUrl: hub.url, tokenFile });

  async function expectRefused(agent: AgentHandle, refusalsBefore: number): Promise<number> {
    const line = await waitFor(() => agent.proc.stderr().split('\n').find((l) => l.includes('hub refused the session')), {
      timeoutMs: 15_000,
      what: 'the agent to log the refusal',
    });
    expect(JSON.parse(line)).toMatchObject({ code: 'auth' });
    const refused = metricValue(await hubMetrics(hub), 'rephub_agents_refused_total', { code: 'auth' });
    expect(refused).toBeGreaterThan(refusalsBefore);
    // the hub never admitted the session: no volume, nothing connected
    expect(await hubVolume(hub)).toBeNull();
    expect((await repctlStatus(hub)).volumes).toEqual([]);
    expect(metricValue(await hubMetrics(hub), 'rephub_connected_agents')).toBe(0);
    expect(hub.proc.stderr()).not.toContain('incorrect horse'); // the presented token is never logged
    return refused;
  }

  test('a wrong or missing token is refused; the right one syncs', async () => {
    let agent = await startAgent(cluster.path('wrong.token'));
    let refusals = await expectRefused(agent, 0);
    await cluster.stop(agent, 'SIGTERM');

    agent = await startAgent(undefined);
    refusals = await expectRefused(agent, refusals);
    await cluster.stop(agent, 'SIGTERM');

    agent = await startAgent(cluster.path('hub.token'));
    await waitSynced(hub);
    const client = await NbdClient.connect({ host: agent.nbd.host, port: agent.nbd.port, exportName: 'v1' });
    try {
      await client.write(MiB, Buffer.alloc(256 * 1024, 0xa5));
      await client.write(SIZE - 4096, Buffer.alloc(4096, 0x5a), { fua: true });
    } finally {
      await client.close();
    }
    await waitSynced(hub);
    await assertIdentical(cluster.path('v1.img'), hub);
    expect((await hubVolume(hub))?.connected).toBe(true);
    expect(metricValue(await hubMetrics(hub), 'rephub_agents_refused_total', { code: 'auth' })).toBe(refusals);
  }, 90_000);
});
