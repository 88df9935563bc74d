import { parseAt } from '../../../cli/commands/recovery-api';
import { formatFailback, formatPoints, formatView, runFailback } from '../../../cli/commands/recovery';
import { FailbackJson } from '../../../cli/commands/recovery-api';
import { FakeHubApi, viewJson } from './fake-hub-api';

function fb(state: FailbackJson['state'], shippedBytes: number, extra: Partial<FailbackJson> = {}): FailbackJson {
  return {
    volume: 'vol1', state, changedBytes: 3 << 20, agentDirtyBytes: 1 << 20, hubAheadBytes: 0, shippedBytes, volumeSize: 1 << 30,
    generation: 2, attempts: 1,
    startedAt: '2024-05-01T11:00:00.000Z', ...extra,
  };
}

describe('parseAt', () => {
  test.each([
    [undefined, 'latest'],
    ['latest', 'latest'],
    ['123', '123'],
    ['2024-05-01T10:00:00Z', '2024-05-01T10:00:00.000Z'],
    ['2024-05-01T12:00:00+02:00', '2024-05-01T10:00:00.000Z'],
  ])('%s -> %s', (input, expected) => {
    expect(parseAt(input)).toBe(expected);
  });

  test.each(['yesterday', '-5', '12abc', '2024-13-45T99:00:00Z', ''])('rejects %s with E_USAGE', (input) => {
    expect(() => parseAt(input)).toThrow(expect.objectContaining({ code: 'E_USAGE' }));
  });
});

describe('formatting', () => {
  test('a view shows its NBD URI and NVMe coordinates with a connect line', () => {
    const text = formatView(viewJson());
    expect(text).toContain('nbd://127.0.0.1:10810/vol1-test-3f9a');
    expect(text).toContain('traddr 127.0.0.1  trsvcid 4430  nqn nqn.2024-05.io.blockrep:vol1-test-3f9a');
    expect(text).toContain('nvme connect -t tcp -a 127.0.0.1 -s 4430 -n nqn.2024-05.io.blockrep:vol1-test-3f9a');
    expect(formatView(viewJson({ nbd: null, nvme: null }))).toMatch(/nbd {6}-\n {2}nvme {5}-/);
  });

  test('points: newest N in epoch order with a note about the rest', () => {
    const points = Array.from({ length: 30 }, (_, i) => ({ epoch: 30 - i, seq: 100 * (30 - i), time: `t${30 - i}` }));
    const text = formatPoints('vol1', points, 5);
    const rows = text.split('\n').filter((l) => /^\s*\d+\s/.test(l));
    expect(rows.map((r) => Number(r.trim().split(/\s+/)[0]))).toEqual([26, 27, 28, 29, 30]);
    expect(text).toContain('30 recovery point(s) from t1 to t30');
    expect(text).toContain('25 older points not shown');
    expect(formatPoints('vol1', points, 0).split('\n').filter((l) => /^\s*\d+\s/.test(l))).toHaveLength(30);
    expect(formatPoints('vol1', [], 5)).toContain('no recovery points');
  });

  test('failback summary states shipped bytes against the volume size', () => {
    const text = formatFailback(fb('done', 4 << 20, { finishedAt: '2024-05-01T11:00:09.000Z' }));
    expect(text).toContain('shipped   4.0 MiB of a 1.0 GiB volume (0.39 %)');
    expect(text).toContain('3.0 MiB changed on the recovery side + 1.0 MiB');
  });
});

describe('runFailback', () => {
  test('starts, polls until done, and reports every state', async () => {
    const client = new FakeHubApi();
    const states = [fb('shipping', 1 << 20), fb('resuming', 4 << 20), fb('done', 4 << 20)];
    client.on('POST', '/v1/volumes/vol1/failback', () => fb('waiting-for-agent', 0));
    client.on('GET', '/v1/volumes/vol1/failback', () => states.shift());
    const seen: string[] = [];
    const slept: number[] = [];
    const f = await runFailback(client, 'vol1', 60000, { sleep: async (ms) => void slept.push(ms), onUpdate: (x) => seen.push(x.state) });
    expect(f.state).toBe('done');
    expect(seen).toEqual(['waiting-for-agent', 'shipping', 'resuming', 'done']);
    expect(slept).toEqual([500, 500, 500]);
  });

  test('a failed failback is E_IO with the hub reason', async () => {
    const client = new FakeHubApi();
    client.on('POST', '/v1/volumes/vol1/failback', () => fb('failed', 0, { error: 'agent volume uuid differs' }));
    await expect(runFailback(client, 'vol1', 1000)).rejects.toMatchObject({
      code: 'E_IO',
      message: expect.stringContaining('agent volume uuid differs'),
    });
  });

  test('gives up with E_TIMEOUT after the timeout', async () => {
    const client = new FakeHubApi();
    client.on('POST', '/v1/volumes/vol1/failback', () => fb('waiting-for-agent', 0));
    client.on('GET', '/v1/volumes/vol1/failback', () => fb('waiting-for-agent', 0));
    let t = 0;
    await expect(
      runFailback(client, 'vol1', 2000, { now: () => t, sleep: async (ms) => void (t += ms) }),
    ).rejects.toMatchObject({ code: 'E_TIMEOUT', message: expect.stringContaining('waiting-for-agent') });
    expect(client.count('GET', '/v1/volumes/vol1/failback')).toBe(4);
  });

  test('an unknown volume keeps the hub code and names the volume', async () => {
    const client = new FakeHubApi();
    await expect(runFailback(client, 'nope', 1000)).rejects.toMatchObject({
      code: 'E_NOT_FOUND',
      message: expect.stringContaining("failback of 'nope'"),
    });
  });
});
