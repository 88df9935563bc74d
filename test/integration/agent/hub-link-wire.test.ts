/**
 * HubLink on the wire: an all-zero mask on every client frame, records sent in
 * one loop turn leave in one socket writev, order and 'drain' kept.
 */
import * as net from 'node:net';
import { AddressInfo } from 'node:net';
import { WebSocket, WebSocketServer } from 'ws';
import { HubLink } from '../../../agent/hub-link';
import { testLogger } from '../../../common/log';
import { AgentMessage, decodeAgentMessage, encodeHubMessage, Hello, PROTOCOL_VERSION } from '../../../proto/codec';
import { waitFor } from '../../helpers/wait-for';

const hello = (): Hello => ({
  protocolVersion: PROTOCOL_VERSION,
  agentId: 'a1',
  volumeName: 'vol',
  volumeUuid: '00000000-0000-4000-8000-000000000001',
  volumeSize: 1 << 20,
  blockSize: 512,
  regionSize: 65536,
  generation: 1,
  durableEpoch: 0,
  token: '',
  forceFullSync: false,
  nextSeq: 1,
  nextEpoch: 1,
});

const write = (seq: number, data: Buffer): AgentMessage => ({
  type: 'write',
  write: { seq, epoch: 1, offset: seq * 4096, length: data.length, kind: 'data', origin: 'live', data, crc32c: 0, timeMs: 0 },
});

/** Masking keys of the client frames in `raw` (a stream of complete frames). */
function maskKeys(raw: Buffer): Buffer[] {
  const keys: Buffer[] = [];
  for (let pos = 0; pos + 2 <= raw.length; ) {
    let len = raw[pos + 1]! & 0x7f;
    let off = pos + 2;
    if (len === 126) (len = raw.readUInt16BE(off)), (off += 2);
    else if (len === 127) (len = Number(raw.readBigUInt64BE(off))), (off += 8);
    if ((raw[pos + 1]! & 0x80) === 0) throw new Error('unmasked client frame');
    keys.push(raw.subarray(off, off + 4));
    pos = off + 4 + len;
  }
  return keys;
}

describe('HubLink wire behaviour', () => {
  let wss: WebSocketServer;
  let link: HubLink | null = null;
  const received: AgentMessage[] = [];
  const raw: Buffer[] = [];

  beforeEach(async () => {
    received.length = 0;
    raw.length = 0;
    wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
    await new Promise<void>((r) => wss.once('listening', () => r()));
    wss.on('connection', (ws: WebSocket, req) => {
      req.socket.on('data', (d: Buffer) => raw.push(d));
      ws.on('message', (data: Buffer) => {
        const m = decodeAgentMessage(data);
        received.push(m);
        if (m.type === 'hello') {
          const welcome = { protocolVersion: PROTOCOL_VERSION, hubId: 'h', generation: 1, syncMode: 'resume' as const, durableEpoch: 0, durableSeq: 0, resyncOpen: false };
          ws.send(encodeHubMessage({ type: 'welcome', welcome }));
        }
      });
    });
  });
  afterEach(async () => {
    await link?.close();
    link = null;
    for (const c of wss.clients) c.terminate();
    await new Promise<void>((r) => wss.close(() => r()));
  });

  async function connect(highWaterMark?: number): Promise<HubLink> {
    const port = (wss.address() as AddressInfo).port;
    link = new HubLink({ url: `ws://127.0.0.1:${port}`, hello, logger: testLogger('link'), highWaterMark });
    await link.ensureConnected();
    return link;
  }

  test('every client frame carries an all-zero masking key', async () => {
    const l = await connect();
    for (let i = 1; i <= 20; i++) l.send(write(i, Buffer.alloc(i * 100, i)));
    await waitFor(() => received.length === 21);
    const keys = maskKeys(Buffer.concat(raw));
    expect(keys.length).toBeGreaterThanOrEqual(21);
    for (const k of keys) expect([...k]).toEqual([0, 0, 0, 0]);
    // the payloads arrive intact (the hub side decodes them unmasked)
    const w = received[20]!;
    expect(w.type === 'write' && w.write.data.equals(Buffer.alloc(2000, 20))).toBe(true);
  });

  test('records queued in one turn leave in one writev, in order, and drain fires', async () => {
    const l = await connect();
    let drains = 0;
    l.on('drain', () => drains++);
    const proto = net.Socket.prototype as unknown as { _writev: (...a: unknown[]) => unknown; _write: (...a: unknown[]) => unknown };
    const writev = jest.spyOn(proto, '_writev');
    const write1 = jest.spyOn(proto, '_write');
    try {
      for (let i = 1; i <= 300; i++) l.send(write(i, Buffer.alloc(4096, i & 0xff)));
      await waitFor(() => received.length === 301);
      // one corked batch: a single writev (a few at most if the socket pushes back)
      expect(writev.mock.calls.length + write1.mock.calls.length).toBeLessThanOrEqual(3);
    } finally {
      writev.mockRestore();
      write1.mockRestore();
    }
    expect(received.slice(1).map((m) => (m.type === 'write' ? m.write.seq : -1))).toEqual(Array.from({ length: 300 }, (_, i) => i + 1));
    await waitFor(() => l.queuedBytes === 0);
    expect(drains).toBeGreaterThan(0);
    expect(drains).toBeLessThan(300);
  });

  test('a queue above the high-water mark drains completely', async () => {
    const l = await connect(64 * 1024);
    const seen: number[] = [];
    l.on('drain', () => seen.push(l.queuedBytes));
    for (let i = 1; i <= 64; i++) l.send(write(i, Buffer.alloc(32 * 1024, i)));
    expect(l.queuedBytes).toBeGreaterThan(64 * 32 * 1024);
    await waitFor(() => received.length === 65);
    await waitFor(() => l.queuedBytes === 0);
    expect(seen.length).toBeGreaterThan(1);
    expect(received.slice(1).map((m) => (m.type === 'write' ? m.write.seq : -1))).toEqual(Array.from({ length: 64 }, (_, i) => i + 1));
  });
});
