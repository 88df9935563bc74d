import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { BlockDevice } from '../../../common/block/device';
import { FileDevice } from '../../../common/block/file-device';
import { MemoryDevice } from '../../../common/block/memory-device';
import { testLogger } from '../../../common/log';
import { NvmeTcpBlockDevice, NvmeTcpHost } from '../../../common/nvme-tcp/initiator';
import { PduFlag } from '../../../common/nvme-tcp/pdu';
import { NvmeStatusError, Status } from '../../../common/nvme-tcp/status';
import { NvmeTcpTarget } from '../../../common/nvme-tcp/target';
import { AdminOpcode, FeatureId, IoOpcode } from '../../../common/nvme-tcp/sqe';

const NQN = 'nqn.2024-01.io.blockrep:test-disk';
const SIZE = 32 * 1024 * 1024;
const NGUID = Buffer.from('0123456789abcdef0123456789abcdef', 'hex');
const UUID = '6a1f3c52-9b7e-4d0a-8c11-2f5e7a9b0c3d';

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(len);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    b[i] = x >>> 24;
  }
  return b;
}

interface Env {
  target: NvmeTcpTarget;
  device: BlockDevice;
  port: number;
  cleanup(): Promise<void>;
}

async function start(kind: 'memory' | 'file', extra: Partial<ConstructorParameters<typeof NvmeTcpTarget>[0]> = {}): Promise<Env> {
  let dir = '';
  let device: BlockDevice;
  if (kind === 'memory') device = new MemoryDevice(SIZE);
  else {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nvme-tcp-'));
    device = await FileDevice.open(path.join(dir, 'disk.img'), { createSize: SIZE });
  }
  const target = new NvmeTcpTarget({ logger: testLogger('nvme-target'), ...extra });
  target.addSubsystem({ nqn: NQN, serial: 'SERIAL-1', model: 'test model', namespaces: [{ nsid: 1, device, nguid: NGUID, uuid: UUID }] });
  const { port } = await target.listen('127.0.0.1', 0);
  return {
    target,
    device,
    port,
    cleanup: async () => {
      await target.close();
      await device.close();
      if (dir) fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

describe.each([
  ['memory', false, false],
  ['memory', true, true],
  ['file', false, false],
  ['file', true, false],
] as const)('NVMe/TCP host <-> target (%s device, hdgst %s, ddgst %s)', (kind, hdgst, ddgst) => {
  let env: Env;
  let host: NvmeTcpHost;

  beforeAll(async () => {
    env = await start(kind);
    host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: NQN, ioQueues: 3, queueDepth: 16, headerDigest: hdgst, dataDigest: ddgst });
  });
  afterAll(async () => {
    await host?.close();
    await env?.cleanup();
  });

  it('identifies controller and namespace', async () => {
    expect(host.ioQueueCount).toBe(3);
    const c = await host.identifyController();
    expect(c).toMatchObject({ serial: 'SERIAL-1', model: 'test model', subnqn: NQN, cntlid: host.cntlid, nn: 1, volatileWriteCache: true, ioccsz: (64 + 128 * 1024) / 16 });
    expect(await host.activeNamespaces()).toEqual([1]);
    const ns = await host.identifyNamespace(1);
    expect(ns.nsze).toBe(BigInt(SIZE / 512));
    expect(ns.lbaSize).toBe(512);
    expect(ns.nguid.equals(NGUID)).toBe(true);
    const ids = await host.namespaceIds(1);
    expect(ids.uuid).toBe(UUID);
    expect(ids.nguid?.equals(NGUID)).toBe(true);
  });

  it.each([
    [4096, 0],
    [512, 512 * 13],
    [1536, 512 * 7],
    [8192, 1024 * 1024 + 512],
    [8704, 3 * 1024 * 1024],
    [65536, 5 * 512],
    [128 * 1024 + 512, 4 * 1024 * 1024 + 1024],
    [1024 * 1024, 8 * 1024 * 1024],
    [3 * 1024 * 1024 + 4096, 12 * 1024 * 1024 + 512],
  ])('writes and reads %i bytes at %i', async (len, off) => {
    const data = pattern(len, len ^ off);
    await host.write(1, off, data);
    expect((await host.read(1, off, len)).equals(data)).toBe(true);
    expect((await env.device.read(off, len)).equals(data)).toBe(true);
  });

  it('runs many commands concurrently on every queue', async () => {
    // every third write exceeds the in-capsule limit (R2T), the rest travel in the capsule
    const ops = Array.from({ length: 96 }, (_, i) => ({ off: 16 * 1024 * 1024 + i * 135168, data: pattern(i % 3 === 0 ? 135168 : 12288, i + 7) }));
    await Promise.all(ops.map((o) => host.write(1, o.off, o.data, { fua: o.off % 3 === 0 })));
    const back = await Promise.all(ops.map((o) => host.read(1, o.off, o.data.length)));
    back.forEach((b, i) => expect(b.equals(ops[i]!.data)).toBe(true));
  });

  it('flushes, writes zeroes and deallocates', async () => {
    const off = 20 * 1024 * 1024;
    await host.write(1, off, pattern(64 * 1024, 3), { fua: true });
    await host.flush(1);
    await host.writeZeroes(1, off + 4096, 8192);
    await host.deallocate(1, off + 32768, 16384);
    const back = await host.read(1, off, 64 * 1024);
    const expected = pattern(64 * 1024, 3);
    expected.fill(0, 4096, 4096 + 8192);
    expected.fill(0, 32768, 32768 + 16384);
    expect(back.equals(expected)).toBe(true);
  });

  it('answers out-of-range and invalid commands with NVMe status codes', async () => {
    await expect(host.read(1, SIZE - 512, 1024)).rejects.toMatchObject({ code: 'E_RANGE', status: Status.LBA_OUT_OF_RANGE });
    await expect(host.write(1, SIZE, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_RANGE' });
    await expect(host.write(1, SIZE - 512, Buffer.alloc(64 * 1024))).rejects.toMatchObject({ code: 'E_RANGE' });
    await expect(host.writeZeroes(1, SIZE - 512, 1024)).rejects.toMatchObject({ code: 'E_RANGE' });
    await expect(host.read(2, 0, 512)).rejects.toMatchObject({ code: 'E_NOT_FOUND', status: Status.INVALID_NAMESPACE });
    await expect(host.ioCommand({ opcode: 0x7e, nsid: 1 })).rejects.toMatchObject({ status: Status.INVALID_OPCODE });
    await expect(host.adminCommand({ opcode: 0x01 })).rejects.toMatchObject({ status: Status.INVALID_OPCODE });
    await expect(host.adminCommand({ opcode: AdminOpcode.IDENTIFY, cdw10: 0x55 }, { readInto: Buffer.alloc(4096) })).rejects.toMatchObject({
      status: Status.INVALID_FIELD,
    });
    const err = await host.read(1, SIZE, 512).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NvmeStatusError);
    expect((err as NvmeStatusError).dnr).toBe(true);
    // the connection still works afterwards
    await host.write(1, 0, pattern(512, 9));
    expect((await host.read(1, 0, 512)).equals(pattern(512, 9))).toBe(true);
  });

  it('reports features and log pages', async () => {
    expect((await host.getFeatures(FeatureId.NUMBER_OF_QUEUES)) & 0xffff).toBe(2);
    expect(await host.getFeatures(FeatureId.VOLATILE_WRITE_CACHE)).toBe(1);
    expect(await host.getFeatures(FeatureId.KEEP_ALIVE_TIMER)).toBe(5000);
    const smart = await host.getLogPage(0x02, 512);
    expect(smart.readUInt16LE(1)).toBe(0x139);
    expect(smart.readBigUInt64LE(80)).toBeGreaterThan(0n); // write commands
    expect((await host.getLogPage(0x01, 64)).equals(Buffer.alloc(64))).toBe(true);
    await expect(host.getLogPage(0x70, 1024)).rejects.toMatchObject({ status: Status.INVALID_FIELD });
  });

  it('serves as a BlockDevice through NvmeTcpBlockDevice', async () => {
    const dev = await NvmeTcpBlockDevice.open(host, 1);
    expect(dev.info).toMatchObject({ size: SIZE, blockSize: 512, readOnly: false, canWriteZeroes: true });
    const data = pattern(20480, 77);
    await dev.write(24 * 1024 * 1024, data);
    expect((await dev.read(24 * 1024 * 1024, data.length)).equals(data)).toBe(true);
    await expect(dev.read(SIZE, 512)).rejects.toMatchObject({ code: 'E_RANGE' });
    await dev.close();
  });
});

/**
 * A MemoryDevice that reads a write's data only after a random delay: a data
 * buffer the target recycled before write() settled would be stored with
 * another command's bytes.
 */
class LateWrites extends MemoryDevice {
  override async write(offset: number, data: Buffer): Promise<void> {
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * 4)));
    return super.write(offset, data);
  }
}

describe('NVMe/TCP target: recycled data buffers', () => {
  it('keeps every concurrent in-capsule and solicited write intact', async () => {
    const device = new LateWrites(SIZE);
    const target = new NvmeTcpTarget({ logger: testLogger('nvme-target') });
    target.addSubsystem({ nqn: NQN, serial: 'SERIAL-1', model: 'test model', namespaces: [{ nsid: 1, device, nguid: NGUID, uuid: UUID }] });
    const { port } = await target.listen('127.0.0.1', 0);
    const host = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN, ioQueues: 2, queueDepth: 32 });
    try {
      // in-capsule (up to 128 KiB) and R2T sizes, several rounds so released buffers are reused
      const sizes = [128 * 1024, 64 * 1024, 20 * 1024, 256 * 1024, 128 * 1024 + 4096];
      const all: Array<{ off: number; data: Buffer }> = [];
      for (let round = 0; round < 4; round++) {
        const batch = sizes.map((len, i) => ({ off: (round * sizes.length + i) * 512 * 1024, data: pattern(len, round * 10 + i + 1) }));
        await Promise.all(batch.map((w) => host.write(1, w.off, w.data)));
        all.push(...batch);
      }
      for (const w of all) expect((await device.read(w.off, w.data.length)).equals(w.data)).toBe(true);
    } finally {
      await host.close();
      await target.close();
    }
  });
});

describe('NVMe/TCP target: stream-read fallback', () => {
  it('serves with stream reads when static-buffer reads are off', async () => {
    const env = await start('memory', { staticReads: false });
    const host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: NQN, ioQueues: 1, queueDepth: 16 });
    try {
      const writes = [0, 1, 2, 3].map((i) => ({ off: i * 1024 * 1024, data: pattern(128 * 1024 + i * 4096, 50 + i) }));
      await Promise.all(writes.map((w) => host.write(1, w.off, w.data)));
      for (const w of writes) expect((await host.read(1, w.off, w.data.length)).equals(w.data)).toBe(true);
    } finally {
      await host.close();
      await env.cleanup();
    }
  });
});

/**
 * A loopback tap between host and target that parses the target's PDU stream
 * (common header: type at 0, flags at 1, PLEN at 4) and records each PDU.
 */
async function pduTap(targetPort: number): Promise<{ port: number; pdus: { type: number; flags: number }[]; close(): Promise<void> }> {
  const pdus: { type: number; flags: number }[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect({ host: '127.0.0.1', port: targetPort, noDelay: true });
    client.setNoDelay(true);
    sockets.add(client).add(upstream);
    let pending = Buffer.alloc(0);
    upstream.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 8 && pending.length >= pending.readUInt32LE(4)) {
        pdus.push({ type: pending[0]!, flags: pending[1]! });
        pending = pending.subarray(pending.readUInt32LE(4));
      }
      client.write(chunk);
    });
    client.on('data', (chunk: Buffer) => upstream.write(chunk));
    const end = (): void => {
      client.destroy();
      upstream.destroy();
    };
    client.on('close', end).on('error', end);
    upstream.on('close', end).on('error', end);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    pdus,
    close: async () => {
      for (const sk of sockets) sk.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

describe('NVMe/TCP target: SQ flow control disabled (Connect CATTR b2)', () => {
  const CAPSULE_RESP = 0x05;
  const C2H_DATA = 0x07;

  it.each([false, true])('reads end with a SUCCESS C2HData and no CapsuleResp; everything else keeps its CQE (data digest %s)', async (ddgst) => {
    const env = await start('memory');
    const tap = await pduTap(env.port);
    let host: NvmeTcpHost | null = null;
    let plain: NvmeTcpHost | null = null;
    try {
      host = await NvmeTcpHost.connect({ host: '127.0.0.1', port: tap.port, subnqn: NQN, ioQueues: 2, queueDepth: 16, disableSqFlow: true, dataDigest: ddgst, kato: 0 });
      const writes = [0, 1, 2, 3].map((i) => ({ off: i * 1024 * 1024 + i * 4096, data: pattern(4096 * (1 + 40 * i), 70 + i) }));
      await Promise.all(writes.map((w) => host!.write(1, w.off, w.data)));
      tap.pdus.length = 0;
      const before = env.target.stats().successReads; // Identify data on the admin queue counts too
      const got = await Promise.all(writes.map((w) => host!.read(1, w.off, w.data.length)));
      got.forEach((g, i) => expect(g.equals(writes[i]!.data)).toBe(true));
      expect(tap.pdus.filter((p) => p.type === CAPSULE_RESP)).toHaveLength(0);
      const last = tap.pdus.filter((p) => p.type === C2H_DATA && (p.flags & PduFlag.LAST_PDU) !== 0);
      expect(last).toHaveLength(writes.length);
      for (const p of last) expect(p.flags & PduFlag.SUCCESS).toBe(PduFlag.SUCCESS);
      expect(env.target.stats().successReads - before).toBe(writes.length);
      // a failed read still completes with a CapsuleResp carrying its status
      tap.pdus.length = 0;
      await expect(host.read(1, SIZE - 4096, 8192)).rejects.toBeInstanceOf(NvmeStatusError);
      expect(tap.pdus.filter((p) => p.type === CAPSULE_RESP)).toHaveLength(1);
      // a host that keeps flow control on never sees SUCCESS
      plain = await NvmeTcpHost.connect({ host: '127.0.0.1', port: tap.port, subnqn: NQN, ioQueues: 1, kato: 0 });
      await plain.read(1, 0, 4096); // the first read also identifies the namespace (admin queue)
      tap.pdus.length = 0;
      expect((await plain.read(1, writes[1]!.off, 4096)).equals(writes[1]!.data.subarray(0, 4096))).toBe(true);
      expect(tap.pdus.filter((p) => p.type === CAPSULE_RESP)).toHaveLength(1);
      expect(tap.pdus.every((p) => (p.flags & PduFlag.SUCCESS) === 0)).toBe(true);
      expect(env.target.stats().successReads - before).toBe(writes.length);
    } finally {
      await plain?.close();
      await host?.close();
      await tap.close();
      await env.cleanup();
    }
  });
});

describe('NVMe/TCP target: discovery, subsystems, controllers', () => {
  let env: Env;
  afterEach(async () => {
    await env?.cleanup();
  });

  it('lists every subsystem in the discovery log with a concrete address', async () => {
    env = await start('memory');
    env.target.addSubsystem({
      nqn: 'nqn.2024-01.io.blockrep:second',
      serial: 'S2',
      namespaces: [{ nsid: 1, device: new MemoryDevice(1024 * 1024), nguid: crypto.randomBytes(16), uuid: crypto.randomUUID() }],
    });
    const entries = await NvmeTcpHost.discover({ host: '127.0.0.1', port: env.port });
    expect(entries.map((e) => e.subnqn).sort()).toEqual([NQN, 'nqn.2024-01.io.blockrep:second'].sort());
    for (const e of entries) expect(e).toMatchObject({ traddr: '127.0.0.1', trsvcid: String(env.port), adrfam: 'ipv4', subtype: 2 });
    await env.target.removeSubsystem('nqn.2024-01.io.blockrep:second');
    const after = await NvmeTcpHost.discover({ host: '127.0.0.1', port: env.port });
    expect(after.map((e) => e.subnqn)).toEqual([NQN]);
    expect(() => env.target.addSubsystem({ nqn: NQN, serial: 'x', namespaces: [{ nsid: 1, device: env.device, nguid: NGUID, uuid: UUID }] })).toThrow(
      expect.objectContaining({ code: 'E_INVALID' }),
    );
  });

  it('uses the advertise address in the discovery log', async () => {
    env = await start('memory', { advertiseAddress: '10.0.2.2' });
    const entries = await NvmeTcpHost.discover({ host: '127.0.0.1', port: env.port });
    expect(entries[0]!.traddr).toBe('10.0.2.2');
    expect(() => new NvmeTcpTarget({ advertiseAddress: '0.0.0.0' })).toThrow();
  });

  it('gives each association its own CNTLID and refuses unknown subsystems', async () => {
    env = await start('memory');
    const a = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: NQN });
    const b = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: NQN, ioQueues: 2 });
    expect(a.cntlid).not.toBe(b.cntlid);
    expect(env.target.stats().controllers).toBe(2);
    await expect(NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: 'nqn.2024-01.io.blockrep:nope' })).rejects.toMatchObject({
      code: 'E_HANDSHAKE',
      status: Status.CONNECT_INVALID_PARAMETERS,
    });
    await a.close();
    await b.close();
    await waitUntil(() => env.target.stats().controllers === 0);
  });

  it('removing a subsystem tears down its controllers', async () => {
    env = await start('memory');
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: NQN, ioQueues: 2 });
    await env.target.removeSubsystem(NQN);
    await expect(h.read(1, 0, 512)).rejects.toMatchObject({ code: 'E_CLOSED' });
    await waitUntil(() => env.target.stats().connections === 0);
    await h.close();
  });

  it('read-only subsystems refuse writes with Namespace Write Protected', async () => {
    env = await start('memory');
    env.target.addSubsystem({ nqn: `${NQN}-ro`, serial: 'RO', readOnly: true, namespaces: [{ nsid: 1, device: env.device, nguid: NGUID, uuid: UUID }] });
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: `${NQN}-ro` });
    expect((await h.identifyNamespace(1)).readOnly).toBe(true);
    await expect(h.write(1, 0, Buffer.alloc(512))).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(h.write(1, 0, Buffer.alloc(65536))).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    await expect(h.write(1, 0, Buffer.alloc(256 * 1024))).rejects.toMatchObject({ code: 'E_READ_ONLY' });
    expect((await h.read(1, 0, 512)).length).toBe(512);
    await h.close();
  });

  it('answers volatile write cache changes and shuts down cleanly', async () => {
    env = await start('memory');
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port: env.port, subnqn: NQN });
    await h.setFeatures(FeatureId.VOLATILE_WRITE_CACHE, 0);
    expect(await h.getFeatures(FeatureId.VOLATILE_WRITE_CACHE)).toBe(0);
    await h.ioCommand({ opcode: IoOpcode.FLUSH, nsid: 0xffffffff });
    await h.close();
  });
});

export async function waitUntil(cond: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('condition not reached in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
