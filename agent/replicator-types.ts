/**
 * Types of the replicator's public surface: options, status snapshot and the
 * typed events the CLI renders (progress bars, state lines).
 */
import { BlockDevice } from '../common/block/device';
import type { BulkReader } from './resync';
import { Logger } from '../common/log';
import { Welcome } from '../proto/codec';
import { BackoffPolicy, LinkState } from './hub-link';
import { IdentityStore, VolumeIdentity } from './identity';
import { ReferenceLogWriter } from './reference-log';
import { RegionState } from './region-state';

export type AckMode = 'async' | 'sync';
export type LinkFailurePolicy = 'degrade' | 'fail-writes';

export interface ReplicatorOptions {
  agentId: string;
  identity: VolumeIdentity;
  identityStore: IdentityStore;
  /** The device below the filter (resync reads). */
  device: BlockDevice;
  /** Page-cache-bypassing reader of the same volume for resync (agent.ts: a DirectReader); device.read() when absent. */
  bulkReader?: BulkReader;
  regions: RegionState;
  /** Persists the in-memory bitmap (activity-log.ts); used before a FULL sync. */
  persistBitmap(): Promise<void>;
  url: string;
  token?: string;
  ca?: Buffer;
  ackMode: AckMode;
  onLinkFailure: LinkFailurePolicy;
  queueBytes: number;
  resyncRate: number;
  epochIntervalMs?: number;
  forceFullSync?: boolean;
  referenceLog?: ReferenceLogWriter;
  logger: Logger;
  /** Tuning, mostly for tests. */
  statusIntervalMs?: number;
  maxRecordBytes?: number;
  heartbeatIntervalMs?: number;
  backoffPolicy?: BackoffPolicy;
  refuseBackoffMs?: number;
  highWaterMark?: number;
}

/** The failback side of a session (agent/failback.ts). */
export interface FailbackParticipant {
  /** Welcome said 'failback': roll the volume over; resolves with the generation to resume at. */
  run(welcome: Welcome, signal: AbortSignal): Promise<{ generation: number; durableEpoch: number; durableSeq: number }>;
  /** Any other Welcome: settle what an interrupted failback left behind. */
  onNormalWelcome(welcome: Welcome): Promise<void>;
}

export interface ResyncProgress {
  active: boolean;
  full: boolean;
  resyncId: number;
  doneBytes: number;
  totalBytes: number;
}

export interface ReplicationStatus {
  volume: string;
  state: LinkState;
  generation: number;
  dirtyBytes: number;
  queueBytes: number;
  lastAckedEpoch: number;
  lastAckedSeq: number;
  reconnects: number;
  ahead: boolean;
  resync: ResyncProgress | null;
  refused: { code: string; message: string; atMs: number } | null;
  lastError: string | null;
}

export type ReplicationEvent =
  | { type: 'state'; volume: string; from: LinkState; to: LinkState; reason: string }
  | { type: 'connected'; volume: string; generation: number; syncMode: 'resume' | 'full' }
  | { type: 'disconnect'; volume: string; reason: string }
  | { type: 'refused'; volume: string; code: string; message: string }
  | { type: 'ahead'; volume: string; ahead: boolean; reason: string }
  | { type: 'resync-start'; volume: string; resyncId: number; full: boolean; totalBytes: number }
  | { type: 'resync-progress'; volume: string; resyncId: number; doneBytes: number; totalBytes: number }
  | { type: 'resync-end'; volume: string; resyncId: number; epoch: number }
  | { type: 'ack'; volume: string; epoch: number; seq: number; dirtyBytes: number }
  | { type: 'failback'; volume: string; phase: 'start' | 'done'; generation: number };
