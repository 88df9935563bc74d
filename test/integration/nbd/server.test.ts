import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlockDevice } from '../../../common/block/device';
import { FileDevice } from '../../../common/block/file-device';
import { MemoryDevice } from '../../../common/block/memory-device';
import { ReplError } from '../../../common/errors';
import { NbdBlockDevice, NbdClient } from '../../../common/nbd/client';
import { NbdServer } from '../../../common/nbd/server';
import { TxFlag } from '../../../common/nbd/protocol';
import { testLogger } from '../../../common/log';
import { useTmpDir } from '../../helpers/tmpdir';
import { waitFor } from '../../helpers/wait-for';

const MiB = 1024 * 1024;

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 131 + seed * 17 + (i >> 9)) & 0xff;
  return b;
}

/** A MemoryDevice whose reads at chosen offsets are slow (to observe out-of-order replies). */
class SlowReads extends MemoryDevice {
  readonly slow = new Set<number>();
  override async read(offset: number, length: number): Promise<Buffer> {
    if (this.slow.has(offset)) await new Promise((r) => setTimeout(r, 150));
    return super.read(offset, length);
  }
}

/**
 * A MemoryDevice that reads a write's data only after a random delay, the way
 * a filter that awaits before forwarding does: a payload buffer recycled
 * before write() settled would be stored with another write's bytes.
 */
class LateWrites extends MemoryDevice {
  override async write(offset: number, data: Buffer): Promise<void> {
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 4)));
    return super.write(offset, data);
  }
}

describe('NbdServer <-> NbdClient', () => {
  const tmp = useTmpDir('nbd-int-');
  let server: NbdServer;
  let port: number;
  const clients: NbdClient[] = [];
  const devices: BlockDevice[] = [];

  async function connect(exportName = 'mem', structuredReplies = true): Promise<NbdClient> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName, structuredReplies });
    clients.push(c);
    return c;
  }

  beforeEach(async () => {
    server = new NbdServer({ logger: testLogger('nbd-server'), handshakeTimeoutMs: 2000 });
    server.addExport({ name: 'mem', device: new MemoryDevice(16 * MiB), description: 'memory' });
    ({ port } = await server.listen('127.0.0.1', 0));
  });

  afterEach(async () => {
    await Promise.all(clients.splice(0).map((c) => c.close().catch(() => undefined)));
    await server.close();
    await Promise.all(devices.splice(0).map((d) => d.close()));
  });

  it('reads, writes, zeroes, trims and flushes, with structured and simple replies', async () => {
    for (const structured of [true, false]) {
      const c = await connect('mem', structured);
      expect(c.size).toBe(16 * MiB);
      expect(c.structured).toBe(structured);
      expect(c.flags & TxFlag.CAN_MULTI_CONN).toBeTruthy();
      const data = pattern(MiB, structured ? 1 : 2);
      await c.write(MiB, data, { fua: true });
      expect((await c.read(MiB, MiB)).equals(data)).toBe(true);
      await c.writeZeroes(MiB + 4096, 8192);
      await c.trim(MiB + 65536, 65536);
      await c.flush();
      await c.cache(0, MiB);
      const back = await c.read(MiB, 2 * 65536);
      const expected = Buffer.from(data.subarray(0, 2 * 65536));
      expected.fill(0, 4096, 4096 + 8192);
      expected.fill(0, 65536, 2 * 65536);
      expect(back.equals(expected)).toBe(true);
      expect((await c.read(0, 0)).length).toBe(0);
    }
  });

  it('writes through to a FileDevice and reports base:allocation only where the device has it', async () => {
    const file = path.join(tmp.path, 'disk.img');
    const dev = await FileDevice.open(file, { createSize: 8 * MiB });
    devices.push(dev);
    server.addExport({ name: 'file', device: dev });
    const c = await connect('file');
    await c.write(4096, pattern(65536, 3));
    await c.flush();
    const onDisk = fs.readFileSync(file).subarray(4096, 4096 + 65536);
    expect(onDisk.equals(pattern(65536, 3))).toBe(true);
    // FileDevice has no extents(): one data extent
    expect(await c.blockStatus(0, 8 * MiB)).toEqual([{ offset: 0, length: 8 * MiB, hole: false, zero: false }]);
    const m = await connect('mem');
    await m.write(65536, Buffer.alloc(512, 1));
    expect(await m.blockStatus(0, 3 * 65536)).toEqual([
      { offset: 0, length: 65536, hole: true, zero: true },
      { offset: 65536, length: 65536, hole: false, zero: false },
      { offset: 2 * 65536, length: 65536, hole: true, zero: true },
    ]);
    expect(await m.blockStatus(0, 3 * 65536, { reqOne: true })).toHaveLength(1);
  });

  it('serves pipelined requests concurrently and replies out of order', async () => {
    const dev = new SlowReads(4 * MiB);
    dev.slow.add(0);
    server.addExport({ name: 'slow', device: dev });
    const c = await connect('slow');
    const order: string[] = [];
    const slow = c.read(0, 4096).then(() => order.push('slow'));
    const fast = c.read(65536, 4096).then(() => order.push('fast'));
    await Promise.all([slow, fast]);
    expect(order).toEqual(['fast', 'slow']);

    // 256 concurrent writes then reads to disjoint 4 KiB blocks
    const writes = Array.from({ length: 256 }, (_, i) => c.write(i * 8192, pattern(4096, i)));
    await Promise.all(writes);
    const reads = await Promise.all(Array.from({ length: 256 }, (_, i) => c.read(i * 8192, 4096)));
    reads.forEach((r, i) => expect(r.equals(pattern(4096, i))).toBe(true));
    expect(server.stats().requests).toBeGreaterThanOrEqual(514);
  });

  it('keeps every pipelined large write intact while payload buffers are recycled', async () => {
    server.addExport({ name: 'late', device: new LateWrites(16 * MiB) });
    const c = await connect('late');
    // sizes around the pool's classes, several rounds so released buffers get reused
    const sizes = [128 * 1024, 128 * 1024 + 512, 64 * 1024, 256 * 1024, 20 * 1024, 512 * 1024];
    const writes: Array<{ offset: number; data: Buffer }> = [];
    for (let round = 0; round < 4; round++) {
      const batch = sizes.map((len, i) => ({ offset: (round * sizes.length + i) * 512 * 1024, data: pattern(len, round * 10 + i) }));
      await Promise.all(batch.map((w) => c.write(w.offset, w.data)));
      writes.push(...batch);
    }
    for (const w of writes) expect((await c.read(w.offset, w.data.length)).equals(w.data)).toBe(true);
  });

  it('serves with stream reads when static-buffer reads are off (the fallback path)', async () => {
    const plain = new NbdServer({ logger: testLogger('nbd-server'), staticReads: false });
    plain.addExport({ name: 'mem', device: new MemoryDevice(16 * MiB) });
    const addr = await plain.listen('127.0.0.1', 0);
    const c = await NbdClient.connect({ host: '127.0.0.1', port: addr.port, exportName: 'mem' });
    try {
      const writes = [0, 1, 2, 3].map((i) => ({ offset: i * MiB, data: pattern(128 * 1024 + i * 4096, 40 + i) }));
      await Promise.all(writes.map((w) => c.write(w.offset, w.data)));
      for (const w of writes) expect((await c.read(w.offset, w.data.length)).equals(w.data)).toBe(true);
    } finally {
      await c.close();
      await plain.close();
    }
  });

  it('shares one device across connections (multi-conn)', async () => {
    const a = await connect();
    const b = await connect();
    await a.write(0, pattern(8192, 9));
    await a.flush();
    expect((await b.read(0, 8192)).equals(pattern(8192, 9))).toBe(true);
    expect(server.stats().connections).toBe(2);
  });

  it('serves read-only exports with READ_ONLY and EPERM on writes', async () => {
    const dev = new MemoryDevice(MiB);
    await dev.write(0, Buffer.alloc(512, 0x5a));
    server.addExport({ name: 'ro', device: dev, readOnly: true });
    const c = await connect('ro');
    expect(c.flags & TxFlag.READ_ONLY).toBeTruthy();
    expect(c.flags & TxFlag.SEND_TRIM).toBe(0);
    expect((await c.read(0, 512)).equals(Buffer.alloc(512, 0x5a))).toBe(true);
    await expect(c.write(0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(c.writeZeroes(0, 512)).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(c.trim(0, 512)).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    expect((await dev.read(0, 512)).equals(Buffer.alloc(512, 0x5a))).toBe(true);
  });

  it('answers bad requests with the right errors and keeps serving', async () => {
    for (const structured of [true, false]) {
      const c = await connect('mem', structured);
      await expect(c.request(99, 0, 0, 0)).rejects.toMatchObject({ code: 'E_INVALID' });
      await expect(c.read(16 * MiB - 512, 1024)).rejects.toMatchObject({ code: 'E_INVALID' });
      await expect(c.write(16 * MiB, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_NOSPC' });
      await expect(c.writeZeroes(0, 512, { fastZero: true })).rejects.toThrow(/ENOTSUP/);
      await expect(c.request(0, 0x4000, 0, 512)).rejects.toMatchObject({ code: 'E_INVALID' });
      expect((await c.read(0, 512)).length).toBe(512);
    }
    const simple = await connect('mem', false);
    expect(simple.canBlockStatus).toBe(false);
    await expect(simple.request(7, 0, 0, 512)).rejects.toMatchObject({ code: 'E_INVALID' });
  });

  it('lists exports, selects the only export for "", rejects unknown names', async () => {
    server.addExport({ name: 'second', device: new MemoryDevice(MiB) });
    expect((await NbdClient.list('127.0.0.1', port)).sort()).toEqual(['mem', 'second']);
    await expect(connect('')).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
    await expect(connect('nope')).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
    await server.removeExport('second');
    const c = await connect('');
    expect(c.size).toBe(16 * MiB);
    expect(() => server.addExport({ name: 'mem', device: new MemoryDevice(MiB) })).toThrow(ReplError);
    expect(() => server.addExport({ name: 'mem', device: new MemoryDevice(MiB) })).toThrow(/already exists/);
  });

  it('removing an export closes its connections only; re-adding serves again', async () => {
    const slow = new SlowReads(MiB);
    slow.slow.add(0);
    server.addExport({ name: 'view', device: slow });
    const v = await connect('view');
    const m = await connect('mem');
    const before = server.stats().requests;
    const inflight = v.read(0, 4096);
    await waitFor(() => server.stats().requests > before);
    await server.removeExport('view');
    expect((await inflight).length).toBe(4096); // in-flight requests are answered before the close
    expect(server.hasExport('view')).toBe(false);
    await expect(v.read(0, 512)).rejects.toMatchObject({ code: 'E_CLOSED' });
    expect((await m.read(0, 512)).length).toBe(512);
    await expect(connect('view')).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
    server.addExport({ name: 'view', device: new MemoryDevice(MiB) });
    expect((await connect('view')).size).toBe(MiB);
  });

  it('enforces maxConnections and the handshake timeout', async () => {
    const small = new NbdServer({ maxConnections: 1, handshakeTimeoutMs: 200 });
    small.addExport({ name: 'x', device: new MemoryDevice(MiB) });
    const { port: p } = await small.listen('127.0.0.1', 0);
    try {
      const first = await NbdClient.connect({ host: '127.0.0.1', port: p, exportName: 'x' });
      await expect(NbdClient.connect({ host: '127.0.0.1', port: p, exportName: 'x' })).rejects.toMatchObject({
        code: 'E_CLOSED',
      });
      await first.close();
      await waitFor(() => small.stats().connections === 0);
      // a silent peer is dropped after the handshake timeout
      const net = await import('node:net');
      const silent = net.connect({ host: '127.0.0.1', port: p });
      silent.resume();
      const closed = await new Promise<boolean>((resolve) => {
        silent.on('close', () => resolve(true));
        silent.on('error', () => undefined);
        setTimeout(() => resolve(false), 3000);
      });
      expect(closed).toBe(true);
    } finally {
      await small.close();
    }
  });

  it('close() drains connections and stops listening', async () => {
    const slow = new SlowReads(MiB);
    slow.slow.add(0);
    server.addExport({ name: 'slow', device: slow });
    const c = await connect('slow');
    const before = server.stats().requests;
    const pending = c.read(0, 4096);
    await waitFor(() => server.stats().requests > before);
    await server.close();
    expect((await pending).length).toBe(4096);
    await expect(c.read(0, 512)).rejects.toMatchObject({ code: 'E_CLOSED' });
    await expect(NbdClient.connect({ host: '127.0.0.1', port, exportName: 'mem' })).rejects.toMatchObject({
      code: 'E_CLOSED',
    });
    expect(server.address()).toBeNull();
  });

  it('NbdBlockDevice adapts an export to BlockDevice', async () => {
    const dev = await NbdBlockDevice.open({ host: '127.0.0.1', port, exportName: 'mem' });
    devices.push(dev);
    expect(dev.info).toMatchObject({ size: 16 * MiB, blockSize: 512, readOnly: false, canTrim: true });
    const a = pattern(40 * MiB > dev.info.size ? 3 * MiB : 40 * MiB, 5);
    await dev.write(MiB, a, { fua: true });
    expect((await dev.read(MiB, a.length)).equals(a)).toBe(true);
    await dev.writeZeroes(MiB, 4096);
    await dev.trim(2 * MiB, MiB);
    await dev.flush();
    expect((await dev.read(MiB, 4096)).equals(Buffer.alloc(4096))).toBe(true);
    await expect(dev.read(16 * MiB - 512, 1024)).rejects.toMatchObject({ code: 'E_RANGE' });
    expect(dev.extents).toBeDefined();
    const ext = await dev.extents!(0, 16 * MiB);
    expect(ext.reduce((s, e) => s + e.length, 0)).toBe(16 * MiB);
    expect(ext[0]).toMatchObject({ offset: 0, hole: true });
  });
});
