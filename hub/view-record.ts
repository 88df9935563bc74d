/**
 * Pure pieces of recovery views (no sockets; file I/O only in read/write of
 * view.json):
 *  - point selection: the `at` selector of the recovery API ("latest", an ISO
 *    time, or an exact epoch as a decimal string or a JSON number) parsed into
 *    a PointSelector, then resolved against a volume's retained points;
 *  - the persisted view record <dataDir>/views/<id>/view.json, written
 *    atomically once the view is exported, and read back on hub start;
 *  - identities derived from the view id alone (export name, NQN, serial,
 *    NGUID, UUID), so a restarted hub re-exports a view under the same names
 *    and an initiator sees the same namespace.
 */
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { ReplError, asReplError } from '../common/errors';
import { writeFileAtomic } from './journal-storage';
import { RecoveryPoint } from './replica-store';
import { PointJson } from './status';

export type PointSelector = { kind: 'latest' } | { kind: 'time'; timeMs: number } | { kind: 'epoch'; epoch: number };

export type ViewKind = 'test' | 'failover';

/** Parses the API's `at` (undefined = latest); anything else is E_INVALID. */
export function parsePointSelector(at: unknown): PointSelector {
  if (at === undefined || at === null || at === 'latest') return { kind: 'latest' };
  if (typeof at === 'number') {
    if (Number.isSafeInteger(at) && at >= 0) return { kind: 'epoch', epoch: at };
    throw ReplError.invalid(`at: epoch ${at} is not a non-negative integer`);
  }
  if (typeof at !== 'string') throw ReplError.invalid(`at: expected 'latest', an epoch or an ISO time, got ${typeof at}`);
  const t = at.trim();
  if (/^\d{1,15}$/.test(t)) return { kind: 'epoch', epoch: Number(t) };
  const ms = /^\d{4}-\d{2}-\d{2}/.test(t) ? Date.parse(t) : NaN;
  if (Number.isNaN(ms)) {
    throw ReplError.invalid(`at: expected 'latest', an epoch number or an ISO-8601 time, got '${t.slice(0, 80)}'`);
  }
  return { kind: 'time', timeMs: ms };
}

/**
 * The point a selector names among `points` (journal order): latest = the
 * newest; time = the newest point at or before it; epoch = exactly that epoch
 * (the newest such point if a volume reused an epoch). E_RANGE when there is
 * no such point ("point outside retention").
 */
export function selectPoint(points: readonly RecoveryPoint[], selector: PointSelector, volume: string): RecoveryPoint {
  const newest = points[points.length - 1];
  if (!newest) throw new ReplError('E_RANGE', `volume ${volume} has no recovery point yet (initial sync running)`);
  let found: RecoveryPoint | undefined;
  switch (selector.kind) {
    case 'latest':
      return newest;
    case 'time':
      for (const p of points) if (p.timeMs <= selector.timeMs) found = p;
      break;
    case 'epoch':
      for (const p of points) if (p.epoch === selector.epoch) found = p;
      break;
  }
  if (found) return found;
  const oldest = points[0]!;
  const what = selector.kind === 'time' ? new Date(selector.timeMs).toISOString() : `epoch ${selector.epoch}`;
  throw new ReplError(
    'E_RANGE',
    `point outside retention: ${what} of ${volume} (retained: epoch ${oldest.epoch} at ${iso(oldest.timeMs)} .. ` +
      `epoch ${newest.epoch} at ${iso(newest.timeMs)})`,
  );
}

const iso = (ms: number): string => new Date(ms).toISOString();

export function pointJson(p: RecoveryPoint): PointJson {
  return { epoch: p.epoch, seq: p.seq, time: iso(p.timeMs) };
}

// ---- persisted record ---------------------------------------------------------

export const VIEW_FILE = 'view.json';

export interface ViewRecord {
  format: 1;
  id: string;
  volume: string;
  kind: ViewKind;
  readOnly: boolean;
  /** The recovery point (position identifies it in the store's journal). */
  point: RecoveryPoint;
  /** Volume generation when the view was made (part of the overlay's base id). */
  generation: number;
  createdMs: number;
  readyMs: number;
}

/** View ids double as NBD export names and NQN suffixes. */
export const VIEW_ID_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$/;

const isNat = (v: unknown): v is number => typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;

export function validateViewRecord(v: unknown): ViewRecord {
  const r = v as Partial<ViewRecord> | null;
  const p = r?.point as Partial<RecoveryPoint> | undefined;
  const ok =
    r !== null &&
    typeof r === 'object' &&
    r.format === 1 &&
    typeof r.id === 'string' &&
    VIEW_ID_RE.test(r.id) &&
    typeof r.volume === 'string' &&
    (r.kind === 'test' || r.kind === 'failover') &&
    typeof r.readOnly === 'boolean' &&
    p !== undefined &&
    p !== null &&
    [p.epoch, p.seq, p.timeMs, p.position].every(isNat) &&
    isNat(r.generation) &&
    isNat(r.createdMs) &&
    typeof r.readyMs === 'number' &&
    r.readyMs >= 0;
  if (!ok) throw ReplError.io('view record is malformed');
  return r as ViewRecord;
}

/** Reads <dir>/view.json; null when the file does not exist. */
export async function readViewRecord(dir: string): Promise<ViewRecord | null> {
  let text: string;
  try {
    text = await fs.promises.readFile(path.join(dir, VIEW_FILE), 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw asReplError(err);
  }
  try {
    return validateViewRecord(JSON.parse(text));
  } catch (err) {
    throw ReplError.io(`${path.join(dir, VIEW_FILE)}: ${(err as Error).message}`, err);
  }
}

export async function writeViewRecord(dir: string, record: ViewRecord): Promise<void> {
  validateViewRecord(record);
  await fs.promises.mkdir(dir, { recursive: true });
  await writeFileAtomic(path.join(dir, VIEW_FILE), JSON.stringify(record, null, 1) + '\n');
}

// ---- identities -----------------------------------------------------------------

export const VIEW_NQN_PREFIX = 'nqn.2024-01.io.blockrep:view:';

/** A fresh id "<volume>-<kind>-<6 hex>" not in `taken`. */
export function newViewId(volume: string, kind: ViewKind, taken: (id: string) => boolean): string {
  for (let i = 0; i < 64; i++) {
    const id = `${volume}-${kind}-${crypto.randomBytes(3).toString('hex')}`;
    if (!taken(id)) return id;
  }
  throw new ReplError('E_BUSY', `no free view id for ${volume}`);
}

export interface ViewIdentity {
  exportName: string;
  nqn: string;
  /** NVMe serial: 20 printable characters. */
  serial: string;
  nguid: Buffer;
  uuid: string;
}

/** Deterministic in (hubId, view id): a restart keeps every name and namespace id. */
export function viewIdentity(hubId: string, id: string): ViewIdentity {
  const digest = crypto.createHash('sha256').update(`blockrep-view\0${hubId}\0${id}`, 'utf8').digest();
  const u = Buffer.from(digest.subarray(16, 32));
  u[6] = (u[6]! & 0x0f) | 0x80; // RFC 9562 version 8 (custom, here: hash-derived)
  u[8] = (u[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const h = u.toString('hex');
  return {
    exportName: id,
    nqn: `${VIEW_NQN_PREFIX}${id}`,
    serial: `V${digest.subarray(0, 10).toString('hex').slice(0, 19)}`,
    nguid: Buffer.from(digest.subarray(0, 16)),
    uuid: `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`,
  };
}
