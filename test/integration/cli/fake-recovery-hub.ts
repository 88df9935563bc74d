/**
 * A small fake of the hub's recovery control API (recovery-api.md) on
 * node:http at 127.0.0.1:0, with a real NbdServer serving each view's device,
 * so repctl's recovery commands and the drill's NBD checksum check run
 * against real sockets. One volume, 'vol1', backed by a MemoryDevice.
 * Knobs: `corruptRegion` makes the checksums lie about one region;
 * selector '999' is "outside retention" (416 E_RANGE).
 */
import * as http from 'node:http';
import { createHash } from 'node:crypto';
import { AddressInfo } from 'node:net';
import { MemoryDevice } from '../../../common/block/memory-device';
import { NbdServer } from '../../../common/nbd/server';

const REGION = 64 * 1024;
export const VOLUME_SIZE = 1024 * 1024;

interface View {
  id: string;
  kind: 'test' | 'failover';
  readOnly: boolean;
  createdAt: string;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export class FakeRecoveryHub {
  readonly device = new MemoryDevice(VOLUME_SIZE);
  readonly views = new Map<string, View>();
  readonly requests: string[] = [];
  corruptRegion: number | null = null;
  failedOver = false;
  private failbackPolls = 0;
  private nextId = 1;
  private readonly server = http.createServer((req, res) => void this.route(req, res));
  private readonly nbd = new NbdServer();
  private nbdPort = 0;
  port = 0;

  readonly point = { epoch: 42, seq: 1000, time: '2024-05-01T10:00:00.000Z' };

  async start(): Promise<void> {
    const data = Buffer.alloc(VOLUME_SIZE);
    for (let i = 0; i < VOLUME_SIZE; i += 4) data.writeUInt32LE(i * 2654435761 >>> 0, i);
    await this.device.write(0, data);
    this.nbdPort = (await this.nbd.listen('127.0.0.1', 0)).port;
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
    await this.nbd.close();
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  private viewJson(v: View): unknown {
    return {
      id: v.id, volume: 'vol1', kind: v.kind, readOnly: v.readOnly, point: this.point, createdAt: v.createdAt, readyMs: 7,
      nbd: { uri: `nbd://127.0.0.1:${this.nbdPort}/${v.id}`, host: '127.0.0.1', port: this.nbdPort, export: v.id },
      nvme: { traddr: '127.0.0.1', trsvcid: '4430', nqn: `nqn.2024-05.io.blockrep:${v.id}` },
      overlayBytes: 0,
    };
  }

  private status(): unknown {
    return {
      name: 'vol1', uuid: 'u-1', size: VOLUME_SIZE, regionSize: REGION, generation: 1, agentId: 'a', connected: !this.failedOver,
      state: 'in-sync', durableEpoch: 42, durableSeq: 1000, durableTime: this.point.time, latestPoint: this.point,
      agent: { ackedSeq: 1002, ackedTime: '2024-05-01T10:00:00.500Z', dirtyBytes: 0, queueBytes: 0, ahead: false },
      lagBytes: 0, lagSeconds: 0.5, synced: false, resync: null, journalBytes: 0, recoveryPoints: 3,
    };
  }

  private async createView(body: { volume?: string; at?: string; readOnly?: boolean }, kind: 'test' | 'failover'): Promise<unknown> {
    if (body.volume !== 'vol1') throw new HttpError(404, 'E_NOT_FOUND', `unknown volume '${body.volume}'`);
    if (body.at === '999') throw new HttpError(416, 'E_RANGE', 'recovery point 999 is outside the retention window');
    const v: View = { id: `vol1-${kind}-${this.nextId++}`, kind, readOnly: body.readOnly ?? false, createdAt: new Date().toISOString() };
    this.nbd.addExport({ name: v.id, device: this.device, readOnly: true });
    this.views.set(v.id, v);
    return this.viewJson(v);
  }

  private checksums(id: string): Promise<unknown> {
    return (async () => {
      const regions: string[] = [];
      for (let off = 0; off < VOLUME_SIZE; off += REGION) {
        const h = createHash('sha256').update(await this.device.read(off, REGION));
        if (off / REGION === this.corruptRegion) h.update('x');
        regions.push(h.digest('hex'));
      }
      return { id, regionSize: REGION, size: VOLUME_SIZE, algorithm: 'sha256', regions };
    })();
  }

  private async dispatch(method: string, url: URL, body: Record<string, unknown>): Promise<[number, unknown]> {
    const p = url.pathname;
    let m: RegExpExecArray | null;
    if ((m = /^\/v1\/volumes\/([^/]+)(\/.*)?$/.exec(p))) {
      const name = decodeURIComponent(m[1] ?? '');
      if (name !== 'vol1') throw new HttpError(404, 'E_NOT_FOUND', `unknown volume '${name}'`);
      const sub = `${method} ${m[2] ?? ''}`;
      if (sub === 'GET ') return [200, this.status()];
      if (sub === 'GET /points') return [200, { volume: 'vol1', points: [{ epoch: 40, seq: 900, time: '2024-05-01T09:59:58.000Z' }, { epoch: 41, seq: 950, time: '2024-05-01T09:59:59.000Z' }, this.point] }];
      if (sub === 'GET /lag-history') return [200, { volume: 'vol1', samples: [0, 1, 2].map((i) => ({ time: new Date(Date.parse(this.point.time) - (3 - i) * 5000).toISOString(), lagSeconds: i / 2, lagBytes: i * 4096 })) }];
      if (sub === 'POST /failover') {
        if (this.failedOver) throw new HttpError(409, 'E_BUSY', 'volume vol1 is already failed over');
        this.failedOver = true;
        return [201, { view: await this.createView({ ...body, volume: 'vol1' }, 'failover'), volume: this.status() }];
      }
      if (sub === 'POST /failback' || sub === 'GET /failback') {
        if (!this.failedOver) throw new HttpError(409, 'E_INVALID', 'volume vol1 is not failed over');
        const done = method === 'GET' && ++this.failbackPolls >= 2;
        const f = { volume: 'vol1', state: done ? 'done' : 'shipping', changedBytes: 3 * 65536, agentDirtyBytes: 65536, shippedBytes: done ? 4 * 65536 : 65536, volumeSize: VOLUME_SIZE, startedAt: this.point.time, ...(done ? { finishedAt: this.point.time } : {}) };
        return [method === 'POST' ? 202 : 200, f];
      }
    }
    if (p === '/v1/views' && method === 'GET') {
      const vol = url.searchParams.get('volume');
      return [200, { views: [...this.views.values()].filter(() => !vol || vol === 'vol1').map((v) => this.viewJson(v)) }];
    }
    if (p === '/v1/views' && method === 'POST') return [201, await this.createView(body, 'test')];
    if ((m = /^\/v1\/views\/([^/]+)(\/checksums)?$/.exec(p))) {
      const id = decodeURIComponent(m[1] ?? '');
      if (!this.views.has(id)) throw new HttpError(404, 'E_NOT_FOUND', `unknown view '${id}'`);
      if (method === 'GET' && m[2]) return [200, await this.checksums(id)];
      if (method === 'DELETE' && !m[2]) {
        this.views.delete(id);
        await this.nbd.removeExport(id);
        return [200, { discarded: id, overlayBytes: 4096 }];
      }
    }
    throw new HttpError(404, 'E_NOT_FOUND', `no route ${method} ${p}`);
  }

  private async route(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const method = req.method ?? 'GET';
    const url = new URL(req.url ?? '/', 'http://x');
    this.requests.push(`${method} ${url.pathname}${url.search}`);
    let status = 200;
    let payload: unknown;
    try {
      const text = Buffer.concat(chunks).toString('utf8');
      [status, payload] = await this.dispatch(method, url, text ? (JSON.parse(text) as Record<string, unknown>) : {});
    } catch (err) {
      const e = err instanceof HttpError ? err : new HttpError(500, 'E_INTERNAL', String(err));
      [status, payload] = [e.status, { error: e.message, code: e.code }];
    }
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(JSON.stringify(payload));
  }
}
