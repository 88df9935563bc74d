import * as fs from 'node:fs';
import * as path from 'node:path';
import { Agent, AgentConfig, AgentEvent, createAgent } from '../../../agent';
import { checkReplicaFiles } from '../../../agent/reference-log';
import { BitmapStore } from '../../../agent/bitmap-store';
import { testLogger } from '../../../common/log';
import { NbdClient } from '../../../common/nbd/client';
import { FakeHub } from '../../helpers/fake-hub';
import { useTmpDir } from '../../helpers/tmpdir';
import { sleep, waitFor } from '../../helpers/wait-for';

const K = 1024;
const MiB = 1024 * K;
const SIZE = 8 * MiB;
const REGION = 64 * K;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 7 + seed * 13 + 1) & 0xff;
  return b;
}

describe('agent replication against a scripted hub', () => {
  const tmp = useTmpDir('agent-repl-');
  let hub: FakeHub;
  let agents: Agent[] = [];

  beforeEach(async () => {
    hub = await FakeHub.start();
  });
  afterEach(async () => {
    for (const a of agents) await a.stop().catch(() => undefined);
    agents = [];
    await hub.close();
  });

  function config(over: Partial<NonNullable<AgentConfig['hub']>> = {}, extra: Partial<AgentConfig> = {}): AgentConfig {
    return {
      stateDir: path.join(tmp.path, 'state'),
      volumes: [{ name: 'vol1', path: path.join(tmp.path, 'vol1.img'), size: SIZE }],
      nvmeListen: null,
      nbdListen: null,
      hub: {
        url: hub.url,
        ackMode: 'async',
        queueBytes: 4 * MiB,
        resyncRate: 0,
        regionSize: REGION,
        extentSize: MiB,
        epochIntervalMs: 5,
        statusIntervalMs: 100,
        reconnectBaseMs: 50,
        reconnectMaxMs: 200,
        ...over,
      },
      referenceLog: path.join(tmp.path, 'ref.log'),
      logger: testLogger('agent'),
      ...extra,
    };
  }

  async function start(c: AgentConfig): Promise<Agent> {
    const a = createAgent(c);
    agents.push(a);
    await a.start();
    return a;
  }

  const volumeBytes = (): Buffer => fs.readFileSync(path.join(tmp.path, 'vol1.img'));
  const repl = (a: Agent) => a.status().volumes[0]!.replication!;

  async function settled(a: Agent): Promise<void> {
    await waitFor(() => repl(a).state === 'streaming' && repl(a).dirtyBytes === 0 && !repl(a).resync?.active, {
      timeoutMs: 15_000,
      what: 'agent in sync',
    });
    expect(hub.images.get('vol1')!.equals(volumeBytes())).toBe(true);
  }

  test('initial FULL sync ships every region (zero regions as zeroes records), then live writes converge', async () => {
    // pre-existing data before the agent ever ran
    const initial = Buffer.alloc(SIZE);
    pattern(3 * REGION, 1).copy(initial, 5 * REGION);
    fs.writeFileSync(path.join(tmp.path, 'vol1.img'), initial);
    const events: AgentEvent[] = [];
    const a = await start(config({ epochIntervalMs: 1000 })); // so the flush (not the timer) seals
    a.on('event', (e) => events.push(e));
    await hub.waitForResyncEnd();
    await settled(a);
    const writes = hub.all().filter((m) => m.type === 'write');
    const resync = writes.filter((m) => m.type === 'write' && m.write.origin === 'resync');
    const shipped = resync.reduce((n, m) => n + (m.type === 'write' ? m.write.length : 0), 0);
    expect(shipped).toBe(SIZE);
    expect(resync.filter((m) => m.type === 'write' && m.write.kind === 'data').reduce((n, m) => n + (m.type === 'write' ? m.write.length : 0), 0)).toBe(3 * REGION);
    const begin = hub.all().find((m) => m.type === 'resyncBegin');
    expect(begin).toMatchObject({ resyncBegin: { full: true, totalBytes: SIZE } });
    expect(events.some((e) => e.type === 'resync-end')).toBe(true);
    expect(events.some((e) => e.type === 'resync-progress')).toBe(true);

    const dev = a.device('vol1');
    await dev.write(100 * K, pattern(200 * K, 2));
    await dev.writeZeroes(6 * REGION, REGION);
    await dev.trim(0, 4 * K);
    await dev.flush();
    await settled(a);
    const seals = hub.all().filter((m) => m.type === 'seal');
    expect(seals.some((m) => m.type === 'seal' && m.seal.reason === 'flush')).toBe(true);
    // seq strictly increasing across the stream
    const seqs = hub.all().flatMap((m) => (m.type === 'write' ? [m.write.seq] : []));
    for (let i = 1; i < seqs.length; i++) expect(seqs[i]!).toBeGreaterThan(seqs[i - 1]!);
    // the hub's latest recovery point equals a sealed prefix of the reference log
    const point = hub.latestPoint('vol1')!;
    const ref = path.join(tmp.path, 'ref.log');
    const check = checkReplicaFiles(ref, point.image, { size: SIZE, regionSize: REGION, epoch: point.epoch, base: initial });
    expect(check).toMatchObject({ ok: true, matching: [point.epoch] });
    // and the checker can fail: the replica is not the volume as of the first point
    const first = hub.points.get('vol1')![0]!;
    expect(checkReplicaFiles(ref, first.image, { size: SIZE, regionSize: REGION, epoch: point.epoch, base: initial }).ok).toBe(false);
  });

  test('NBD WRITE_ZEROES with NO_HOLE ships a zeroes record, not zero data, and leaves the range allocated', async () => {
    const a = await start(config({}, { nbdListen: { host: '127.0.0.1', port: 0 } }));
    await hub.waitForResyncEnd();
    await settled(a);
    const dev = a.device('vol1');
    await dev.write(8 * REGION, pattern(2 * REGION, 9));
    await settled(a);
    const before = hub.all().length;
    const nbd = await NbdClient.connect({ host: '127.0.0.1', port: a.status().nbd!.port, exportName: 'vol1' });
    try {
      await nbd.writeZeroes(8 * REGION, 2 * REGION, { noHole: true });
      await nbd.flush();
    } finally {
      await nbd.close();
    }
    await settled(a);
    const writes = hub.all().slice(before).flatMap((m) => (m.type === 'write' ? [m.write] : []));
    expect(writes.map((w) => ({ kind: w.kind, offset: w.offset, length: w.length, data: w.data.length }))).toEqual([
      { kind: 'zeroes', offset: 8 * REGION, length: 2 * REGION, data: 0 },
    ]);
    expect(volumeBytes().subarray(8 * REGION, 10 * REGION).equals(Buffer.alloc(2 * REGION))).toBe(true);
    // FileDevice writes zeroes, never punches: the range stays allocated
    const st = fs.statSync(path.join(tmp.path, 'vol1.img'));
    expect(st.blocks * 512).toBeGreaterThanOrEqual(2 * REGION);
  });

  test('disconnect: writes keep succeeding, reconnect resumes and ships only the dirty regions', async () => {
    const a = await start(config());
    await hub.waitForResyncEnd();
    await settled(a);
    hub.refuseNext('busy', 'hold on', 1);
    hub.dropAll();
    await waitFor(() => repl(a).state !== 'streaming');
    const dev = a.device('vol1');
    await dev.write(2 * MiB, pattern(4 * K, 3)); // one region while the hub is away
    await dev.write(5 * MiB + 10, pattern(100, 4));
    expect(repl(a).ahead).toBe(true);
    await waitFor(() => repl(a).refused !== null, { what: 'refusal recorded' });
    expect(repl(a).refused).toMatchObject({ code: 'busy', message: 'hold on' });
    await hub.waitForResyncEnd(2);
    await settled(a);
    const third = hub.sessions[hub.sessions.length - 1]!;
    expect(third.hello!.generation).toBe(1);
    const begin = third.messages.find((m) => m.type === 'resyncBegin');
    expect(begin).toMatchObject({ resyncBegin: { full: false, totalBytes: 2 * REGION } });
    expect(repl(a).reconnects).toBe(1);
  });

  test('overflow: a stalled hub makes the agent go ahead with a bounded queue, then it catches up', async () => {
    const queueBytes = 512 * K;
    const a = await start(config({ queueBytes }));
    await hub.waitForResyncEnd();
    await settled(a);
    hub.stall();
    const dev = a.device('vol1');
    let maxQueue = 0;
    for (let i = 0; i < 160; i++) {
      await dev.write(((i * 3) % 128) * REGION, pattern(REGION, i));
      maxQueue = Math.max(maxQueue, repl(a).queueBytes);
    }
    expect(repl(a).ahead).toBe(true);
    // the bound holds up to one record (plus envelope) of slack
    expect(maxQueue).toBeLessThanOrEqual(queueBytes + 1 * MiB + 4 * K);
    hub.unstall();
    await waitFor(() => !repl(a).ahead, { timeoutMs: 15_000, what: 'ahead cleared' });
    await settled(a);
    const point = hub.latestPoint('vol1')!;
    const check = checkReplicaFiles(path.join(tmp.path, 'ref.log'), point.image, { size: SIZE, regionSize: REGION, base: Buffer.alloc(SIZE) });
    expect(check.ok).toBe(true);
  });

  test('sync mode: a write completes only after the hub acked its epoch', async () => {
    const a = await start(config({ ackMode: 'sync' }));
    await hub.waitForResyncEnd();
    await settled(a);
    hub.setAcks(false);
    let done = false;
    const p = a.device('vol1').write(0, pattern(4 * K, 9)).then(() => (done = true));
    await sleep(150);
    expect(done).toBe(false);
    hub.setAcks(true);
    await p;
    expect(done).toBe(true);
    // degrade (default): with the hub gone, sync writes complete locally
    hub.setAcks(false);
    const q = a.device('vol1').write(8 * K, pattern(4 * K, 10));
    await sleep(50);
    hub.dropAll();
    await q;
  });

  test('onLinkFailure fail-writes: writes fail while no session streams', async () => {
    hub.refuseNext('busy', 'not now', 100);
    const a = await start(config({ onLinkFailure: 'fail-writes' }));
    await expect(a.device('vol1').write(0, pattern(512, 1))).rejects.toMatchObject({ code: 'E_IO' });
  });

  test('async mode: writes never wait for the hub', async () => {
    const a = await start(config());
    await hub.waitForResyncEnd();
    hub.setAcks(false);
    for (let i = 0; i < 20; i++) await a.device('vol1').write(i * REGION, pattern(REGION, i));
    expect(repl(a).dirtyBytes).toBeGreaterThan(0);
    hub.setAcks(true);
    await settled(a);
  });

  test('clean restart keeps identity, generation and resumes with nothing to resend', async () => {
    const a = await start(config());
    await hub.waitForResyncEnd();
    await a.device('vol1').write(MiB, pattern(8 * K, 5));
    await settled(a);
    const before = a.status();
    await a.stop();
    const b = await start(config());
    expect(b.status().volumes[0]).toMatchObject({ uuid: before.volumes[0]!.uuid, nsid: 1 });
    expect(b.status().agentId).toBe(before.agentId);
    await hub.waitForResyncEnd(2);
    const last = hub.sessions[hub.sessions.length - 1]!;
    expect(last.hello).toMatchObject({ generation: 1, volumeUuid: before.volumes[0]!.uuid });
    expect(last.hello!.nextSeq).toBeGreaterThan(hub.sessions[0]!.messages.filter((m) => m.type === 'write').length);
    expect(last.messages.find((m) => m.type === 'resyncBegin')).toMatchObject({ resyncBegin: { full: false, totalBytes: 0 } });
    await settled(b);
  });

  test('the bitmap file is saved once a resync group is acked, so a crash right after initial sync resends nothing', async () => {
    const a = await start(config({ bitmapPersistIntervalMs: 0 }));
    await hub.waitForResyncEnd();
    await settled(a);
    const store = new BitmapStore(path.join(tmp.path, 'state', 'volumes', 'vol1'), testLogger('bitmap'));
    await waitFor(() => store.load(REGION, SIZE).bitmap.countSet(0, SIZE / REGION) === 0, {
      timeoutMs: 5_000,
      what: 'persisted bitmap empty after the initial sync',
    });
  });
});
