import * as http from 'node:http';
import { testLogger } from '../../../common/log';
import { encodeAgentMessage } from '../../../proto/codec';
import { createHub, Hub, HubConfig } from '../../../hub';
import { RecoveryVolume } from '../../../hub/recovery-volume';
import { FakeAgent, makeHello } from '../../helpers/fake-agent';
import { useTmpDir } from '../../helpers/tmpdir';
import { waitFor } from '../../helpers/wait-for';

const tmp = useTmpDir('hub-session-');
const SIZE = 1024 * 1024;
let hub: Hub | null = null;
let port = 0;
const agents: FakeAgent[] = [];

async function startHub(over: Partial<HubConfig> = {}): Promise<Hub> {
  hub = createHub({
    listen: { host: '127.0.0.1', port: 0 },
    dataDir: tmp.path,
    nbdListen: { host: '127.0.0.1', port: 0 },
    logger: testLogger('hub'),
    segmentBytes: 32 * 1024 * 1024,
    ...over,
  });
  port = (await hub.start()).httpPort;
  return hub;
}

async function connect(): Promise<FakeAgent> {
  const a = await FakeAgent.connect(`ws://127.0.0.1:${port}/v1/replicate`);
  agents.push(a);
  return a;
}

function getJson(path: string): Promise<{ status: number; body: any; text: string }> {
  return new Promise((resolve, reject) => {
    http
      .get({ host: '127.0.0.1', port, path }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          let body: unknown = null;
          try {
            body = JSON.parse(text);
          } catch {
            body = null;
          }
          resolve({ status: res.statusCode ?? 0, body, text });
        });
      })
      .on('error', reject);
  });
}

async function readLatest(name = 'vol1', offset = 0, length = SIZE): Promise<Buffer> {
  const store = hub!.volumes.store(name)!;
  const view = RecoveryVolume.latest(store);
  try {
    return await view.read(offset, length);
  } finally {
    await view.close();
  }
}

/** Pairs a fresh agent: FULL sync of an all-zero volume plus one block of data. */
async function pair(a: FakeAgent, fill = 0x11): Promise<number> {
  const { welcome } = await a.hello(makeHello());
  expect(welcome).toMatchObject({ generation: 1, syncMode: 'full', resyncOpen: false });
  a.resyncBegin(true, SIZE);
  a.write(0, SIZE, 'zeroes', 'resync');
  a.write(4096, Buffer.alloc(4096, fill));
  const e = a.resyncEnd();
  await a.ack(e);
  return welcome!.generation;
}

afterEach(async () => {
  for (const a of agents.splice(0)) a.terminate();
  await hub?.stop();
  hub = null;
});

describe('hub sessions over real WebSockets', () => {
  it('pairs, streams, acks after durability and reports status and metrics', async () => {
    await startHub();
    const a = await connect();
    await pair(a);
    expect((await readLatest()).subarray(4096, 8192).equals(Buffer.alloc(4096, 0x11))).toBe(true);
    expect(hub!.nbd!.hasExport('vol1')).toBe(true);

    a.write(0, Buffer.alloc(512, 0x22));
    const seq = a.write(SIZE - 512, Buffer.alloc(512, 0x33));
    const e = a.seal('flush');
    const ack = await a.ack(e);
    expect(ack.durableSeq).toBe(seq);
    const data = await readLatest();
    expect(data.subarray(0, 512).equals(Buffer.alloc(512, 0x22))).toBe(true);
    expect(data.subarray(SIZE - 512).equals(Buffer.alloc(512, 0x33))).toBe(true);

    a.send({
      type: 'status',
      status: { ackedSeq: seq, ackedTimeMs: Date.now(), dirtyBytes: 0, queueBytes: 0, ahead: false, resyncDoneBytes: 0, resyncTotalBytes: 0 },
    });
    const st = await waitFor(async () => {
      const r = await getJson('/v1/volumes/vol1');
      return r.body?.synced ? r : null;
    });
    expect(st.body).toMatchObject({ name: 'vol1', connected: true, state: 'in-sync', generation: 1, lagSeconds: 0, recoveryPoints: 2 });
    expect(st.body.latestPoint.epoch).toBe(e);
    const all = await getJson('/v1/status');
    expect(all.body.hubId).toBe(hub!.hubId);
    expect(all.body.volumes).toHaveLength(1);
    expect((await getJson('/v1/volumes/nope')).status).toBe(404);
    expect((await getJson('/v1/volumes/nope')).body.code).toBe('E_NOT_FOUND');
    const metrics = await getJson('/metrics');
    expect(metrics.text).toMatch(/rephub_records_total\{volume="vol1",type="data"\} 3/);
    expect(metrics.text).toMatch(/rephub_connected_agents 1/);
    expect(metrics.text).toMatch(/rephub_journal_direct_io\{volume="vol1"\} 1/); // the test directory allows O_DIRECT
    expect(metrics.text).toMatch(/rephub_ack_latency_seconds_count\{volume="vol1"\} 2/);
    expect(metrics.text).toMatch(/rephub_fsyncs_total\{volume="vol1"\} \d+/);

    await a.close();
    await waitFor(async () => (await getJson('/v1/volumes/vol1')).body.state === 'disconnected');
  });

  it.each([
    ['wrong token', { token: 'x' }, {}, 4001, 'auth'],
    ['wrong version', {}, { protocolVersion: 7 }, 4002, 'version'],
    ['bad geometry', {}, { regionSize: 1000 }, 4000, 'invalid'],
  ] as const)('refuses %s with its close code', async (_n, hubOver, helloOver, code, refuse) => {
    await startHub(hubOver);
    const a = await connect();
    const r = await a.hello(makeHello(helloOver));
    expect(r.refuse?.code).toBe(refuse);
    expect((await a.closed).code).toBe(code);
  });

  it('fences: busy, uuid mismatch, stale generation; resumes with the right generation', async () => {
    await startHub({ token: 'tok' });
    const a = await connect();
    const { welcome } = await a.hello(makeHello({ token: 'tok' }));
    expect(welcome?.syncMode).toBe('full');
    a.resyncBegin(true);
    const e = a.resyncEnd();
    await a.ack(e);

    const b = await connect();
    expect((await b.hello(makeHello({ token: 'tok', generation: 1 }))).refuse?.code).toBe('busy');
    expect((await b.closed).code).toBe(4003);
    await a.close();

    const c = await connect();
    expect((await c.hello(makeHello({ token: 'tok', volumeUuid: 'other', generation: 1 }))).refuse?.code).toBe('uuid-mismatch');
    expect((await c.closed).code).toBe(4004);

    const d = await connect();
    const resumed = await d.hello(makeHello({ token: 'tok', generation: 1, nextSeq: 10, nextEpoch: e + 1 }));
    expect(resumed.welcome).toMatchObject({ syncMode: 'resume', generation: 1, durableEpoch: e });
    await d.close();

    // a FULL re-pair (agent lost its state) moves the generation on; the old generation is now stale
    const f = await connect();
    expect((await f.hello(makeHello({ token: 'tok', generation: 0 }))).welcome).toMatchObject({ syncMode: 'full', generation: 2 });
    await f.close();
    const g = await connect();
    expect((await g.hello(makeHello({ token: 'tok', generation: 1 }))).refuse?.code).toBe('stale-generation');
    expect((await g.closed).code).toBe(4004);
  });

  it.each([
    ['bad CRC32C', (a: FakeAgent) => a.send({ type: 'write', write: { seq: 99, epoch: a.epoch, offset: 0, length: 4, kind: 'data', origin: 'live', data: Buffer.from('abcd'), crc32c: 1, timeMs: 1 } })],
    ['seq going backwards', (a: FakeAgent) => { a.write(0, Buffer.alloc(512, 0x55)); a.seq -= 2; a.write(0, Buffer.alloc(512, 0x66)); }],
    ['range outside the volume', (a: FakeAgent) => a.write(SIZE - 512, Buffer.alloc(1024, 0x77))],
    ['garbage bytes', (a: FakeAgent) => a.sendRaw(Buffer.from([0xff, 0xff, 0xff, 0x01]))],
    ['a second Hello', (a: FakeAgent) => a.send({ type: 'hello', hello: makeHello() })],
    ['resync data outside a group', (a: FakeAgent) => a.write(0, Buffer.alloc(512, 1), 'data', 'resync')],
    ['a write into a sealed epoch', (a: FakeAgent) => { a.epoch -= 1; a.write(0, Buffer.alloc(512, 9)); }],
  ])('drops the connection on %s (4000) and keeps the replica consistent', async (_n, violate) => {
    await startHub();
    const a = await connect();
    await pair(a);
    const before = await readLatest();
    a.write(8192, Buffer.alloc(512, 0x44)); // unsealed, so never part of a point
    violate(a);
    a.seal();
    expect((await a.closed).code).toBe(4000);
    expect((await readLatest()).equals(before)).toBe(true);
    // the volume is free again for the next session
    const b = await connect();
    expect((await b.hello(makeHello({ generation: 1, nextSeq: 100, nextEpoch: 100 }))).welcome?.syncMode).toBe('resume');
  });

  it('refuses anything but Hello first', async () => {
    await startHub();
    const a = await connect();
    a.send({ type: 'seal', seal: { epoch: 1, lastSeq: 0, timeMs: 0, reason: 'timer' } });
    expect((await a.closed).code).toBe(4000);
    const b = await connect();
    b.ws.send(Buffer.from('text?').toString(), { binary: false });
    expect((await b.closed).code).toBe(4000);
    void encodeAgentMessage;
  });

  it('keeps the previous point during a staged resync group, across a hub restart', async () => {
    await startHub();
    const a = await connect();
    await pair(a, 0x11);
    const first = await readLatest();
    await a.close();

    // agent lost its state: FULL again, staged
    const b = await connect();
    const { welcome } = await b.hello(makeHello({ generation: 0, nextSeq: 50, nextEpoch: 50 }));
    expect(welcome).toMatchObject({ syncMode: 'full', generation: 2 });
    b.resyncBegin(true, SIZE);
    b.write(0, Buffer.alloc(65536, 0x99), 'data', 'resync');
    b.write(4096, Buffer.alloc(512, 0x98)); // live write inside the group
    const mid = b.seal();
    await b.ack(mid);
    expect((await readLatest()).equals(first)).toBe(true);
    expect((await getJson('/v1/volumes/vol1')).body.state).toBe('resyncing');
    b.terminate();

    await hub!.stop();
    await startHub();
    expect((await readLatest()).equals(first)).toBe(true);
    const c = await connect();
    const again = await c.hello(makeHello({ generation: 2, nextSeq: 60, nextEpoch: mid + 1 }));
    expect(again.welcome).toMatchObject({ syncMode: 'resume', resyncOpen: true, durableEpoch: mid });
    c.resyncBegin(false, 65536, 2);
    c.write(65536, Buffer.alloc(65536, 0x97), 'data', 'resync');
    const end = c.resyncEnd(2);
    await c.ack(end);
    const now = await readLatest();
    expect(now.subarray(0, 4096).equals(Buffer.alloc(4096, 0x99))).toBe(true);
    expect(now.subarray(4096, 4608).equals(Buffer.alloc(512, 0x98))).toBe(true);
    expect(now.subarray(65536, 131072).equals(Buffer.alloc(65536, 0x97))).toBe(true);
    expect(hub!.volumes.store('vol1')!.latestPoint()!.epoch).toBe(end);
  });

  it('terminates a peer that stops answering pings', async () => {
    await startHub({ heartbeatIntervalMs: 50 });
    const { WebSocket } = await import('ws');
    const ws = new WebSocket(`ws://127.0.0.1:${port}/v1/replicate`, { autoPong: false });
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    await new Promise((r) => ws.once('open', r));
    ws.send(encodeAgentMessage({ type: 'hello', hello: makeHello() }), { binary: true });
    expect(await closed).toBe(1006);
  });

  it('serves 404 for other upgrade paths', async () => {
    await startHub();
    await expect(FakeAgent.connect(`ws://127.0.0.1:${port}/v1/other`)).rejects.toThrow(/404/);
  });
});
