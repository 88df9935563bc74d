/** Public surface of the agent: the CLI imports only from here. */
export { createAgent } from './agent';
export type { Agent, AgentConfig, AgentEvent, AgentHubConfig, AgentStatus, VolumeStatus } from './agent';
export type { ReplicationEvent, ReplicationStatus, ResyncProgress } from './replicator';
export type { LinkState } from './hub-link';
export { checkReplica, checkReplicaFiles, parseReferenceLog } from './reference-log';
export type { CheckOptions, CheckResult, RefEntry } from './reference-log';
