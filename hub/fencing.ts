/**
 * Hello validation and the fencing decision (pure). Order of checks:
 *   version -> token -> well-formed hello -> busy -> unknown volume (create,
 *   FULL) -> failed over -> uuid -> geometry -> generation.
 * Generation rules (replication-spec "Session"): every FULL sync starts a new
 * common history, so it gets a generation above anything either side has seen;
 * RESUME keeps the generation. force_full_sync overrides uuid, geometry and
 * stale-generation fencing (never busy or failed-over).
 * A failed-over volume whose failback waits for its agent welcomes exactly
 * that agent (same agent id, uuid and geometry) with sync mode 'failback' at
 * the unchanged generation, whatever generation the agent presents: the
 * failback ships the recovery side's content over anything the agent holds.
 */
import * as crypto from 'node:crypto';
import { Hello, PROTOCOL_VERSION, RefuseCode, SyncMode } from '../proto/codec';
import { VOLUME_NAME_RE } from './volume-meta';

export interface KnownVolume {
  uuid: string;
  size: number;
  blockSize: number;
  generation: number;
  failedOver: boolean;
  /** Agent id of the volume's last session (failback admits only that agent). */
  agentId?: string;
  /** A failback waits for the agent (hub/failback.ts). */
  failbackPending?: boolean;
}

export interface FencingInput {
  hello: Hello;
  /** The hub's shared secret; undefined = no authentication. */
  token: string | undefined;
  volume: KnownVolume | null;
  /** Another session currently streams this volume. */
  busy: boolean;
}

export type FencingDecision =
  | { action: 'refuse'; code: RefuseCode; message: string }
  | {
      action: 'welcome';
      mode: SyncMode;
      generation: number;
      /** The volume does not exist yet. */
      create: boolean;
      /** Throw the existing replica away and start over (force_full_sync on a mismatch). */
      recreate: boolean;
    };

const MAX_VOLUME_BYTES = 2 ** 50;
const MAX_REGION_BYTES = 64 * 1024 * 1024;

/** Constant-time token comparison (hashing first equalises lengths). */
export function tokenMatches(expected: string, given: string): boolean {
  const a = crypto.createHash('sha256').update(expected, 'utf8').digest();
  const b = crypto.createHash('sha256').update(given, 'utf8').digest();
  return crypto.timingSafeEqual(a, b);
}

/** Returns why a Hello is malformed, or null. */
export function helloProblem(h: Hello): string | null {
  if (!VOLUME_NAME_RE.test(h.volumeName)) return `invalid volume name '${h.volumeName.slice(0, 80)}'`;
  if (!/^[\x21-\x7e]{1,128}$/.test(h.volumeUuid)) return 'invalid volume uuid';
  if (!/^[\x21-\x7e]{1,128}$/.test(h.agentId)) return 'invalid agent id';
  if (h.blockSize !== 512 && h.blockSize !== 4096) return `block size ${h.blockSize} is not 512 or 4096`;
  if (h.volumeSize <= 0 || h.volumeSize > MAX_VOLUME_BYTES || h.volumeSize % h.blockSize !== 0) {
    return `volume size ${h.volumeSize} is not a positive multiple of ${h.blockSize}`;
  }
  const r = h.regionSize;
  if (r < h.blockSize || r > MAX_REGION_BYTES || (r & (r - 1)) !== 0) return `region size ${r} is not a power of two in range`;
  return null;
}

export function decideHello(input: FencingInput): FencingDecision {
  const { hello, volume } = input;
  const refuse = (code: RefuseCode, message: string): FencingDecision => ({ action: 'refuse', code, message });
  if (hello.protocolVersion !== PROTOCOL_VERSION) {
    return refuse('version', `protocol version ${hello.protocolVersion} unsupported (hub speaks ${PROTOCOL_VERSION})`);
  }
  if (input.token !== undefined && !tokenMatches(input.token, hello.token)) return refuse('auth', 'wrong or missing token');
  const problem = helloProblem(hello);
  if (problem) return refuse('invalid', problem);
  if (input.busy) return refuse('busy', `another agent streams volume ${hello.volumeName}`);
  if (!volume) return { action: 'welcome', mode: 'full', generation: 1, create: true, recreate: false };
  if (volume.failedOver) {
    if (volume.failbackPending) {
      const same = volume.uuid === hello.volumeUuid && volume.agentId === hello.agentId;
      if (same && volume.size === hello.volumeSize && volume.blockSize === hello.blockSize) {
        return { action: 'welcome', mode: 'failback', generation: volume.generation, create: false, recreate: false };
      }
      return refuse('failed-over', `volume ${hello.volumeName} is failed over; failback waits for agent ${volume.agentId ?? '?'} with volume uuid ${volume.uuid}`);
    }
    return refuse('failed-over', `volume ${hello.volumeName} is failed over; wait for failback`);
  }
  const next = Math.max(volume.generation, hello.generation) + 1;
  const force = hello.forceFullSync;
  if (volume.uuid !== hello.volumeUuid) {
    if (!force) return refuse('uuid-mismatch', `volume ${hello.volumeName} belongs to uuid ${volume.uuid}`);
    return { action: 'welcome', mode: 'full', generation: next, create: false, recreate: true };
  }
  if (volume.size !== hello.volumeSize || volume.blockSize !== hello.blockSize) {
    if (!force) {
      return refuse('invalid', `volume ${hello.volumeName} is ${volume.size} bytes / ${volume.blockSize}-byte blocks on the hub`);
    }
    return { action: 'welcome', mode: 'full', generation: next, create: false, recreate: true };
  }
  const full = (mode: SyncMode = 'full'): FencingDecision => ({
    action: 'welcome',
    mode,
    generation: mode === 'full' ? next : volume.generation,
    create: false,
    recreate: false,
  });
  if (force || hello.generation === 0) return full();
  if (hello.generation < volume.generation) {
    return refuse('stale-generation', `agent generation ${hello.generation} is older than the hub's ${volume.generation}`);
  }
  if (hello.generation > volume.generation) return full();
  return full('resume');
}
