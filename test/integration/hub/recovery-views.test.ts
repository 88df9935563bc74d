/**
 * Recovery views through the hub's HTTP API with a fake agent feeding a real
 * hub: lifecycle, isolation from the replica, point-in-time selection,
 * checksums, NBD and NVMe/TCP access, error codes, and a 100 GiB view.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NvmeTcpHost } from '../../../common/nvme-tcp/initiator';
import { useTmpDir } from '../../helpers/tmpdir';
import { sleep, waitFor } from '../../helpers/wait-for';
import { KiB, MiB, Running, api, closeNbd, fill, nbd, pairAgent, startHub, stopAll, writeAndSeal } from './recovery-harness';

const tmp = useTmpDir('hub-recovery-');
const SIZE = 4 * MiB;
const hosts: NvmeTcpHost[] = [];

afterEach(async () => {
  for (const h of hosts.splice(0)) await h.close().catch(() => undefined);
  await stopAll();
});

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

async function start(): Promise<Running> {
  return startHub(tmp.path);
}

describe('recovery views', () => {
  it('creates, exports, isolates, checksums and discards a test view', async () => {
    const r = await start();
    const a = await pairAgent(r, { volumeSize: SIZE });
    const epochA = await writeAndSeal(a, [
      { offset: 0, data: fill(64 * KiB, 0xaa) },
      { offset: 2 * MiB, data: fill(64 * KiB, 0xab) },
    ]);
    const points = await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1/points');
    expect(points.status).toBe(200);
    expect(points.body.volume).toBe('vol1');
    expect(points.body.points[points.body.points.length - 1]).toMatchObject({ epoch: epochA });

    const created = await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: 'latest', kind: 'test' });
    expect(created.status).toBe(201);
    const view = created.body;
    expect(view).toMatchObject({ volume: 'vol1', kind: 'test', readOnly: false, overlayBytes: 0, point: { epoch: epochA } });
    expect(view.id).toMatch(/^vol1-test-[0-9a-f]{6}$/);
    expect(view.readyMs).toBeLessThan(1000);
    expect(view.nbd).toEqual({ uri: `nbd://127.0.0.1:${r.ports.nbdPort}/${view.id}`, host: '127.0.0.1', port: r.ports.nbdPort, export: view.id });
    expect(view.nvme).toEqual({ traddr: '127.0.0.1', trsvcid: String(r.ports.nvmePort), nqn: `nqn.2024-01.io.blockrep:view:${view.id}` });
    expect((await api(r.ports.httpPort, 'GET', '/v1/views')).body.views.map((v: { id: string }) => v.id)).toEqual([view.id]);
    expect((await api(r.ports.httpPort, 'GET', '/v1/views?volume=vol1')).body.views).toHaveLength(1);

    // writes to the view land in its overlay only
    const store = r.hub.volumes.store('vol1')!;
    const records = store.journalStats.records;
    const journalBytes = store.journalBytes;
    const client = await nbd(r.ports.nbdPort!, view.id);
    expect(client.size).toBe(SIZE);
    expect((await client.read(0, 64 * KiB)).equals(fill(64 * KiB, 0xaa))).toBe(true);
    await client.write(0, fill(4 * KiB, 0x55));
    await client.write(100 * KiB, fill(4 * KiB, 0x66));
    await client.flush();
    expect((await client.read(0, 8 * KiB)).equals(Buffer.concat([fill(4 * KiB, 0x55), fill(4 * KiB, 0xaa)]))).toBe(true);
    const replica = await nbd(r.ports.nbdPort!, 'vol1');
    expect((await replica.read(0, 64 * KiB)).equals(fill(64 * KiB, 0xaa))).toBe(true);
    expect((await replica.read(100 * KiB, 4 * KiB)).equals(fill(4 * KiB, 0))).toBe(true);
    expect(store.journalStats.records).toBe(records);
    expect(store.journalBytes).toBe(journalBytes);
    expect((await api(r.ports.httpPort, 'GET', `/v1/views/${view.id}`)).body.overlayBytes).toBe(8 * KiB);

    // checksums: the hub's own reading equals what the export serves
    const sums = await api(r.ports.httpPort, 'GET', `/v1/views/${view.id}/checksums`);
    expect(sums.status).toBe(200);
    expect(sums.body).toMatchObject({ id: view.id, regionSize: MiB, size: SIZE, algorithm: 'sha256' });
    const served: string[] = [];
    for (let off = 0; off < SIZE; off += MiB) served.push(sha(await client.read(off, MiB)));
    expect(sums.body.regions).toEqual(served);

    // NVMe/TCP: discovery lists the view; the namespace serves the same bytes
    const entries = await NvmeTcpHost.discover({ host: '127.0.0.1', port: r.ports.nvmePort! });
    expect(entries).toEqual([expect.objectContaining({ subnqn: view.nvme.nqn, traddr: '127.0.0.1', trsvcid: String(r.ports.nvmePort) })]);
    const host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: r.ports.nvmePort!, subnqn: view.nvme.nqn, kato: 0 });
    hosts.push(host);
    expect((await host.read(1, 0, 128 * KiB)).equals(await client.read(0, 128 * KiB))).toBe(true);
    expect((await host.read(1, 2 * MiB, 64 * KiB)).equals(fill(64 * KiB, 0xab))).toBe(true);
    await host.write(1, 200 * KiB, fill(4 * KiB, 0x77));
    expect((await client.read(200 * KiB, 4 * KiB)).equals(fill(4 * KiB, 0x77))).toBe(true);
    await host.close();
    await closeNbd(client);

    const gone = await api(r.ports.httpPort, 'DELETE', `/v1/views/${view.id}`);
    expect(gone).toEqual({ status: 200, body: { discarded: view.id, overlayBytes: 12 * KiB } });
    expect(fs.existsSync(path.join(tmp.path, 'views', view.id))).toBe(false);
    expect((await api(r.ports.httpPort, 'GET', '/v1/views')).body.views).toEqual([]);
    await expect(nbd(r.ports.nbdPort!, view.id)).rejects.toThrow();
    await expect(NvmeTcpHost.connect({ host: '127.0.0.1', port: r.ports.nvmePort!, subnqn: view.nvme.nqn, kato: 0 })).rejects.toThrow();

    // a new view of the same point has none of the discarded writes
    const again = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: String(epochA) })).body;
    const c2 = await nbd(r.ports.nbdPort!, again.id);
    expect((await c2.read(0, 64 * KiB)).equals(fill(64 * KiB, 0xaa))).toBe(true);
    expect((await c2.read(100 * KiB, 4 * KiB)).equals(fill(4 * KiB, 0))).toBe(true);
  });

  it('opens the point asked for: epoch, time, latest; read-only views refuse writes', async () => {
    const r = await start();
    const a = await pairAgent(r, { volumeSize: SIZE });
    const epochA = await writeAndSeal(a, [{ offset: 0, data: fill(64 * KiB, 0xa1) }]);
    const pointA = (await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1/points')).body.points.find(
      (p: { epoch: number }) => p.epoch === epochA,
    );
    await sleep(5);
    await writeAndSeal(a, [{ offset: 0, data: fill(64 * KiB, 0xb2) }]);
    const read = async (at: unknown, readOnly = false): Promise<{ id: string; byte: number }> => {
      const res = await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at, readOnly });
      expect(res.status).toBe(201);
      const c = await nbd(r.ports.nbdPort!, res.body.id);
      const data = await c.read(0, 64 * KiB);
      expect(data.equals(fill(64 * KiB, data[0]!))).toBe(true);
      return { id: res.body.id, byte: data[0]! };
    };
    expect((await read(String(epochA))).byte).toBe(0xa1);
    expect((await read(epochA)).byte).toBe(0xa1);
    expect((await read(pointA.time)).byte).toBe(0xa1);
    expect((await read('latest')).byte).toBe(0xb2);
    expect((await read(undefined)).byte).toBe(0xb2);

    const ro = await read(epochA, true);
    expect(ro.byte).toBe(0xa1);
    const c = await nbd(r.ports.nbdPort!, ro.id);
    await expect(c.write(0, fill(4 * KiB, 1))).rejects.toThrow();
    expect(fs.readdirSync(path.join(tmp.path, 'views', ro.id))).toEqual(['view.json']);
    expect((await api(r.ports.httpPort, 'GET', `/v1/views/${ro.id}`)).body.readOnly).toBe(true);
    expect((await api(r.ports.httpPort, 'GET', '/v1/views')).body.views).toHaveLength(6);
  });

  it('answers bad requests with the contract error codes', async () => {
    const r = await start();
    const a = await pairAgent(r, { volumeSize: SIZE });
    const epoch = await writeAndSeal(a, [{ offset: 0, data: fill(4 * KiB, 1) }]);
    const p = r.ports.httpPort;
    const expectError = async (res: Promise<{ status: number; body: any }>, status: number, code: string): Promise<void> => {
      const { status: s, body } = await res;
      expect({ status: s, code: body?.code }).toEqual({ status, code });
      expect(typeof body.error).toBe('string');
    };
    await expectError(api(p, 'GET', '/v1/volumes/nope/points'), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'GET', '/v1/volumes/nope/lag-history'), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'nope' }), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'POST', '/v1/volumes/nope/failover', {}), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'GET', '/v1/views?volume=nope'), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'DELETE', '/v1/views/vol1-test-000000'), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'GET', '/v1/views/vol1-test-000000/checksums'), 404, 'E_NOT_FOUND');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'vol1', at: 'yesterday' }), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'vol1', at: -4 }), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'vol1', readOnly: 'yes' }), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'vol1', kind: 'failover' }), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/views', {}), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/views', [1]), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/volumes/vol1/failover', { at: 'soon' }), 400, 'E_INVALID');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'vol1', at: '2001-01-01T00:00:00Z' }), 416, 'E_RANGE');
    await expectError(api(p, 'POST', '/v1/views', { volume: 'vol1', at: String(epoch + 100) }), 416, 'E_RANGE');
    await expectError(api(p, 'POST', '/v1/volumes/vol1/failover', { at: epoch + 100 }), 416, 'E_RANGE');
    // a refused failover fenced nothing
    expect((await api(p, 'GET', '/v1/volumes/vol1')).body).toMatchObject({ failedOver: false, failoverView: null, connected: true });
    expect((await api(p, 'GET', '/v1/views')).body.views).toEqual([]);
  });

  it('makes a view of a 100 GiB volume without copying (ready well under a second)', async () => {
    const r = await start();
    const big = 100 * 1024 * MiB;
    const a = await pairAgent(r, { volumeSize: big, volumeName: 'big' });
    await writeAndSeal(a, [{ offset: 50 * 1024 * MiB, data: fill(64 * KiB, 0x42) }]);
    const t0 = Date.now();
    const res = await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'big', at: 'latest' });
    const wall = Date.now() - t0;
    expect(res.status).toBe(201);
    expect(res.body.readyMs).toBeLessThan(1000);
    expect(wall).toBeLessThan(5000); // includes HTTP; the functional bound is readyMs
    const c = await nbd(r.ports.nbdPort!, res.body.id);
    expect(c.size).toBe(big);
    expect((await c.read(50 * 1024 * MiB, 64 * KiB)).equals(fill(64 * KiB, 0x42))).toBe(true);
    await c.write(99 * 1024 * MiB, fill(4 * KiB, 0x43));
    expect((await c.read(99 * 1024 * MiB, 4 * KiB)).equals(fill(4 * KiB, 0x43))).toBe(true);
    // scratch space is sparse: only what was written is allocated
    const scratch = fs.statSync(path.join(tmp.path, 'views', res.body.id, 'scratch.img'));
    expect(scratch.size).toBe(big);
    expect(scratch.blocks * 512).toBeLessThan(16 * MiB);
  });

  it('samples lag history per volume', async () => {
    const r = await startHub(tmp.path, { lagSampleIntervalMs: 20 });
    const a = await pairAgent(r, { volumeSize: SIZE });
    await writeAndSeal(a, [{ offset: 0, data: fill(4 * KiB, 1) }]);
    const res = await waitFor(async () => {
      const h = await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1/lag-history');
      return h.body.samples.length >= 3 ? h : null;
    });
    expect(res.body.volume).toBe('vol1');
    for (const s of res.body.samples) {
      expect(Number.isNaN(Date.parse(s.time))).toBe(false);
      expect(typeof s.lagSeconds).toBe('number');
      expect(typeof s.lagBytes).toBe('number');
    }
  });
});
