import { waitSynced } from '../../../cli/commands/status';
import { HubClient } from '../../../cli/hub-client';
import { volumeStatus } from './fake-hub-api';

/** A HubClient whose GET answers come from a script, one per poll. */
function scripted(answers: object[]): { client: HubClient; polls: () => number } {
  let i = 0;
  const client = {
    get: async () => answers[Math.min(i++, answers.length - 1)],
  } as unknown as HubClient;
  return { client, polls: () => i };
}

describe('waitSynced', () => {
  test('a synced answer counts only with an agent report newer than the first poll', async () => {
    const t0 = '2026-01-01T00:00:00.000Z';
    const t1 = '2026-01-01T00:00:00.500Z';
    const { client, polls } = scripted([
      volumeStatus({ synced: true, agentStatusTime: t0 }),
      volumeStatus({ synced: true, agentStatusTime: t0 }),
      volumeStatus({ synced: false, agentStatusTime: t1 }),
      volumeStatus({ synced: true, agentStatusTime: t1, durableEpoch: 77 }),
    ]);
    const v = await waitSynced(client, 'vol1', 10_000);
    expect(v.durableEpoch).toBe(77);
    expect(polls()).toBe(4);
  });

  test('no agent report at the first poll: the first report with synced is enough', async () => {
    const { client, polls } = scripted([
      volumeStatus({ synced: false, agentStatusTime: null }),
      volumeStatus({ synced: true, agentStatusTime: '2026-01-01T00:00:01.000Z' }),
    ]);
    await waitSynced(client, 'vol1', 10_000);
    expect(polls()).toBe(2);
  });

  test('times out with E_TIMEOUT and says why', async () => {
    const { client } = scripted([volumeStatus({ synced: false, state: 'behind', agentStatusTime: null })]);
    await expect(waitSynced(client, 'vol1', 300)).rejects.toMatchObject({ code: 'E_TIMEOUT', message: expect.stringMatching(/state behind/) });
  });
});
