/** Public surface of rephub. */
export { createHub, DEFAULT_JOURNAL_BYTES } from './hub';
export type { Hub, HubConfig, HubPorts, HubStatus } from './hub';
export { ViewManager } from './views';
export type { ViewJson } from './views';
export type { LagSampleJson } from './lag-history';
export type { VolumeStatus, VolumeState, PointJson } from './status';
export type { RouteHandler, RouteResult } from './server';
export { RecoveryVolume } from './recovery-volume';
export type { RecoveryMode } from './recovery-volume';
export type { RecoveryPoint, ReplicaStore } from './replica-store';
export type { VolumeRegistry } from './volumes';
export type { FailbackJson, FailbackState } from './failback-plan';
