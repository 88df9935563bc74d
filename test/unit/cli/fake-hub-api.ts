/**
 * In-memory stand-in for the hub's recovery API (HubApi) for unit tests:
 * routes by method + path, records every call, errors as ReplErrors the way
 * cli/hub-client.ts produces them.
 */
import { ReplError } from '../../../common/errors';
import { HubApi, PointJson, ViewJson } from '../../../cli/commands/recovery-api';
import { VolumeStatusJson } from '../../../cli/commands/status';

export function volumeStatus(overrides: Partial<VolumeStatusJson> = {}): VolumeStatusJson {
  return {
    name: 'vol1', uuid: 'u-1', size: 1 << 20, regionSize: 65536, agentId: 'agent-1', state: 'in-sync', connected: true, generation: 1,
    durableEpoch: 42, durableSeq: 1000, durableTime: '2024-05-01T10:00:00.000Z',
    latestPoint: { epoch: 42, seq: 1000, time: '2024-05-01T10:00:00.000Z' },
    agent: { ackedSeq: 1003, ackedTime: '2024-05-01T10:00:00.750Z', dirtyBytes: 0, queueBytes: 0, ahead: false },
    lagBytes: 0, lagSeconds: 0.75, synced: false, resync: null, journalBytes: 0, recoveryPoints: 10,
    failedOver: false, failoverView: null, retentionBlocked: false, agentStatusTime: null,
    ...overrides,
  };
}

export function viewJson(overrides: Partial<ViewJson> = {}): ViewJson {
  return {
    id: 'vol1-test-3f9a', volume: 'vol1', kind: 'test', readOnly: false,
    point: { epoch: 42, seq: 1000, time: '2024-05-01T10:00:00.000Z' },
    createdAt: '2024-05-01T10:00:05.000Z', readyMs: 12,
    nbd: { uri: 'nbd://127.0.0.1:10810/vol1-test-3f9a', host: '127.0.0.1', port: 10810, export: 'vol1-test-3f9a' },
    nvme: { traddr: '127.0.0.1', trsvcid: '4430', nqn: 'nqn.2024-05.io.blockrep:vol1-test-3f9a' },
    overlayBytes: 0,
    ...overrides,
  };
}

type Handler = (body: unknown) => unknown;

export class FakeHubApi implements HubApi {
  readonly calls: { method: string; path: string; body?: unknown }[] = [];
  readonly routes = new Map<string, Handler>();
  points: PointJson[] = [{ epoch: 42, seq: 1000, time: '2024-05-01T10:00:00.000Z' }];

  constructor(view: ViewJson = viewJson()) {
    this.on('GET', '/v1/volumes/vol1', () => volumeStatus());
    this.on('GET', '/v1/volumes/vol1/lag-history', () => ({
      volume: 'vol1',
      samples: [
        { time: '2024-05-01T09:59:50.000Z', lagSeconds: 0.2, lagBytes: 4096 },
        { time: '2024-05-01T09:59:55.000Z', lagSeconds: 1.5, lagBytes: 65536 },
      ],
    }));
    this.on('POST', '/v1/views', () => view);
    this.on('DELETE', `/v1/views/${view.id}`, () => ({ discarded: view.id, overlayBytes: 8192 }));
    this.on('GET', `/v1/views/${view.id}/checksums`, () => ({ id: view.id, regionSize: 65536, size: 1 << 20, algorithm: 'sha256', regions: new Array(16).fill('00') }));
  }

  on(method: string, path: string, handler: Handler): this {
    this.routes.set(`${method} ${path}`, handler);
    return this;
  }

  count(method: string, path: string): number {
    return this.calls.filter((c) => c.method === method && c.path === path).length;
  }

  private async handle<T>(method: string, path: string, body?: unknown): Promise<T> {
    this.calls.push({ method, path, body });
    await Promise.resolve();
    const h = this.routes.get(`${method} ${path}`);
    if (!h) throw new ReplError('E_NOT_FOUND', `no route ${method} ${path}`);
    return h(body) as T;
  }

  get<T>(path: string): Promise<T> {
    return this.handle('GET', path);
  }
  post<T>(path: string, body: unknown = {}): Promise<T> {
    return this.handle('POST', path, body);
  }
  delete<T>(path: string): Promise<T> {
    return this.handle('DELETE', path);
  }
}
