/**
 * Identity: what must stay identical across agent restarts, kept in the state
 * directory as small JSON files written atomically (tmp, fsync, rename, fsync
 * of the directory):
 *
 *   STATE/agent.json                 { version, agentId, nqn, serial }
 *   STATE/volumes/NAME/identity.json { version, name, uuid, nguid, nsid, size,
 *                                      generation, durableEpoch, nextSeq, nextEpoch }
 *   STATE/volumes/NAME/activity.log, dirty.bitmap   (activity-log.ts, bitmap-store.ts)
 *
 * The NVMe subsystem NQN, serial and each namespace's NGUID/UUID/NSID come from
 * here, so a host sees the same namespaces after a restart. nsid is assigned
 * once (lowest free number) and never reused for another volume name.
 * nextSeq/nextEpoch are reservations: the replicator persists a ceiling above
 * what it uses, so sequence numbers never go backwards after a crash.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ReplError } from '../common/errors';
import { fsyncDir } from './bitmap-store';

export interface AgentIdentity {
  version: 1;
  agentId: string;
  nqn: string;
  serial: string;
}

export interface VolumeIdentity {
  version: 1;
  name: string;
  uuid: string;
  /** 32 hex digits (16 bytes). */
  nguid: string;
  nsid: number;
  size: number;
  generation: number;
  durableEpoch: number;
  nextSeq: number;
  nextEpoch: number;
}

const VOLUME_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

export function validVolumeName(name: string): boolean {
  return VOLUME_NAME.test(name);
}

/** Writes `value` as JSON to `file` atomically and durably. */
export function writeJsonAtomic(file: string, value: unknown): void {
  const tmp = `${file}.tmp`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify(value, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  fsyncDir(path.dirname(file));
}

function readJson<T>(file: string): T | null {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw ReplError.io(`cannot read ${file}`, err);
  }
  try {
    return JSON.parse(text) as T;
  } catch (err) {
    throw new ReplError('E_INVALID', `${file} is not valid JSON; fix or remove it`, { cause: err });
  }
}

export class IdentityStore {
  private constructor(
    readonly stateDir: string,
    readonly agent: AgentIdentity,
  ) {}

  /** Loads or creates STATE/agent.json. `nqn` overrides the NQN of a new state dir only. */
  static open(stateDir: string, options: { nqn?: string } = {}): IdentityStore {
    fs.mkdirSync(path.join(stateDir, 'volumes'), { recursive: true });
    const file = path.join(stateDir, 'agent.json');
    let agent = readJson<AgentIdentity>(file);
    if (!agent) {
      const agentId = crypto.randomUUID();
      agent = {
        version: 1,
        agentId,
        nqn: options.nqn ?? `nqn.2024-01.io.blockrep:agent:${agentId}`,
        serial: agentId.replace(/-/g, '').slice(0, 20),
      };
      writeJsonAtomic(file, agent);
    } else if (options.nqn && options.nqn !== agent.nqn) {
      agent = { ...agent, nqn: options.nqn };
      writeJsonAtomic(file, agent);
    }
    if (typeof agent.agentId !== 'string' || typeof agent.nqn !== 'string') throw ReplError.invalid(`${file}: missing fields`);
    return new IdentityStore(stateDir, agent);
  }

  volumeDir(name: string): string {
    if (!validVolumeName(name)) throw ReplError.invalid(`volume name '${name}' must match ${VOLUME_NAME}`);
    return path.join(this.stateDir, 'volumes', name);
  }

  private volumeFile(name: string): string {
    return path.join(this.volumeDir(name), 'identity.json');
  }

  /** Loads or creates the identity of volume `name` of `size` bytes. */
  volume(name: string, size: number): VolumeIdentity {
    const file = this.volumeFile(name);
    const existing = readJson<VolumeIdentity>(file);
    if (existing) {
      if (existing.size !== size) {
        throw ReplError.invalid(`volume ${name} was ${existing.size} bytes and is now ${size}; resizing is not supported`);
      }
      return existing;
    }
    fs.mkdirSync(this.volumeDir(name), { recursive: true });
    const id: VolumeIdentity = {
      version: 1,
      name,
      uuid: crypto.randomUUID(),
      nguid: crypto.randomBytes(16).toString('hex'),
      nsid: this.freeNsid(),
      size,
      generation: 0,
      durableEpoch: 0,
      nextSeq: 1,
      nextEpoch: 1,
    };
    writeJsonAtomic(file, id);
    return id;
  }

  private freeNsid(): number {
    const used = new Set<number>();
    for (const name of fs.readdirSync(path.join(this.stateDir, 'volumes'))) {
      const v = validVolumeName(name) ? readJson<VolumeIdentity>(this.volumeFile(name)) : null;
      if (v) used.add(v.nsid);
    }
    let nsid = 1;
    while (used.has(nsid)) nsid++;
    return nsid;
  }

  saveVolume(v: VolumeIdentity): void {
    writeJsonAtomic(this.volumeFile(v.name), v);
  }
}
