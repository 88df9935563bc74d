/**
 * The only module that touches protobufjs. Encodes and decodes the two
 * envelopes of proto/replication.proto, turns 64-bit integers into numbers
 * after a range check, rejects envelopes without a body, unknown enum values
 * and malformed bytes with ReplError('E_PROTOCOL'), and returns our own
 * discriminated unions. Pure: Buffer in, typed value out.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as protobuf from 'protobufjs';
import { ReplError } from '../common/errors';

export const PROTOCOL_VERSION = 1;
/** Largest envelope either side accepts (a 4 MiB write plus headers). */
export const MAX_MESSAGE_BYTES = 8 * 1024 * 1024;

export type WriteKind = 'data' | 'zeroes' | 'trim';
export type WriteOrigin = 'live' | 'resync';
export type SyncMode = 'resume' | 'full' | 'failback';
export type SealReason = 'timer' | 'flush' | 'fua' | 'resync-end' | 'shutdown';
export type RefuseCode =
  | 'unspecified'
  | 'auth'
  | 'version'
  | 'busy'
  | 'uuid-mismatch'
  | 'stale-generation'
  | 'failed-over'
  | 'invalid';

export interface Hello {
  protocolVersion: number;
  agentId: string;
  volumeName: string;
  volumeUuid: string;
  volumeSize: number;
  blockSize: number;
  regionSize: number;
  generation: number;
  durableEpoch: number;
  token: string;
  forceFullSync: boolean;
  nextSeq: number;
  nextEpoch: number;
}
export interface Welcome {
  protocolVersion: number;
  hubId: string;
  generation: number;
  syncMode: SyncMode;
  durableEpoch: number;
  durableSeq: number;
  resyncOpen: boolean;
}
export interface Refuse {
  code: RefuseCode;
  message: string;
}
export interface Write {
  seq: number;
  epoch: number;
  offset: number;
  length: number;
  kind: WriteKind;
  origin: WriteOrigin;
  /** Present (length bytes) only for kind 'data'. */
  data: Buffer;
  crc32c: number;
  timeMs: number;
}
export interface Seal {
  epoch: number;
  lastSeq: number;
  timeMs: number;
  reason: SealReason;
}
export interface ResyncBegin {
  resyncId: number;
  full: boolean;
  totalBytes: number;
}
export interface ResyncEnd {
  resyncId: number;
  epoch: number;
}
export interface AgentStatus {
  ackedSeq: number;
  ackedTimeMs: number;
  dirtyBytes: number;
  queueBytes: number;
  ahead: boolean;
  resyncDoneBytes: number;
  resyncTotalBytes: number;
}
export interface Goodbye {
  reason: string;
}
export interface Ack {
  durableEpoch: number;
  durableSeq: number;
}
export interface FailbackRange {
  offset: number;
  length: number;
}
export interface FailbackDirty {
  ranges: FailbackRange[];
  last: boolean;
}
export interface FailbackAck {
  appliedBytes: number;
}
export interface FailbackApplied {
  generation: number;
  appliedBytes: number;
}
export interface FailbackBegin {
  totalBytes: number;
}
export interface FailbackData {
  offset: number;
  length: number;
  kind: WriteKind;
  /** Present (length bytes) only for kind 'data'. */
  data: Buffer;
  crc32c: number;
}
export interface FailbackEnd {
  generation: number;
  shippedBytes: number;
}
export interface FailbackDone {
  generation: number;
  durableEpoch: number;
  durableSeq: number;
}
/** Most ranges one FailbackDirty may carry (keeps the message far below MAX_MESSAGE_BYTES). */
export const MAX_FAILBACK_RANGES = 65536;

export type AgentMessage =
  | { type: 'hello'; hello: Hello }
  | { type: 'write'; write: Write }
  | { type: 'seal'; seal: Seal }
  | { type: 'resyncBegin'; resyncBegin: ResyncBegin }
  | { type: 'resyncEnd'; resyncEnd: ResyncEnd }
  | { type: 'status'; status: AgentStatus }
  | { type: 'goodbye'; goodbye: Goodbye }
  | { type: 'failbackDirty'; failbackDirty: FailbackDirty }
  | { type: 'failbackAck'; failbackAck: FailbackAck }
  | { type: 'failbackApplied'; failbackApplied: FailbackApplied };

export type HubMessage =
  | { type: 'welcome'; welcome: Welcome }
  | { type: 'refuse'; refuse: Refuse }
  | { type: 'ack'; ack: Ack }
  | { type: 'goodbye'; goodbye: Goodbye }
  | { type: 'failbackBegin'; failbackBegin: FailbackBegin }
  | { type: 'failbackData'; failbackData: FailbackData }
  | { type: 'failbackEnd'; failbackEnd: FailbackEnd }
  | { type: 'failbackDone'; failbackDone: FailbackDone };

/** The hub -> agent messages of a failback (agent/failback.ts consumes them). */
export type HubFailbackMessage = Extract<HubMessage, { type: 'failbackBegin' | 'failbackData' | 'failbackEnd' | 'failbackDone' }>;
/** The agent -> hub messages of a failback (hub/failback.ts consumes them). */
export type AgentFailbackMessage = Extract<AgentMessage, { type: 'failbackDirty' | 'failbackAck' | 'failbackApplied' }>;

// ---- schema loading -------------------------------------------------------

function findProto(): string {
  const candidates = [
    path.join(__dirname, 'replication.proto'),
    path.join(__dirname, '..', '..', 'proto', 'replication.proto'),
  ];
  for (const c of candidates) if (fs.existsSync(c)) return c;
  throw ReplError.internal(`replication.proto not found (looked in ${candidates.join(', ')})`);
}

// 64-bit fields decode to plain numbers instead of Long objects (five per
// Write record otherwise): our values stay below 2^53, and toNumber() below
// refuses any decoded value that is not a safe integer, so a larger one on
// the wire is still an error rather than a rounded number. Set before the
// schema loads: field defaults and reader methods are fixed then.
protobuf.util.Long = null as unknown as typeof protobuf.util.Long;
protobuf.configure();
const root = protobuf.loadSync(findProto());
const AgentMessageType = root.lookupType('blockrep.v1.AgentMessage');
const HubMessageType = root.lookupType('blockrep.v1.HubMessage');

/** Enum tables: wire number <-> our string names, in declaration order. */
const ENUMS = {
  'blockrep.v1.WriteKind': ['data', 'zeroes', 'trim'],
  'blockrep.v1.WriteOrigin': ['live', 'resync'],
  'blockrep.v1.SyncMode': ['resume', 'full', 'failback'],
  'blockrep.v1.SealReason': ['timer', 'flush', 'fua', 'resync-end', 'shutdown'],
  'blockrep.v1.RefuseCode': [
    'unspecified',
    'auth',
    'version',
    'busy',
    'uuid-mismatch',
    'stale-generation',
    'failed-over',
    'invalid',
  ],
} as const;

type Plain = Record<string, unknown>;

/** 64-bit fields arrive as numbers (protobufjs without Long, above); only safe non-negative integers pass. */
function toNumber(value: unknown, field: string): number {
  if (typeof value !== 'number') throw ReplError.protocol(`field ${field} is not an integer`);
  if (!Number.isSafeInteger(value) || value < 0) throw ReplError.protocol(`field ${field} out of range`);
  return value;
}

/** Converts a decoded protobufjs message of `type` into a plain object of our shape. */
function fromMessage(type: protobuf.Type, msg: protobuf.Message | Plain): Plain {
  const out: Plain = {};
  const src = msg as unknown as Plain;
  for (const field of type.fieldsArray) {
    if (field.partOf) continue; // oneof members are handled by the envelope
    const value = src[field.name];
    field.resolve();
    if (field.repeated) {
      // only repeated sub-messages are used (FailbackDirty.ranges)
      const sub = field.resolvedType;
      if (!(sub instanceof protobuf.Type)) throw ReplError.internal(`${field.name}: repeated scalars are not supported`);
      const list = value === undefined || value === null ? [] : value;
      if (!Array.isArray(list)) throw ReplError.protocol(`${field.name}: not a list`);
      out[field.name] = list.map((item) => {
        if (item === null || typeof item !== 'object') throw ReplError.protocol(`${field.name}: element is not a message`);
        return fromMessage(sub, item as Plain);
      });
    } else if (field.resolvedType instanceof protobuf.Enum) {
      const names = ENUMS[field.resolvedType.fullName.replace(/^\./, '') as keyof typeof ENUMS] as readonly string[];
      out[field.name] = enumName(names, value, field.name);
    } else if (['uint64', 'int64', 'fixed64', 'sint64', 'sfixed64'].includes(field.type)) {
      out[field.name] = value === undefined || value === null ? 0 : toNumber(value, field.name);
    } else if (field.type === 'bytes') {
      out[field.name] = bytesOf(value, field.name);
    } else if (field.type === 'bool') {
      out[field.name] = value === true;
    } else if (field.type === 'string') {
      out[field.name] = typeof value === 'string' ? value : '';
    } else {
      out[field.name] = typeof value === 'number' ? value : 0;
    }
  }
  return out;
}

/** Converts our plain object into protobufjs input: enum names back to numbers. */
function toMessage(type: protobuf.Type, value: Plain): Plain {
  const out: Plain = {};
  for (const field of type.fieldsArray) {
    const v = value[field.name];
    if (v === undefined) continue;
    field.resolve();
    if (field.repeated && field.resolvedType instanceof protobuf.Type) {
      const sub = field.resolvedType;
      out[field.name] = (v as Plain[]).map((item) => toMessage(sub, item));
    } else if (field.resolvedType instanceof protobuf.Enum) {
      const names = ENUMS[field.resolvedType.fullName.replace(/^\./, '') as keyof typeof ENUMS] as readonly string[];
      const n = names.indexOf(v as string);
      if (n < 0) throw ReplError.internal(`${field.name}: unknown enum name ${String(v)}`);
      out[field.name] = n;
    } else {
      out[field.name] = v;
    }
  }
  return out;
}

const EMPTY = Buffer.alloc(0);

function bytesOf(value: unknown, name: string): Buffer {
  // absent bytes decode to protobufjs's default, an empty array
  if (value === undefined || value === null || (Array.isArray(value) && value.length === 0)) return EMPTY;
  if (Buffer.isBuffer(value)) return value;
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw ReplError.protocol(`${name}: not bytes`);
}

function enumName<T extends string>(names: readonly T[], value: unknown, name: string): T {
  const n = typeof value === 'number' ? value : 0;
  const out = names[n];
  if (out === undefined) throw ReplError.protocol(`${name}: unknown enum value ${n}`);
  return out;
}

/**
 * fromMessage specialised for Write, the one message on the hot path (the
 * generic walk over fieldsArray costs several microseconds per record).
 * Same checks, same result.
 */
function writeFromMessage(v: Plain): Plain {
  return {
    seq: toNumber(v.seq ?? 0, 'seq'),
    epoch: toNumber(v.epoch ?? 0, 'epoch'),
    offset: toNumber(v.offset ?? 0, 'offset'),
    length: toNumber(v.length ?? 0, 'length'),
    kind: enumName(ENUMS['blockrep.v1.WriteKind'], v.kind, 'kind'),
    origin: enumName(ENUMS['blockrep.v1.WriteOrigin'], v.origin, 'origin'),
    data: bytesOf(v.data, 'data'),
    crc32c: typeof v.crc32c === 'number' ? v.crc32c : 0,
    timeMs: toNumber(v.timeMs ?? 0, 'timeMs'),
  };
}

/** Specialised conversions for hot bodies, by envelope field (the rest use the generic walk). */
const FAST_CONVERTERS = new Map<protobuf.Field, (v: Plain) => Plain>([[AgentMessageType.fields.write!, writeFromMessage]]);

function encodeEnvelope(envelope: protobuf.Type, type: string, body: Plain): Buffer {
  const field = envelope.fields[type];
  if (!field) throw ReplError.internal(`unknown message type ${type}`);
  field.resolve();
  const bodyType = field.resolvedType as protobuf.Type;
  const msg = envelope.fromObject({ [type]: toMessage(bodyType, body) });
  const bytes = envelope.encode(msg).finish();
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

function decodeEnvelope(envelope: protobuf.Type, buf: Buffer): { type: string; body: Plain } {
  if (buf.length > MAX_MESSAGE_BYTES) throw ReplError.protocol(`message of ${buf.length} bytes exceeds limit`);
  let msg: protobuf.Message;
  try {
    msg = envelope.decode(buf);
  } catch (err) {
    throw new ReplError('E_PROTOCOL', `malformed message: ${(err as Error).message}`, { cause: err });
  }
  const type = (msg as unknown as Plain).body;
  if (typeof type !== 'string') throw ReplError.protocol('message has no body');
  const field = envelope.fields[type];
  if (!field) throw ReplError.protocol(`unknown body ${type}`);
  field.resolve();
  const value = (msg as unknown as Plain)[type];
  if (value === null || typeof value !== 'object') throw ReplError.protocol(`body ${type} is not a message`);
  try {
    const convert = FAST_CONVERTERS.get(field);
    return { type, body: convert ? convert(value as Plain) : fromMessage(field.resolvedType as protobuf.Type, value as Plain) };
  } catch (err) {
    if (err instanceof ReplError) throw err;
    throw new ReplError('E_PROTOCOL', `malformed ${type}: ${(err as Error).message}`, { cause: err });
  }
}

// ---- validation of decoded bodies ----------------------------------------

function validateWrite(w: Write): void {
  if (w.kind === 'data') {
    if (w.data.length !== w.length) throw ReplError.protocol(`write seq ${w.seq}: data length ${w.data.length} != ${w.length}`);
  } else if (w.data.length !== 0) {
    throw ReplError.protocol(`write seq ${w.seq}: ${w.kind} record carries data`);
  }
}

function validateFailbackData(d: FailbackData): void {
  if (d.kind === 'data') {
    if (d.data.length !== d.length) throw ReplError.protocol(`failback data at ${d.offset}: data length ${d.data.length} != ${d.length}`);
  } else if (d.data.length !== 0) {
    throw ReplError.protocol(`failback data at ${d.offset}: ${d.kind} record carries data`);
  }
}

function validateFailbackDirty(d: FailbackDirty): void {
  if (d.ranges.length > MAX_FAILBACK_RANGES) throw ReplError.protocol(`failback dirty set: ${d.ranges.length} ranges in one message`);
}

export function encodeAgentMessage(m: AgentMessage): Buffer {
  // every union member carries its body under the key named by `type`, which is
  // also the oneof field name in the envelope
  return encodeEnvelope(AgentMessageType, m.type, (m as unknown as Record<string, Plain>)[m.type] as Plain);
}

/** Checks beyond decoding, per body type (the others need none). */
const VALIDATORS: Record<string, ((body: never) => void) | undefined> = {
  write: validateWrite,
  failbackDirty: validateFailbackDirty,
  failbackData: validateFailbackData,
};

/**
 * Every body type is the oneof field of its envelope and the `type` tag of
 * our union, with the body under the key of the same name; decodeEnvelope
 * already refused a body the envelope does not define.
 */
function decodeTyped<M extends { type: string }>(envelope: protobuf.Type, buf: Buffer): M {
  const { type, body } = decodeEnvelope(envelope, buf);
  VALIDATORS[type]?.(body as never);
  return { type, [type]: body } as unknown as M;
}

export function decodeAgentMessage(buf: Buffer): AgentMessage {
  return decodeTyped<AgentMessage>(AgentMessageType, buf);
}

export function encodeHubMessage(m: HubMessage): Buffer {
  // every union member carries its body under the key named by `type`, which is
  // also the oneof field name in the envelope
  return encodeEnvelope(HubMessageType, m.type, (m as unknown as Record<string, Plain>)[m.type] as Plain);
}

export function decodeHubMessage(buf: Buffer): HubMessage {
  return decodeTyped<HubMessage>(HubMessageType, buf);
}
