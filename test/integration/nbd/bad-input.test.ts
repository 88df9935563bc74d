import { MemoryDevice } from '../../../common/block/memory-device';
import { NbdClient } from '../../../common/nbd/client';
import { NbdServer } from '../../../common/nbd/server';
import {
  Cmd,
  GREETING_LENGTH,
  Info,
  Opt,
  Rep,
  SIMPLE_REPLY_LENGTH,
  decodeGreeting,
  decodeReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOptionRequest,
  encodeRequest,
  readU64,
} from '../../../common/nbd/protocol';
import { testLogger } from '../../../common/log';
import { RawPeer } from './raw-peer';

const MiB = 1024 * 1024;

describe('NbdServer with misbehaving peers', () => {
  let server: NbdServer;
  let port: number;
  let device: MemoryDevice;
  const peers: RawPeer[] = [];

  async function raw(): Promise<RawPeer> {
    const p = await RawPeer.connect(port);
    peers.push(p);
    return p;
  }

  async function inTransmission(structured = false): Promise<RawPeer> {
    const p = await RawPeer.transmission(port, 'disk', structured);
    peers.push(p);
    return p;
  }

  async function stillServes(): Promise<void> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' });
    try {
      expect((await c.read(0, 512)).length).toBe(512);
    } finally {
      await c.close();
    }
  }

  beforeEach(async () => {
    server = new NbdServer({ logger: testLogger('nbd-bad'), handshakeTimeoutMs: 3000 });
    device = new MemoryDevice(4 * MiB);
    server.addExport({ name: 'disk', device });
    ({ port } = await server.listen('127.0.0.1', 0));
  });

  afterEach(async () => {
    for (const p of peers.splice(0)) p.destroy();
    await server.close();
  });

  it('sends the fixed-newstyle greeting and drops clients with unknown flags', async () => {
    const p = await raw();
    expect(decodeGreeting(await p.read(GREETING_LENGTH))).toEqual({ flags: 3 });
    p.write(encodeClientFlags(0x80));
    expect(await p.waitClosed()).toBe(true);
    expect(server.stats().protocolErrors).toBe(1);
    await stillServes();
  });

  it('skips unknown option data exactly and stays in sync', async () => {
    const p = await raw();
    await p.read(GREETING_LENGTH);
    p.write(encodeClientFlags(3));
    for (const opt of [Opt.EXTENDED_HEADERS, Opt.STARTTLS, 4242]) {
      const r = await p.option(opt, Buffer.from('IHAVEOPT pretending to be a header'));
      expect(r.map((x) => x.type)).toEqual([Rep.ERR_UNSUP]);
    }
    const go = await p.option(Opt.GO, encodeInfoRequest({ name: 'disk', requests: [Info.NAME] }));
    expect(go[go.length - 1]!.type).toBe(Rep.ACK);
  });

  it('supports NBD_OPT_EXPORT_NAME with and without the 124 zero bytes', async () => {
    for (const flags of [1, 3]) {
      const p = await raw();
      await p.read(GREETING_LENGTH);
      p.write(Buffer.concat([encodeClientFlags(flags), encodeOptionRequest(Opt.EXPORT_NAME, Buffer.from('disk'))]));
      const answer = await p.read(flags === 3 ? 10 : 134);
      expect(readU64(answer, 0)).toBe(4 * MiB);
      p.write(encodeRequest({ flags: 0, type: Cmd.READ, cookie: 5n, offset: 0, length: 512 }));
      expect(decodeReplyHeader(await p.read(SIMPLE_REPLY_LENGTH))).toEqual({ kind: 'simple', error: 0, cookie: 5n });
      await p.read(512);
      expect(p.available).toBe(0);
    }
    const bad = await raw();
    await bad.read(GREETING_LENGTH);
    bad.write(Buffer.concat([encodeClientFlags(3), encodeOptionRequest(Opt.EXPORT_NAME, Buffer.from('nope'))]));
    expect(await bad.waitClosed()).toBe(true);
  });

  it('answers oversized option data with ERR_TOO_BIG and drops absurd lengths', async () => {
    const p = await raw();
    await p.read(GREETING_LENGTH);
    p.write(encodeClientFlags(3));
    const r = await p.option(Opt.GO, Buffer.alloc(100 * 1024));
    expect(r[0]!.type).toBe(Rep.ERR_TOO_BIG);
    const header = encodeOptionRequest(Opt.GO).subarray(0, 12);
    p.write(Buffer.concat([header, Buffer.from([0xff, 0xff, 0xff, 0xff])]));
    expect(await p.waitClosed()).toBe(true);
    await stillServes();
  });

  it('hard-disconnects on a bad request magic; other connections keep working', async () => {
    const good = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'disk' });
    try {
      const p = await inTransmission();
      const req = encodeRequest({ flags: 0, type: Cmd.READ, cookie: 1n, offset: 0, length: 512 });
      req.writeUInt32BE(0x12560953, 0);
      p.write(req);
      expect(await p.waitClosed()).toBe(true);
      expect(server.stats().protocolErrors).toBe(1);
      expect((await good.read(0, 512)).length).toBe(512);
    } finally {
      await good.close();
    }
  });

  it('consumes a write payload above 32 MiB, fails it with EINVAL, and carries on', async () => {
    const p = await inTransmission();
    const len = 33 * MiB;
    p.write(encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: 7n, offset: 0, length: len }));
    p.write(Buffer.alloc(len, 0xee));
    p.write(encodeRequest({ flags: 0, type: Cmd.READ, cookie: 8n, offset: 0, length: 16 }));
    expect(decodeReplyHeader(await p.read(SIMPLE_REPLY_LENGTH, 20000))).toEqual({ kind: 'simple', error: 22, cookie: 7n });
    expect(decodeReplyHeader(await p.read(SIMPLE_REPLY_LENGTH))).toEqual({ kind: 'simple', error: 0, cookie: 8n });
    expect((await p.read(16)).equals(Buffer.alloc(16))).toBe(true);
    expect(device.stats.writes).toBe(0);
  });

  it('DISC: finishes in-flight writes, sends no reply for DISC, flushes and closes', async () => {
    const p = await inTransmission();
    const writes = Array.from({ length: 8 }, (_, i) =>
      Buffer.concat([
        encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: BigInt(i + 1), offset: i * 4096, length: 4096 }),
        Buffer.alloc(4096, i + 1),
      ]),
    );
    const flushesBefore = device.stats.flushes;
    p.write(Buffer.concat([...writes, encodeRequest({ flags: 0, type: Cmd.DISC, cookie: 99n, offset: 0, length: 0 })]));
    expect(await p.waitClosed()).toBe(true);
    expect(p.available).toBe(8 * SIMPLE_REPLY_LENGTH);
    for (let i = 0; i < 8; i++) expect((await device.read(i * 4096, 4096)).equals(Buffer.alloc(4096, i + 1))).toBe(true);
    expect(device.stats.flushes).toBe(flushesBefore + 1);
  });

  it('stops parsing (no unbounded buffering) when a client does not read its replies', async () => {
    const p = await inTransmission(true);
    p.socket.pause(); // never read: replies pile up in the kernel buffers, then in Node's
    const n = 256;
    const reqs = Array.from({ length: n }, (_, i) =>
      encodeRequest({ flags: 0, type: Cmd.READ, cookie: BigInt(i + 1), offset: 0, length: MiB }),
    );
    p.write(Buffer.concat(reqs));
    await new Promise((r) => setTimeout(r, 500));
    const served = server.stats().requests;
    expect(served).toBeGreaterThan(0);
    expect(served).toBeLessThan(n); // 256 MiB of replies were not produced up front
    p.socket.resume();
    await p.sinkUntil(n * (20 + 8 + MiB));
    expect(server.stats().requests).toBe(n);
  });

  it('tolerates peers that vanish mid-request and mid-handshake', async () => {
    const a = await inTransmission(true);
    a.write(encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: 1n, offset: 0, length: 4096 }));
    a.write(Buffer.alloc(100));
    a.destroy();
    const b = await raw();
    b.write(encodeClientFlags(3).subarray(0, 2));
    b.destroy();
    const c = await inTransmission(true);
    c.write(encodeRequest({ flags: 0, type: Cmd.READ, cookie: 1n, offset: 0, length: 2 * MiB }));
    c.destroy();
    await stillServes();
  });
});
