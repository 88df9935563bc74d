/**
 * Typed calls of the hub's recovery control API (recovery-api.md) for repctl:
 * one function per endpoint, JSON types as the hub sends them, and the `--at`
 * point selector parser. HTTP and error mapping stay in cli/hub-client.ts; here
 * we only add which volume/view an error was about.
 */
import { ReplError } from '../../common/errors';
import { HubClient } from '../hub-client';
import { VolumeStatusJson } from './status';

/** The part of HubClient the recovery commands use (tests pass a fake). */
export type HubApi = Pick<HubClient, 'get' | 'post' | 'delete'>;

// JSON shapes the hub sends, defined once by the hub
export type { PointJson, ViewJson, LagSampleJson, FailbackJson, FailbackState } from '../../hub';
import type { PointJson, ViewJson, LagSampleJson, FailbackJson } from '../../hub';

export interface ChecksumsJson {
  id: string;
  regionSize: number;
  size: number;
  algorithm: string;
  regions: string[];
}


const volumePath = (name: string): string => `/v1/volumes/${encodeURIComponent(name)}`;
const viewPath = (id: string): string => `/v1/views/${encodeURIComponent(id)}`;

/** Re-throws a ReplError with the same code and `what` in front of its message. */
async function about<T>(what: string, call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (err) {
    if (err instanceof ReplError && err.code !== 'E_CLOSED' && err.code !== 'E_TIMEOUT') {
      throw new ReplError(err.code, `${what}: ${err.message}`, { cause: err });
    }
    throw err;
  }
}

/**
 * `--at` selector: "latest", a decimal epoch (exact point), or a date/time
 * (newest point at or before it; normalised to ISO-8601 UTC, a time without a
 * zone is local time). Anything else is E_USAGE.
 */
export function parseAt(text: string | undefined): string {
  const t = (text ?? 'latest').trim();
  if (t === 'latest' || /^\d{1,15}$/.test(t)) return t;
  const ms = /^\d{4}-\d{2}-\d{2}/.test(t) ? Date.parse(t) : NaN;
  if (Number.isNaN(ms)) {
    throw new ReplError('E_USAGE', `--at: expected 'latest', an epoch number or an ISO time like 2024-05-01T10:00:00Z, got '${t}'`);
  }
  return new Date(ms).toISOString();
}

export function getVolume(client: HubApi, volume: string): Promise<VolumeStatusJson> {
  return about(`volume '${volume}'`, client.get<VolumeStatusJson>(volumePath(volume)));
}

export async function listViews(client: HubApi, volume?: string): Promise<ViewJson[]> {
  const query = volume ? `?volume=${encodeURIComponent(volume)}` : '';
  return (await about('list views', client.get<{ views: ViewJson[] }>(`/v1/views${query}`))).views;
}

export async function listPoints(client: HubApi, volume: string): Promise<PointJson[]> {
  return (await about(`volume '${volume}'`, client.get<{ points: PointJson[] }>(`${volumePath(volume)}/points`))).points;
}

export function createTestView(client: HubApi, volume: string, at: string, readOnly = false): Promise<ViewJson> {
  return about(
    `test view of '${volume}' at ${at}`,
    client.post<ViewJson>('/v1/views', { volume, at, readOnly, kind: 'test' }),
  );
}

export function failover(client: HubApi, volume: string, at: string): Promise<{ view: ViewJson; volume: VolumeStatusJson }> {
  return about(`failover of '${volume}' at ${at}`, client.post(`${volumePath(volume)}/failover`, { at }));
}

export function discardView(client: HubApi, id: string): Promise<{ discarded: string; overlayBytes: number }> {
  return about(`discard view '${id}'`, client.delete(viewPath(id)));
}

export function startFailback(client: HubApi, volume: string): Promise<FailbackJson> {
  return about(`failback of '${volume}'`, client.post<FailbackJson>(`${volumePath(volume)}/failback`, {}));
}

export function getFailback(client: HubApi, volume: string): Promise<FailbackJson> {
  return about(`failback of '${volume}'`, client.get<FailbackJson>(`${volumePath(volume)}/failback`));
}

export async function getChecksums(client: HubApi, id: string): Promise<ChecksumsJson> {
  const c = await about(`checksums of view '${id}'`, client.get<ChecksumsJson>(`${viewPath(id)}/checksums`));
  const regions = Array.isArray(c.regions) ? c.regions : [];
  const count = Number.isSafeInteger(c.regionSize) && c.regionSize > 0 ? Math.ceil(c.size / c.regionSize) : -1;
  if (c.algorithm !== 'sha256' || !Number.isSafeInteger(c.size) || c.size < 0 || regions.length !== count) {
    throw ReplError.protocol(`hub sent malformed checksums for view '${id}'`);
  }
  return c;
}

export async function getLagHistory(client: HubApi, volume: string): Promise<LagSampleJson[]> {
  const r = await about(`lag history of '${volume}'`, client.get<{ samples: LagSampleJson[] }>(`${volumePath(volume)}/lag-history`));
  return Array.isArray(r.samples) ? r.samples : [];
}
