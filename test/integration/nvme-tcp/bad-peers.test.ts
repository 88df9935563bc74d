/**
 * Misbehaving NVMe/TCP peers: each test breaks the protocol in one way over a
 * raw socket, expects the documented reaction (C2HTermReq with FES/FEI, an
 * error status, or a closed connection), then checks that a well-behaved host
 * still works and that data written before is intact.
 */
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { MemoryDevice } from '../../../common/block/memory-device';
import { testLogger } from '../../../common/log';
import { NvmeTcpHost } from '../../../common/nvme-tcp/initiator';
import { Fes, PduType } from '../../../common/nvme-tcp/pdu';
import { Status } from '../../../common/nvme-tcp/status';
import { NvmeTcpTarget, NvmeTcpTargetOptions } from '../../../common/nvme-tcp/target';
import { AdminOpcode, FeatureId, IoOpcode } from '../../../common/nvme-tcp/sqe';
import { HOSTNQN, RawClient, capsule, connectCmd, h2cData, icReq, propertySetCmd } from '../../helpers/pdu-builders';

const NQN = 'nqn.2024-01.io.blockrep:bad-peers';
const SIZE = 8 * 1024 * 1024;
const GOLDEN = crypto.randomBytes(256 * 1024);

let target: NvmeTcpTarget;
let device: MemoryDevice;
let port: number;
const clients: RawClient[] = [];

async function startTarget(options: NvmeTcpTargetOptions): Promise<void> {
  device = new MemoryDevice(SIZE);
  target = new NvmeTcpTarget({ logger: testLogger('nvme-bad-peers'), ...options });
  target.addSubsystem({ nqn: NQN, serial: 'BAD', namespaces: [{ nsid: 1, device, nguid: crypto.randomBytes(16), uuid: crypto.randomUUID() }] });
  port = (await target.listen('127.0.0.1', 0)).port;
  const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN });
  await h.write(1, 1024 * 1024, GOLDEN);
  await h.close();
}

async function raw(): Promise<RawClient> {
  const c = await RawClient.connect(port);
  clients.push(c);
  return c;
}

/** Admin queue connected and enabled over a raw socket; returns the CNTLID. */
async function rawAdmin(kato = 0): Promise<{ c: RawClient; cntlid: number }> {
  const c = await raw();
  await c.handshake();
  c.send(connectCmd({ cid: 1, subnqn: NQN, kato }));
  const r = await c.response(1);
  expect(r?.status).toBe(0);
  c.send(propertySetCmd(2, 0x14, 0x00460001));
  expect((await c.response(2))?.status).toBe(0);
  return { c, cntlid: r!.dw0 & 0xffff };
}

async function rawIo(cntlid: number, qid = 1): Promise<RawClient> {
  const c = await raw();
  await c.handshake();
  c.send(connectCmd({ cid: 1, qid, cntlid, subnqn: NQN }));
  expect((await c.response(1))?.status).toBe(0);
  return c;
}

/** A fresh well-behaved host still works and the golden data is intact. */
async function expectHealthy(): Promise<void> {
  const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN, ioQueues: 2 });
  try {
    expect((await h.read(1, 1024 * 1024, GOLDEN.length)).equals(GOLDEN)).toBe(true);
    await h.write(1, 0, Buffer.alloc(4096, 7));
    expect((await h.read(1, 0, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
  } finally {
    await h.close();
  }
}

function expectTermReq(c: RawClient, fes: number, fei?: number): void {
  const t = c.termReq();
  expect(t).toBeDefined();
  expect(t!.header.readUInt16LE(8)).toBe(fes);
  if (fei !== undefined) expect(t!.header.readUInt32LE(10)).toBe(fei);
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.destroy();
  await target?.close();
});

describe('NVMe/TCP target against misbehaving peers', () => {
  it('drops a connection that never finishes its ICReq', async () => {
    await startTarget({ icReqTimeoutMs: 200 });
    const c = await raw();
    c.send(icReq().subarray(0, 40));
    await c.waitClosed(3000);
    expect(c.pdus).toHaveLength(0);
    expect(target.stats().protocolErrors).toBeGreaterThanOrEqual(1);
    await expectHealthy();
  });

  it('answers garbage, a bad PFV and PDUs before ICReq with C2HTermReq', async () => {
    await startTarget({});
    const garbage = await raw();
    garbage.send(Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'));
    await garbage.waitClosed();
    // 'G' = 0x47 is not a PDU type
    expectTermReq(garbage, Fes.INVALID_HEADER_FIELD, 0);

    const pfv = await raw();
    pfv.send(icReq({ pfv: 1 }));
    await pfv.waitClosed();
    expectTermReq(pfv, Fes.UNSUPPORTED_PARAMETER, 8);

    const early = await raw();
    early.send(connectCmd({ subnqn: NQN }));
    await early.waitClosed();
    expectTermReq(early, Fes.SEQUENCE_ERROR, 0);

    const hpda = await raw();
    hpda.send(icReq({ hpda: 40 }));
    await hpda.waitClosed();
    expectTermReq(hpda, Fes.INVALID_HEADER_FIELD, 10);
    await expectHealthy();
  });

  it('rejects PDUs that lie about their lengths', async () => {
    await startTarget({});
    const cases: Array<{ mutate: (b: Buffer) => void; fei: number }> = [
      { mutate: (b) => b.writeUInt32LE(0xffffffff, 4), fei: 4 }, // PLEN
      { mutate: (b) => (b[2] = 80), fei: 2 }, // HLEN
      { mutate: (b) => (b[3] = 13), fei: 3 }, // PDO not aligned
      { mutate: (b) => (b[1] = 0x08), fei: 1 }, // SUCCESS flag on a command
    ];
    for (const k of cases) {
      const c = await raw();
      await c.handshake();
      const pdu = connectCmd({ subnqn: NQN });
      k.mutate(pdu);
      c.send(pdu);
      await c.waitClosed();
      expectTermReq(c, Fes.INVALID_HEADER_FIELD, k.fei);
    }
    await expectHealthy();
  });

  it('detects header digest errors and fails in-capsule data digest errors per command', async () => {
    await startTarget({});
    const dg = { hdgst: true, ddgst: true };
    const c = await raw();
    await c.handshake(dg);
    const bad = connectCmd({ subnqn: NQN }, dg);
    bad[72] ^= 0xff; // header digest
    c.send(bad);
    await c.waitClosed();
    expectTermReq(c, Fes.HEADER_DIGEST);

    const d = await raw();
    await d.handshake(dg);
    const pdu = connectCmd({ subnqn: NQN }, dg);
    pdu[pdu.length - 1] ^= 0xff; // data digest
    d.send(pdu);
    expect((await d.response(1))?.status).toBe(Status.TRANSIENT_TRANSPORT_ERROR);
    d.send(connectCmd({ cid: 2, subnqn: NQN }, dg));
    expect((await d.response(2))?.status).toBe(0);
    await expectHealthy();
  });

  it('terminates a host that exceeds MAXH2CDATA or sends data nobody asked for', async () => {
    await startTarget({ maxH2CData: 8192 });
    const { cntlid } = await rawAdmin();
    const io = await rawIo(cntlid);
    io.send(capsule({ opcode: IoOpcode.WRITE, cid: 9, nsid: 1, cdw10: 0, cdw12: 31, dataLength: 16384, inCapsule: false }));
    const r2t = await io.waitFor((p) => p.type === PduType.R2T);
    expect(r2t!.header.readUInt32LE(16)).toBe(8192); // R2TL <= MAXH2CDATA
    io.send(h2cData({ cccid: 9, ttag: r2t!.header.readUInt16LE(10), datao: 0 }, Buffer.alloc(16384, 1)));
    await io.waitClosed();
    expectTermReq(io, Fes.DATA_LIMIT_EXCEEDED, 0);

    const io2 = await rawIo(cntlid, 2);
    io2.send(h2cData({ cccid: 3, ttag: 77, datao: 0 }, Buffer.alloc(512)));
    await io2.waitClosed();
    expectTermReq(io2, Fes.INVALID_HEADER_FIELD, 10);
    await expectHealthy();
  });

  it('rejects H2CData outside the R2T window', async () => {
    await startTarget({});
    const { cntlid } = await rawAdmin();
    const io = await rawIo(cntlid);
    io.send(capsule({ opcode: IoOpcode.WRITE, cid: 4, nsid: 1, cdw12: 63, dataLength: 32768, inCapsule: false }));
    const r2t = await io.waitFor((p) => p.type === PduType.R2T);
    io.send(h2cData({ cccid: 4, ttag: r2t!.header.readUInt16LE(10), datao: 4096 }, Buffer.alloc(4096)));
    await io.waitClosed();
    expectTermReq(io, Fes.DATA_OUT_OF_RANGE);
    await expectHealthy();
  });

  it('answers malformed SGLs and transfer lengths with status codes and keeps the queue', async () => {
    await startTarget({});
    const { cntlid } = await rawAdmin();
    const io = await rawIo(cntlid);
    const withAddress = capsule({ opcode: IoOpcode.WRITE, cid: 10, nsid: 1 }, Buffer.alloc(512));
    withAddress[32] = 1; // SGL address must be 0
    const wrongType = capsule({ opcode: IoOpcode.WRITE, cid: 11, nsid: 1 }, Buffer.alloc(512));
    wrongType[47] = 0x5a; // in-capsule data needs the data block/offset descriptor
    const cases: Array<[Buffer, number, number]> = [
      [withAddress, 10, Status.SGL_OFFSET_INVALID],
      [wrongType, 11, Status.SGL_DESCRIPTOR_TYPE_INVALID],
      [capsule({ opcode: IoOpcode.WRITE, cid: 12, nsid: 1, dataLength: 1024 }, Buffer.alloc(512)), 12, Status.SGL_DATA_LENGTH_INVALID],
      [capsule({ opcode: IoOpcode.READ, cid: 13, nsid: 1, cdw12: 4095, dataLength: 2 * 1024 * 1024 }), 13, Status.SGL_DATA_LENGTH_INVALID],
      [capsule({ opcode: IoOpcode.READ, cid: 14, nsid: 1, cdw12: 0, dataLength: 4096 }), 14, Status.SGL_DATA_LENGTH_INVALID],
      [capsule({ opcode: IoOpcode.WRITE, cid: 15, nsid: 1, cdw10: SIZE / 512, cdw12: 127, dataLength: 65536, inCapsule: false }), 15, Status.LBA_OUT_OF_RANGE],
      [capsule({ opcode: IoOpcode.READ, cid: 16, nsid: 9, cdw12: 0, dataLength: 512 }), 16, Status.INVALID_NAMESPACE],
    ];
    for (const [pdu, cid, status] of cases) {
      io.send(pdu);
      expect((await io.response(cid))?.status).toBe(status);
    }
    // no R2T was sent for the doomed write, and the queue still reads the golden data
    expect(io.pdus.some((p) => p.type === PduType.R2T)).toBe(false);
    io.send(capsule({ opcode: IoOpcode.READ, cid: 20, nsid: 1, cdw10: 2048, cdw12: 7, dataLength: 4096 }));
    expect((await io.response(20))?.status).toBe(0);
    const data = io.pdus.find((p) => p.type === PduType.C2H_DATA && p.header.readUInt16LE(8) === 20);
    expect(data!.data!.equals(GOLDEN.subarray(0, 4096))).toBe(true);
    expect(io.termReq()).toBeUndefined();
  });

  it('survives truncated PDUs (peer closes, or stalls past the PDU timeout)', async () => {
    await startTarget({ pduTimeoutMs: 300 });
    const { cntlid } = await rawAdmin();
    const io = await rawIo(cntlid);
    const write = capsule({ opcode: IoOpcode.WRITE, cid: 5, nsid: 1, cdw12: 7 }, Buffer.alloc(4096, 9));
    io.send(write.subarray(0, 100));
    io.socket.end();
    await io.waitClosed();

    const { cntlid: c2 } = await rawAdmin();
    const stall = await rawIo(c2);
    stall.send(write.subarray(0, 30));
    await stall.waitClosed(3000);
    await expectHealthy();
    expect((await device.read(0, 4096)).equals(Buffer.alloc(4096, 7))).toBe(true);
  });

  it('refuses more I/O queues than granted and duplicate queue ids', async () => {
    await startTarget({ maxIoQueues: 2 });
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN, ioQueues: 4, hostnqn: HOSTNQN });
    expect(h.ioQueueCount).toBe(2);
    const extra = await raw();
    await extra.handshake();
    extra.send(connectCmd({ cid: 1, qid: 3, cntlid: h.cntlid, subnqn: NQN }));
    const r = await extra.response(1);
    expect(r).toEqual({ status: Status.CONNECT_INVALID_PARAMETERS, dw0: 42 });
    await extra.waitClosed();

    const dup = await raw();
    await dup.handshake();
    dup.send(connectCmd({ cid: 1, qid: 1, cntlid: h.cntlid, subnqn: NQN }));
    expect((await dup.response(1))?.status).toBe(Status.CONNECT_INVALID_PARAMETERS);

    const wrongHost = await raw();
    await wrongHost.handshake();
    wrongHost.send(connectCmd({ cid: 1, qid: 2, cntlid: h.cntlid, subnqn: NQN, hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:other' }));
    expect(await wrongHost.response(1)).toEqual({ status: Status.CONNECT_INVALID_PARAMETERS, dw0: 512 | (1 << 16) });
    // the original association is unaffected
    expect((await h.read(1, 1024 * 1024, GOLDEN.length)).equals(GOLDEN)).toBe(true);
    await h.close();
  });

  it('only accepts Connect before Connect, and Fabrics before CC.EN', async () => {
    await startTarget({});
    const c = await raw();
    await c.handshake();
    c.send(capsule({ opcode: AdminOpcode.KEEP_ALIVE, cid: 3 }));
    expect((await c.response(3))?.status).toBe(Status.COMMAND_SEQUENCE_ERROR);
    c.send(connectCmd({ cid: 4, subnqn: NQN }));
    expect((await c.response(4))?.status).toBe(0);
    c.send(capsule({ opcode: AdminOpcode.GET_FEATURES, cid: 5, cdw10: FeatureId.NUMBER_OF_QUEUES }));
    expect((await c.response(5))?.status).toBe(Status.COMMAND_SEQUENCE_ERROR);
    c.send(icReq());
    await c.waitClosed();
    expectTermReq(c, Fes.SEQUENCE_ERROR);
  });

  it('tears down a controller whose keep alive expires', async () => {
    await startTarget({ keepAliveGraceMs: 100 });
    const { c, cntlid } = await rawAdmin(300);
    const io = await rawIo(cntlid);
    expect(target.stats().controllers).toBe(1);
    await c.waitClosed(3000);
    await io.waitClosed(1000);
    expect(target.stats().controllers).toBe(0);
    // a host that sends keep alives stays connected well past KATO
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN, kato: 400 });
    await new Promise((r) => setTimeout(r, 1200));
    expect((await h.read(1, 1024 * 1024, 4096)).equals(GOLDEN.subarray(0, 4096))).toBe(true);
    await h.close();
  });

  it('refuses connections beyond maxConnections', async () => {
    await startTarget({ maxConnections: 3 });
    const held = [await raw(), await raw(), await raw()];
    await new Promise((r) => setTimeout(r, 50));
    const fourth = await raw();
    await fourth.waitClosed();
    for (const c of held) c.destroy();
    await new Promise((r) => setTimeout(r, 100));
    await expectHealthy();
  });

  it('keeps serving other connections while one is hammered with random bytes', async () => {
    await startTarget({});
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN, ioQueues: 2 });
    for (let i = 0; i < 20; i++) {
      const s = net.connect({ host: '127.0.0.1', port });
      s.on('error', () => undefined);
      s.write(crypto.randomBytes(1 + (i * 97) % 3000));
      s.end();
    }
    expect((await h.read(1, 1024 * 1024, GOLDEN.length)).equals(GOLDEN)).toBe(true);
    await h.close();
    await expectHealthy();
  });
  it('stops reading commands while a host does not read its replies, and resumes on drain', async () => {
    await startTarget({});
    const { cntlid } = await rawAdmin();
    const io = await rawIo(cntlid);
    io.socket.pause();
    const before = target.stats().commands;
    // 200 x 256 KiB reads, sent one by one so each arrives in its own chunk; without a bound
    // on unsent replies the target would parse them all and queue 50 MiB
    const n = 200;
    for (let i = 0; i < n; i++) {
      io.send(capsule({ opcode: IoOpcode.READ, cid: 10 + i, nsid: 1, cdw10: 2048, cdw12: 511, dataLength: 256 * 1024 }));
      await new Promise((r) => setTimeout(r, 1));
    }
    await new Promise((r) => setTimeout(r, 300));
    // 4 MiB in the socket plus the kernel's loopback buffers, far from all 200
    expect(target.stats().commands - before).toBeLessThan(n * 0.75);
    io.socket.resume();
    expect((await io.response(10 + n - 1, 10_000))?.status).toBe(0);
    expect(target.stats().commands - before).toBe(n);
    const data = io.pdus.filter((p) => p.type === PduType.C2H_DATA && p.header.readUInt16LE(8) === 10);
    expect(Buffer.concat(data.map((p) => p.data!)).equals(GOLDEN)).toBe(true);
  });
});
