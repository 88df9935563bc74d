/**
 * VolumeStatus (replication-spec "Hub HTTP status API"), computed by one pure
 * function from a store snapshot and the agent facts of the current (or last)
 * session, so the rules below are testable with plain tables:
 *  - state: disconnected > initial-sync/resyncing (group open, or nothing
 *    replicated yet) > in-sync (synced) > behind;
 *  - synced: connected, no open group, agent reports no dirty bytes, and the
 *    newest point covers the newest write the agent acknowledged;
 *  - lagSeconds: 0 when synced, else the age of the newest point measured on
 *    the agent's clock (its newest acknowledged write) while connected, on the
 *    hub's clock while disconnected.
 */
import { AgentStatus } from '../proto/codec';

export type VolumeState = 'initial-sync' | 'resyncing' | 'in-sync' | 'behind' | 'disconnected';

export interface PointJson {
  epoch: number;
  seq: number;
  time: string;
}

export interface VolumeStatus {
  name: string;
  uuid: string;
  size: number;
  regionSize: number;
  generation: number;
  agentId: string;
  connected: boolean;
  state: VolumeState;
  durableEpoch: number;
  durableSeq: number;
  durableTime: string | null;
  latestPoint: PointJson | null;
  agent: { ackedSeq: number; ackedTime: string | null; dirtyBytes: number; queueBytes: number; ahead: boolean } | null;
  lagBytes: number;
  lagSeconds: number;
  synced: boolean;
  /** When the hub last heard the agent's status report (wait-synced waits for one newer than its start). */
  agentStatusTime: string | null;
  resync: { active: boolean; full: boolean; doneBytes: number; totalBytes: number; percent: number } | null;
  journalBytes: number;
  recoveryPoints: number;
  /** Failed over to a recovery view: the agent is fenced until failback. */
  failedOver: boolean;
  /** Id of the volume's failover view, if any. */
  failoverView: string | null;
  /** The journal is over its budget and an open view pins older history (history cannot be shortened). */
  retentionBlocked: boolean;
}

export interface StatusInput {
  meta: { name: string; uuid: string; size: number; regionSize: number; generation: number; agentId: string; createdMs: number };
  connected: boolean;
  durableEpoch: number;
  durableSeq: number;
  durableTimeMs: number | null;
  latestPoint: { epoch: number; seq: number; timeMs: number } | null;
  pointCount: number;
  group: { full: boolean; totalBytes: number } | null;
  /** Resync progress reported by the current session, if any. */
  progress: { full: boolean; doneBytes: number; totalBytes: number } | null;
  agent: AgentStatus | null;
  /** When the hub last received the agent's status (null: never in this session). */
  agentStatusAtMs?: number | null;
  /** Newest record seq received from the agent in this session (-1: none). */
  receivedSeq?: number;
  journalBytes: number;
  nowMs: number;
  failedOver?: boolean;
  failoverView?: string | null;
  retentionBlocked?: boolean;
}

const iso = (ms: number | null): string | null => (ms === null || ms <= 0 ? null : new Date(ms).toISOString());

export function buildVolumeStatus(s: StatusInput): VolumeStatus {
  const a = s.agent;
  const point = s.latestPoint;
  // a record received but not yet sealed into a point means the agent is
  // ahead of its last status report: not synced, whatever that report said
  const synced =
    s.connected &&
    s.group === null &&
    a !== null &&
    a.dirtyBytes === 0 &&
    point !== null &&
    point.seq >= a.ackedSeq &&
    point.seq >= (s.receivedSeq ?? -1);
  let state: VolumeState;
  if (!s.connected) state = 'disconnected';
  else if (s.group !== null || point === null) state = point === null ? 'initial-sync' : 'resyncing';
  else state = synced ? 'in-sync' : 'behind';
  let lagSeconds = 0;
  if (!synced) {
    const ref = s.connected && a && a.ackedTimeMs > 0 ? a.ackedTimeMs : s.nowMs;
    lagSeconds = Math.max(0, ref - (point ? point.timeMs : s.meta.createdMs)) / 1000;
  }
  let resync: VolumeStatus['resync'] = null;
  if (s.group !== null || s.progress !== null) {
    const total = s.progress?.totalBytes ?? s.group?.totalBytes ?? 0;
    const done = Math.min(s.progress?.doneBytes ?? 0, total);
    resync = {
      active: s.group !== null,
      full: (s.group?.full ?? false) || (s.progress?.full ?? false),
      doneBytes: done,
      totalBytes: total,
      percent: total > 0 ? Math.round((done / total) * 1000) / 10 : 0,
    };
  }
  return {
    name: s.meta.name,
    uuid: s.meta.uuid,
    size: s.meta.size,
    regionSize: s.meta.regionSize,
    generation: s.meta.generation,
    agentId: s.meta.agentId,
    connected: s.connected,
    state,
    durableEpoch: s.durableEpoch,
    durableSeq: s.durableSeq,
    durableTime: iso(s.durableTimeMs),
    latestPoint: point ? { epoch: point.epoch, seq: point.seq, time: new Date(point.timeMs).toISOString() } : null,
    agent: a
      ? { ackedSeq: a.ackedSeq, ackedTime: iso(a.ackedTimeMs), dirtyBytes: a.dirtyBytes, queueBytes: a.queueBytes, ahead: a.ahead }
      : null,
    lagBytes: synced || !a ? 0 : a.dirtyBytes,
    lagSeconds,
    synced,
    agentStatusTime: iso(s.agentStatusAtMs ?? null),
    resync,
    journalBytes: s.journalBytes,
    recoveryPoints: s.pointCount,
    failedOver: s.failedOver ?? false,
    failoverView: s.failoverView ?? null,
    retentionBlocked: s.retentionBlocked ?? false,
  };
}
