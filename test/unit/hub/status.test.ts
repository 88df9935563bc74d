import { buildVolumeStatus, StatusInput } from '../../../hub/status';

const base: StatusInput = {
  meta: { name: 'v', uuid: 'u', size: 1024, regionSize: 512, generation: 1, agentId: 'a', createdMs: 1_000 },
  connected: true,
  durableEpoch: 5,
  durableSeq: 50,
  durableTimeMs: 9_000,
  latestPoint: { epoch: 5, seq: 50, timeMs: 9_000 },
  pointCount: 3,
  group: null,
  progress: null,
  agent: { ackedSeq: 50, ackedTimeMs: 9_500, dirtyBytes: 0, queueBytes: 0, ahead: false, resyncDoneBytes: 0, resyncTotalBytes: 0 },
  journalBytes: 4096,
  nowMs: 20_000,
};

describe('buildVolumeStatus', () => {
  it.each([
    ['in sync', {}, 'in-sync', true, 0],
    ['agent acked a newer write', { agent: { ...base.agent!, ackedSeq: 51, ackedTimeMs: 11_000 } }, 'behind', false, 2],
    ['dirty bytes remain', { agent: { ...base.agent!, dirtyBytes: 512 } }, 'behind', false, 0.5],
    ['a record arrived after the newest point', { receivedSeq: 51 }, 'behind', false, 0.5],
    ['every received record is in the newest point', { receivedSeq: 50 }, 'in-sync', true, 0],
    ['disconnected', { connected: false }, 'disconnected', false, 11],
    ['group open with a point', { group: { full: false, totalBytes: 100 } }, 'resyncing', false, 0.5],
    ['nothing replicated yet', { latestPoint: null, pointCount: 0, group: { full: true, totalBytes: 1024 } }, 'initial-sync', false, 8.5],
  ] as const)('%s', (_n, over, state, synced, lag) => {
    const s = buildVolumeStatus({ ...base, ...(over as Partial<StatusInput>) });
    expect(s.state).toBe(state);
    expect(s.synced).toBe(synced);
    expect(s.lagSeconds).toBeCloseTo(lag);
  });

  it('reports resync progress and ISO times', () => {
    const s = buildVolumeStatus({ ...base, group: { full: true, totalBytes: 1000 }, progress: { full: true, doneBytes: 250, totalBytes: 1000 } });
    expect(s.resync).toEqual({ active: true, full: true, doneBytes: 250, totalBytes: 1000, percent: 25 });
    expect(s.latestPoint).toEqual({ epoch: 5, seq: 50, time: new Date(9_000).toISOString() });
    expect(s.durableTime).toBe(new Date(9_000).toISOString());
    expect(buildVolumeStatus({ ...base, agent: null }).agent).toBeNull();
  });
});
