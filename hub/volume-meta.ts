/**
 * Per-volume metadata file (volume.json in the volume's directory), replaced
 * atomically (tmp + fsync + rename + dir fsync). It holds what the journal
 * cannot tell: identity, geometry and the fencing generation. The generation
 * is written before the Welcome that announces it.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ReplError, asReplError } from '../common/errors';
import { writeFileAtomic } from './journal-storage';

export interface VolumeFlags {
  /** Failed over to a recovery view: the agent's stream is refused (issue 4). */
  failedOver: boolean;
}

export interface VolumeMeta {
  format: 1;
  name: string;
  uuid: string;
  size: number;
  blockSize: number;
  regionSize: number;
  generation: number;
  agentId: string;
  flags: VolumeFlags;
  createdMs: number;
}

export const META_FILE = 'volume.json';
/** Volume names double as directory and NBD export names. */
export const VOLUME_NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

function isNat(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

export function validateMeta(m: unknown): VolumeMeta {
  const v = m as Partial<VolumeMeta> | null;
  const ok =
    v !== null &&
    typeof v === 'object' &&
    v.format === 1 &&
    typeof v.name === 'string' &&
    VOLUME_NAME_RE.test(v.name) &&
    typeof v.uuid === 'string' &&
    isNat(v.size) &&
    isNat(v.blockSize) &&
    isNat(v.regionSize) &&
    isNat(v.generation) &&
    typeof v.agentId === 'string' &&
    typeof v.flags === 'object' &&
    v.flags !== null &&
    typeof v.flags.failedOver === 'boolean' &&
    isNat(v.createdMs);
  if (!ok) throw new ReplError('E_IO', 'volume metadata is malformed');
  return v as VolumeMeta;
}

export async function readMeta(dir: string): Promise<VolumeMeta> {
  let text: string;
  try {
    text = await fs.promises.readFile(path.join(dir, META_FILE), 'utf8');
  } catch (err) {
    throw asReplError(err);
  }
  try {
    return validateMeta(JSON.parse(text));
  } catch (err) {
    throw new ReplError('E_IO', `${path.join(dir, META_FILE)}: ${(err as Error).message}`, { cause: err });
  }
}

export async function writeMeta(dir: string, meta: VolumeMeta): Promise<void> {
  validateMeta(meta);
  await fs.promises.mkdir(dir, { recursive: true });
  await writeFileAtomic(path.join(dir, META_FILE), JSON.stringify(meta, null, 1) + '\n');
}
