/**
 * Failback end to end, in process: a real hub and a real agent (link through
 * a FlakyProxy so it can be cut), the recovery side writing through the
 * failover view's NBD export.
 *
 * Scenario: X replicated; link lost; Y written on the agent only (dirty);
 * failover at the latest point; Z written on the recovery side; the agent
 * comes back and is refused; failback: the agent volume must equal the
 * recovery volume (X + Z, Y's regions rolled back), only the delta ships,
 * and replication resumes from the new common base.
 */
import * as http from 'node:http';
import * as path from 'node:path';
import { Agent, AgentConfig, createAgent } from '../../../agent';
import { testLogger } from '../../../common/log';
import { NbdClient } from '../../../common/nbd/client';
import { createHub, Hub, HubPorts } from '../../../hub';
import { FlakyProxy } from '../../helpers/flaky-proxy';
import { useTmpDir } from '../../helpers/tmpdir';
import { waitFor } from '../../helpers/wait-for';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 32 * MiB;
const REGION = 64 * KiB;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 17 + 3) & 0xff;
  return b;
}

interface Api {
  status: number;
  body: any; // eslint-disable-line @typescript-eslint/no-explicit-any
}

function api(port: number, method: string, p: string, body?: unknown): Promise<Api> {
  const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: '127.0.0.1', port, path: p, method, headers: payload ? { 'content-type': 'application/json', 'content-length': payload.length } : {} },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          resolve({ status: res.statusCode ?? 0, body: text ? JSON.parse(text) : null });
        });
      },
    );
    req.on('error', reject);
    if (payload) req.write(payload);
    req.end();
  });
}

describe('failback of the delta', () => {
  const tmp = useTmpDir('failback-');
  let hub: Hub | null = null;
  let ports: HubPorts;
  let proxy: FlakyProxy | null = null;
  let agent: Agent | null = null;
  const clients: NbdClient[] = [];

  afterEach(async () => {
    for (const c of clients.splice(0)) await c.close().catch(() => undefined);
    await agent?.stop().catch(() => undefined);
    await proxy?.close();
    await hub?.stop();
    agent = null;
    proxy = null;
    hub = null;
  });

  async function setup(): Promise<void> {
    hub = createHub({
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: path.join(tmp.path, 'hub'),
      nbdListen: { host: '127.0.0.1', port: 0 },
      logger: testLogger('hub'),
      segmentBytes: 17 * MiB,
    });
    ports = await hub.start();
    proxy = await FlakyProxy.start({ port: ports.httpPort });
    agent = createAgent(agentConfig(proxy.url()));
    await agent.start();
  }

  function agentConfig(url: string): AgentConfig {
    return {
      stateDir: path.join(tmp.path, 'agent'),
      volumes: [{ name: 'vol1', path: path.join(tmp.path, 'vol1.img'), size: SIZE }],
      nvmeListen: null,
      nbdListen: null,
      hub: {
        url,
        ackMode: 'async',
        queueBytes: 16 * MiB,
        resyncRate: 0,
        regionSize: REGION,
        extentSize: MiB,
        epochIntervalMs: 5,
        statusIntervalMs: 50,
        reconnectBaseMs: 50,
        reconnectMaxMs: 200,
      },
      logger: testLogger('agent'),
    };
  }

  const repl = () => agent!.status().volumes[0]!.replication!;
  const hubVolume = async () => (await api(ports.httpPort, 'GET', '/v1/volumes/vol1')).body;

  async function synced(): Promise<void> {
    await waitFor(async () => repl().state === 'streaming' && repl().dirtyBytes === 0 && !repl().resync?.active && (await hubVolume()).synced, {
      timeoutMs: 20_000,
      what: 'agent in sync with the hub',
    });
  }

  async function nbd(exportName: string): Promise<NbdClient> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port: ports.nbdPort!, exportName });
    clients.push(c);
    return c;
  }

  async function readExport(exportName: string): Promise<Buffer> {
    const c = await nbd(exportName);
    const out = Buffer.alloc(SIZE);
    for (let off = 0; off < SIZE; off += 4 * MiB) (await c.read(off, 4 * MiB)).copy(out, off);
    await c.close();
    clients.splice(clients.indexOf(c), 1);
    return out;
  }

  const readAgent = (): Promise<Buffer> => agent!.device('vol1').read(0, SIZE);

  async function failbackDone(): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    return waitFor(
      async () => {
        const f = (await api(ports.httpPort, 'GET', '/v1/volumes/vol1/failback')).body;
        if (f.state === 'failed') throw new Error(`failback failed: ${f.error}`);
        return f.state === 'done' ? f : null;
      },
      { timeoutMs: 30_000, what: 'failback done' },
    );
  }

  test('ships only changed + unreplicated regions, rolls the agent to the recovery volume, resumes replication', async () => {
    await setup();
    const expected = Buffer.alloc(SIZE);
    const dev = agent!.device('vol1');
    // X: replicated
    const X = [
      { offset: 1 * MiB, data: pattern(512 * KiB, 1) },
      { offset: 10 * MiB + 4 * KiB, data: pattern(200 * KiB, 2) },
      { offset: 20 * MiB, data: pattern(REGION, 3) },
    ];
    for (const w of X) {
      await dev.write(w.offset, w.data);
      w.data.copy(expected, w.offset);
    }
    await dev.flush();
    await synced();

    // the link drops; Y only on the agent (one region overwrites X, one is fresh)
    proxy!.refuse(true);
    proxy!.cut();
    await waitFor(() => repl().state !== 'streaming', { what: 'agent disconnected' });
    const Y = [
      { offset: 20 * MiB, data: pattern(REGION, 4) },
      { offset: 25 * MiB + 8 * KiB, data: pattern(8 * KiB, 5) },
    ];
    for (const w of Y) await dev.write(w.offset, w.data);
    await dev.flush();
    expect(repl().dirtyBytes).toBe(2 * REGION);

    // fail over; refuse failback before that
    const early = await api(ports.httpPort, 'POST', '/v1/volumes/vol1/failback', {});
    expect(early.status).toBe(409);
    expect(early.body.error).toMatch(/not failed over/);
    const fo = await api(ports.httpPort, 'POST', '/v1/volumes/vol1/failover', { at: 'latest' });
    expect(fo.status).toBe(201);
    const view = fo.body.view;

    // Z on the recovery side: a fresh range, part of an X range, a zeroed range
    const c = await nbd(view.nbd.export);
    const Z = [
      { offset: 5 * MiB, data: pattern(300 * KiB, 6) },
      { offset: 1 * MiB + 64 * KiB, data: pattern(16 * KiB, 7) },
      { offset: 10 * MiB + 4 * KiB, data: Buffer.alloc(64 * KiB) },
    ];
    for (const w of Z) {
      await c.write(w.offset, w.data);
      w.data.copy(expected, w.offset);
    }
    await c.flush();
    const changedBytes = 300 * KiB + 16 * KiB + 64 * KiB;

    // the protected side comes back: refused while no failback was asked for
    proxy!.refuse(false);
    await waitFor(() => repl().refused?.code === 'failed-over', { what: 'agent refused failed-over' });

    const post = await api(ports.httpPort, 'POST', '/v1/volumes/vol1/failback', {});
    expect(post.status).toBe(202);
    expect(post.body).toMatchObject({ volume: 'vol1', volumeSize: SIZE, changedBytes });
    const f = await failbackDone();

    // the protected volume equals the recovery volume: X + Z, Y rolled back
    const local = await readAgent();
    expect(local.equals(expected)).toBe(true);
    expect(f.changedBytes).toBe(changedBytes);
    expect(f.agentDirtyBytes).toBe(2 * REGION);
    expect(f.hubAheadBytes).toBe(0);
    expect(f.shippedBytes).toBeLessThanOrEqual(changedBytes + 2 * REGION);
    expect(f.shippedBytes).toBeGreaterThanOrEqual(2 * REGION);
    expect(f.shippedBytes).toBeLessThan(SIZE / 32);
    expect(f.generation).toBeGreaterThan(1);

    // the failover view is retired, the fence lifted, the replica equals the recovery volume
    expect((await api(ports.httpPort, 'GET', '/v1/views')).body.views).toEqual([]);
    const st = await hubVolume();
    expect(st).toMatchObject({ failedOver: false, failoverView: null, generation: f.generation });
    await synced();
    expect((await readExport('vol1')).equals(expected)).toBe(true);
    expect(repl().generation).toBe(f.generation);

    // replication resumed: a new write reaches the hub's latest point
    const W = pattern(128 * KiB, 8);
    await dev.write(30 * MiB, W);
    W.copy(expected, 30 * MiB);
    await dev.flush();
    await synced();
    expect((await readExport('vol1')).equals(expected)).toBe(true);
    expect((await readAgent()).equals(expected)).toBe(true);
    // a second POST after done: nothing to fail back any more
    expect((await api(ports.httpPort, 'POST', '/v1/volumes/vol1/failback', {})).status).toBe(409);
  }, 90_000);
});
