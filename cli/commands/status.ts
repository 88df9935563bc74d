/**
 * repctl status / wait-synced: read the hub's JSON status API and print it.
 * The JSON schema is documented in README.md ("repctl status --json").
 */
import { HubClient } from '../hub-client';
import { ReplError } from '../../common/errors';
import { formatBytes } from '../../common/size';
import type { HubStatus, VolumeStatus } from '../../hub';

/** The hub's JSON shapes: one definition, owned by the hub (hub/status.ts). */
export type VolumeStatusJson = VolumeStatus;
export type HubStatusJson = HubStatus;

export async function fetchStatus(client: HubClient): Promise<HubStatusJson> {
  return client.get<HubStatusJson>('/v1/status');
}

export async function fetchVolume(client: HubClient, name: string): Promise<VolumeStatusJson> {
  try {
    return await client.get<VolumeStatusJson>(`/v1/volumes/${encodeURIComponent(name)}`);
  } catch (err) {
    if (err instanceof ReplError && err.code === 'E_NOT_FOUND') {
      throw new ReplError('E_NOT_FOUND', `unknown volume '${name}' on the hub`);
    }
    throw err;
  }
}

function pad(s: string, n: number): string {
  return s.length >= n ? s : s + ' '.repeat(n - s.length);
}

export function formatStatusTable(status: HubStatusJson): string {
  const head = ['VOLUME', 'STATE', 'DURABLE EPOCH', 'DURABLE AT', 'LAG', 'RPO', 'DIRTY', 'RESYNC'];
  const rows = status.volumes.map((v) => [
    v.name,
    v.state,
    String(v.durableEpoch),
    v.durableTime ?? '-',
    formatBytes(v.lagBytes),
    `${v.lagSeconds.toFixed(3)}s`,
    formatBytes(v.agent?.dirtyBytes ?? 0),
    v.resync?.active ? `${v.resync.percent.toFixed(1)}% of ${formatBytes(v.resync.totalBytes)}` : '-',
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (r: string[]): string => r.map((c, i) => pad(c, widths[i] ?? 0)).join('  ').trimEnd();
  const lines = [`hub ${status.hubId}: ${status.volumes.length} volume(s)`, line(head), ...rows.map(line)];
  return lines.join('\n') + '\n';
}

/**
 * Polls until the volume's latest recovery point covers everything the agent
 * acknowledged. "synced" must come with an agent status report received after
 * the first poll: the agent reports every ~500 ms, so a write acknowledged just
 * before we started is always covered by a report we wait for (the hub also
 * refuses "synced" while it holds records newer than its latest point).
 */
export async function waitSynced(
  client: HubClient,
  volume: string,
  timeoutMs: number,
  onPoll?: (v: VolumeStatusJson) => void,
): Promise<VolumeStatusJson> {
  const deadline = Date.now() + timeoutMs;
  let last: VolumeStatusJson | null = null;
  // undefined: no poll answered yet; null: the hub had no agent report then
  let firstReport: string | null | undefined;
  for (;;) {
    try {
      last = await fetchVolume(client, volume);
      onPoll?.(last);
      if (firstReport === undefined) firstReport = last.agentStatusTime;
      const fresh = last.agentStatusTime !== null && (firstReport === null || last.agentStatusTime > firstReport);
      if (last.synced && fresh) return last;
    } catch (err) {
      // an unknown volume may simply not have connected yet; anything else is fatal
      if (!(err instanceof ReplError && err.code === 'E_NOT_FOUND')) throw err;
    }
    if (Date.now() >= deadline) {
      const why = last
        ? `state ${last.state}, dirty ${formatBytes(last.agent?.dirtyBytes ?? 0)}, lag ${formatBytes(last.lagBytes)}`
        : 'volume never appeared on the hub';
      throw new ReplError('E_TIMEOUT', `volume '${volume}' not in sync after ${Math.round(timeoutMs / 1000)} s (${why})`);
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}
