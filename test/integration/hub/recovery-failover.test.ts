/**
 * Failover, hub restart with live views, and the retention pin of views,
 * through the hub's HTTP API with fake agents feeding a real hub.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NvmeTcpHost } from '../../../common/nvme-tcp/initiator';
import { FakeAgent, makeHello } from '../../helpers/fake-agent';
import { useTmpDir } from '../../helpers/tmpdir';
import { waitFor } from '../../helpers/wait-for';
import { KiB, MiB, Running, api, closeNbd, connectAgent, fill, nbd, pairAgent, startHub, stopAll, stopHub, writeAndSeal } from './recovery-harness';

const tmp = useTmpDir('hub-failover-');
const SIZE = 4 * MiB;
const hosts: NvmeTcpHost[] = [];

afterEach(async () => {
  for (const h of hosts.splice(0)) await h.close().catch(() => undefined);
  await stopAll();
});

async function readByte(r: Running, id: string, offset: number, length = 4 * KiB): Promise<number | 'mixed'> {
  const c = await nbd(r.ports.nbdPort!, id);
  try {
    const data = await c.read(offset, length);
    return data.equals(fill(length, data[0]!)) ? data[0]! : 'mixed';
  } finally {
    await closeNbd(c);
  }
}

async function writeView(r: Running, id: string, offset: number, byte: number): Promise<void> {
  const c = await nbd(r.ports.nbdPort!, id);
  await c.write(offset, fill(4 * KiB, byte));
  await c.flush();
  await closeNbd(c);
}

async function expectRefused(r: Running): Promise<void> {
  const c: FakeAgent = await connectAgent(r);
  const { refuse } = await c.hello(makeHello({ volumeSize: SIZE, generation: 1 }));
  expect(refuse?.code).toBe('failed-over');
  expect((await c.closed).code).toBe(4004);
}

describe('failover', () => {
  it('fences the agent, keeps test views and other volumes going, and refuses a second failover', async () => {
    const r = await startHub(tmp.path);
    const a = await pairAgent(r, { volumeSize: SIZE });
    const b = await pairAgent(r, { volumeSize: SIZE, volumeName: 'vol2', volumeUuid: 'uuid-2', agentId: 'agent-2' });
    await writeAndSeal(a, [{ offset: 0, data: fill(64 * KiB, 0xa1) }]);
    const test = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: 'latest' })).body;
    const epochB = await writeAndSeal(a, [{ offset: 0, data: fill(64 * KiB, 0xb2) }]);

    const res = await api(r.ports.httpPort, 'POST', '/v1/volumes/vol1/failover', { at: 'latest' });
    expect(res.status).toBe(201);
    const view = res.body.view;
    expect(view).toMatchObject({ volume: 'vol1', kind: 'failover', readOnly: false, point: { epoch: epochB } });
    expect(view.id).toMatch(/^vol1-failover-[0-9a-f]{6}$/);
    expect(res.body.volume).toMatchObject({ name: 'vol1', failedOver: true, failoverView: view.id, connected: false });
    expect((await a.closed).code).toBe(4004);
    await expectRefused(r);

    const again = await api(r.ports.httpPort, 'POST', '/v1/volumes/vol1/failover', {});
    expect({ status: again.status, code: again.body.code }).toEqual({ status: 409, code: 'E_BUSY' });
    const del = await api(r.ports.httpPort, 'DELETE', `/v1/views/${view.id}`);
    expect({ status: del.status, code: del.body.code }).toEqual({ status: 409, code: 'E_BUSY' });

    // test views of the failed-over volume keep working and can still be made
    expect(await readByte(r, test.id, 0)).toBe(0xa1);
    const test2 = await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: 'latest', readOnly: true });
    expect(test2.status).toBe(201);
    expect(await readByte(r, test2.body.id, 0)).toBe(0xb2);

    // the failover view is writable and tracks what changed
    expect(await readByte(r, view.id, 0)).toBe(0xb2);
    await writeView(r, view.id, 64 * KiB, 0xc3);
    expect(await readByte(r, view.id, 64 * KiB)).toBe(0xc3);
    expect(r.hub.views.overlay(view.id)!.changedRanges()).toEqual([{ offset: 64 * KiB, length: 4 * KiB, zero: false }]);
    expect(await readByte(r, 'vol1', 64 * KiB)).toBe(0); // the replica is untouched

    // another volume replicates on
    const e2 = await writeAndSeal(b, [{ offset: 0, data: fill(4 * KiB, 0xd4) }]);
    expect((await api(r.ports.httpPort, 'GET', '/v1/volumes/vol2')).body).toMatchObject({ failedOver: false, connected: true });
    expect(r.hub.volumes.store('vol2')!.latestPoint()!.epoch).toBe(e2);
    const status = (await api(r.ports.httpPort, 'GET', '/v1/status')).body;
    expect(status.volumes.find((v: { name: string }) => v.name === 'vol1')).toMatchObject({ failedOver: true, failoverView: view.id });
  });

  it('brings live views and the failed-over state back after a hub restart', async () => {
    let r = await startHub(tmp.path);
    const a = await pairAgent(r, { volumeSize: SIZE });
    const epochA = await writeAndSeal(a, [{ offset: 0, data: fill(64 * KiB, 0xa1) }]);
    const test = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: epochA })).body;
    const ro = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: epochA, readOnly: true })).body;
    await writeView(r, test.id, 8 * KiB, 0x5e);
    const failover = (await api(r.ports.httpPort, 'POST', '/v1/volumes/vol1/failover', { at: String(epochA) })).body.view;
    await writeView(r, failover.id, 16 * KiB, 0xf0);
    const host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: r.ports.nvmePort!, subnqn: failover.nvme.nqn, kato: 0 });
    const idsBefore = await host.namespaceIds(1);
    await host.close();
    const before = (await api(r.ports.httpPort, 'GET', '/v1/views')).body.views;
    expect(before).toHaveLength(3);
    await stopHub(r);

    r = await startHub(tmp.path);
    const after = (await api(r.ports.httpPort, 'GET', '/v1/views')).body.views;
    const strip = (v: any) => ({ ...v, nbd: { ...v.nbd, uri: undefined, port: undefined }, nvme: { ...v.nvme, trsvcid: undefined } });
    expect(after.map(strip)).toEqual(before.map(strip));
    expect(after.find((v: { id: string }) => v.id === test.id).overlayBytes).toBe(4 * KiB);
    expect(await readByte(r, test.id, 0)).toBe(0xa1);
    expect(await readByte(r, test.id, 8 * KiB)).toBe(0x5e);
    expect(await readByte(r, ro.id, 8 * KiB)).toBe(0xa1);
    expect(await readByte(r, failover.id, 16 * KiB)).toBe(0xf0);
    expect(await readByte(r, failover.id, 8 * KiB)).toBe(0xa1);
    const h2 = await NvmeTcpHost.connect({ host: '127.0.0.1', port: r.ports.nvmePort!, subnqn: failover.nvme.nqn, kato: 0 });
    hosts.push(h2);
    const idsAfter = await h2.namespaceIds(1);
    expect(idsAfter.nguid!.equals(idsBefore.nguid!)).toBe(true);
    expect(idsAfter.uuid).toBe(idsBefore.uuid);
    expect((await h2.read(1, 16 * KiB, 4 * KiB)).equals(fill(4 * KiB, 0xf0))).toBe(true);
    expect((await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1')).body).toMatchObject({ failedOver: true, failoverView: failover.id });
    await expectRefused(r);

    // a discarded test view is gone for good, also across the next restart
    expect((await api(r.ports.httpPort, 'DELETE', `/v1/views/${test.id}`)).status).toBe(200);
    await stopHub(r);
    r = await startHub(tmp.path);
    expect((await api(r.ports.httpPort, 'GET', '/v1/views')).body.views.map((v: { id: string }) => v.id).sort()).toEqual(
      [ro.id, failover.id].sort(),
    );
    expect(fs.existsSync(path.join(tmp.path, 'views', test.id))).toBe(false);
  });

  it('refuses a forced full sync (replica re-creation) while views of the volume are open', async () => {
    const r = await startHub(tmp.path);
    const a = await pairAgent(r, { volumeSize: SIZE });
    await writeAndSeal(a, [{ offset: 0, data: fill(4 * KiB, 0xa1) }]);
    const view = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1' })).body;
    await a.close();
    const other = await connectAgent(r);
    const hello = makeHello({ volumeSize: SIZE, volumeUuid: 'uuid-new', forceFullSync: true });
    expect((await other.hello(hello)).refuse?.code).toBe('busy');
    expect(await readByte(r, view.id, 0)).toBe(0xa1);
    expect((await api(r.ports.httpPort, 'DELETE', `/v1/views/${view.id}`)).status).toBe(200);
    const third = await connectAgent(r);
    expect((await third.hello(hello)).welcome?.syncMode).toBe('full');
  });

  it('removes a view directory whose creation never finished', async () => {
    fs.mkdirSync(path.join(tmp.path, 'views', 'vol1-test-abcdef'), { recursive: true });
    fs.writeFileSync(path.join(tmp.path, 'views', 'vol1-test-abcdef', 'scratch.img'), 'x');
    const r = await startHub(tmp.path);
    expect(fs.existsSync(path.join(tmp.path, 'views', 'vol1-test-abcdef'))).toBe(false);
    expect((await api(r.ports.httpPort, 'GET', '/v1/views')).body.views).toEqual([]);
  });
});

describe('retention and views', () => {
  it('a view pins its point: the journal budget cannot fold it away; status reports the block', async () => {
    const r = await startHub(tmp.path, { journalBytes: 17 * MiB, retentionIntervalMs: 50 });
    const a = await pairAgent(r, { volumeSize: 8 * MiB });
    const epochA = await writeAndSeal(a, [{ offset: 0, data: fill(64 * KiB, 0xa1) }]);
    const view = (await api(r.ports.httpPort, 'POST', '/v1/views', { volume: 'vol1', at: epochA })).body;
    const block = fill(MiB, 0xb2);
    for (let i = 0; i < 24; i++) await writeAndSeal(a, [{ offset: 0, data: block }]);
    const st = await waitFor(async () => {
      const s = (await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1')).body;
      return s.retentionBlocked ? s : null;
    });
    expect(st.journalBytes).toBeGreaterThan(17 * MiB);
    expect(await readByte(r, view.id, 0, 64 * KiB)).toBe(0xa1);
    expect(await readByte(r, 'vol1', 0, 64 * KiB)).toBe(0xb2);
    const points = (await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1/points')).body.points;
    expect(points.some((p: { epoch: number }) => p.epoch === epochA)).toBe(true);

    expect((await api(r.ports.httpPort, 'DELETE', `/v1/views/${view.id}`)).status).toBe(200);
    const freed = await waitFor(async () => {
      const s = (await api(r.ports.httpPort, 'GET', '/v1/volumes/vol1')).body;
      return !s.retentionBlocked && s.journalBytes <= 17 * MiB ? s : null;
    });
    expect(freed.recoveryPoints).toBeGreaterThan(0);
    expect(await readByte(r, 'vol1', 0, 64 * KiB)).toBe(0xb2);
  });
});
