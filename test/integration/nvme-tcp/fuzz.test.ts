/**
 * Fuzzing the target's connection handler over real sockets: random bytes and
 * randomly mutated valid sessions (admin and I/O queues, in-capsule and R2T
 * writes) are sent in random chunks. The process must not throw, every fuzz
 * connection must end, and afterwards a well-behaved host still reads the data
 * written before the fuzzing started.
 */
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import fc from 'fast-check';
import { MemoryDevice } from '../../../common/block/memory-device';
import { testLogger } from '../../../common/log';
import { NvmeTcpHost } from '../../../common/nvme-tcp/initiator';
import { NvmeTcpTarget } from '../../../common/nvme-tcp/target';
import { AdminOpcode, IoOpcode } from '../../../common/nvme-tcp/sqe';
import { HOSTNQN, RawClient, capsule, connectCmd, h2cData, icReq, propertySetCmd } from '../../helpers/pdu-builders';

const NQN = 'nqn.2024-01.io.blockrep:fuzz';
/** Holds GOLDEN; mutated sessions target NQN, whose name differs in several bytes, so they cannot write here. */
const GOLD_NQN = 'nqn.2024-01.io.blockrep:gold';
const SIZE = 4 * 1024 * 1024;
const GOLDEN = crypto.randomBytes(64 * 1024);
const GOLDEN_AT = 2 * 1024 * 1024;

let target: NvmeTcpTarget;
let port: number;
let cntlid: number;
let admin: RawClient;

beforeAll(async () => {
  const device = new MemoryDevice(SIZE);
  target = new NvmeTcpTarget({ logger: testLogger('nvme-fuzz'), icReqTimeoutMs: 500, pduTimeoutMs: 500 });
  const gold = new MemoryDevice(SIZE);
  await gold.write(GOLDEN_AT, GOLDEN);
  target.addSubsystem({ nqn: NQN, serial: 'FUZZ', namespaces: [{ nsid: 1, device, nguid: crypto.randomBytes(16), uuid: crypto.randomUUID() }] });
  target.addSubsystem({ nqn: GOLD_NQN, serial: 'GOLD', namespaces: [{ nsid: 1, device: gold, nguid: crypto.randomBytes(16), uuid: crypto.randomUUID() }] });
  port = (await target.listen('127.0.0.1', 0)).port;
  // one live association whose I/O queues the fuzzed sessions try to join
  admin = await RawClient.connect(port);
  await admin.handshake();
  admin.send(connectCmd({ cid: 1, subnqn: NQN }));
  cntlid = (await admin.response(1))!.dw0 & 0xffff;
  admin.send(propertySetCmd(2, 0x14, 0x00460001));
  await admin.response(2);
});

afterAll(async () => {
  admin?.destroy();
  await target?.close();
});

function adminSession(): Buffer {
  return Buffer.concat([
    icReq(),
    connectCmd({ cid: 1, subnqn: NQN, kato: 0 }),
    propertySetCmd(2, 0x14, 0x00460001),
    capsule({ opcode: AdminOpcode.IDENTIFY, cid: 3, cdw10: 1, dataLength: 4096 }),
    capsule({ opcode: AdminOpcode.GET_LOG_PAGE, cid: 4, nsid: 0xffffffff, cdw10: 0x02 | (127 << 16), dataLength: 512 }),
    capsule({ opcode: AdminOpcode.SET_FEATURES, cid: 5, cdw10: 0x07, cdw11: 0x00010001 }),
    capsule({ opcode: AdminOpcode.ASYNC_EVENT_REQUEST, cid: 6 }),
  ]);
}

function ioSession(qid: number): Buffer {
  return Buffer.concat([
    icReq(),
    connectCmd({ cid: 1, qid, cntlid, subnqn: NQN, hostnqn: HOSTNQN }),
    capsule({ opcode: IoOpcode.WRITE, cid: 2, nsid: 1, cdw10: 16, cdw12: 7 }, Buffer.alloc(4096, 0x11)),
    capsule({ opcode: IoOpcode.WRITE, cid: 3, nsid: 1, cdw10: 64, cdw12: 15, dataLength: 8192, inCapsule: false }),
    h2cData({ cccid: 3, ttag: 0, datao: 0 }, Buffer.alloc(8192, 0x22)),
    capsule({ opcode: IoOpcode.READ, cid: 4, nsid: 1, cdw10: 16, cdw12: 7, dataLength: 4096 }),
    capsule({ opcode: IoOpcode.FLUSH, cid: 5, nsid: 1 }),
  ]);
}

/** Sends `bytes` in the given chunk sizes, half-closes, and waits until the target closed too. */
async function play(bytes: Buffer, chunks: number[]): Promise<void> {
  const s = net.connect({ host: '127.0.0.1', port, noDelay: true });
  s.on('error', () => undefined);
  s.on('data', () => undefined);
  await new Promise<void>((resolve, reject) => {
    s.once('connect', resolve);
    s.once('error', reject);
  });
  let pos = 0;
  for (let i = 0; pos < bytes.length; i++) {
    const n = chunks[i % chunks.length]!;
    s.write(bytes.subarray(pos, pos + n));
    pos += n;
  }
  s.end();
  await new Promise<void>((resolve) => {
    if (s.destroyed) resolve();
    s.once('close', () => resolve());
    setTimeout(() => {
      s.destroy();
      resolve();
    }, 3000).unref();
  });
}

const chunking = fc.array(fc.integer({ min: 1, max: 4096 }), { minLength: 1, maxLength: 8 });
const mutations = fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 });

function mutate(base: Buffer, muts: Array<[number, number]>, truncateAt: number | null): Buffer {
  const b = Buffer.from(base);
  // bias towards the first 200 bytes of every session, where headers live
  for (const [pos, value] of muts) b[pos % Math.min(b.length, pos % 3 === 0 ? b.length : 200)] = value;
  return truncateAt === null ? b : b.subarray(0, truncateAt % b.length);
}

describe('NVMe/TCP connection fuzzing', () => {
  it('survives random bytes, with and without a valid ICReq first', async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 3000 }), fc.boolean(), chunking, async (bytes, withIc, chunks) => {
        await play(Buffer.concat([withIc ? icReq() : Buffer.alloc(0), Buffer.from(bytes)]), chunks);
      }),
      { numRuns: 60 },
    );
  });

  it('survives mutated admin sessions', async () => {
    await fc.assert(
      fc.asyncProperty(mutations, fc.option(fc.nat()), chunking, async (muts, cut, chunks) => {
        await play(mutate(adminSession(), muts, cut), chunks);
      }),
      { numRuns: 80 },
    );
  });

  it('survives mutated I/O queue sessions joining a live controller', async () => {
    await fc.assert(
      fc.asyncProperty(mutations, fc.option(fc.nat()), chunking, fc.integer({ min: 1, max: 8 }), async (muts, cut, chunks, qid) => {
        await play(mutate(ioSession(qid), muts, cut), chunks);
      }),
      { numRuns: 80 },
    );
  });

  it('still serves a well-behaved host with the data intact', async () => {
    const deadline = Date.now() + 5000;
    while (target.stats().connections > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    expect(target.stats().connections).toBe(1); // only the long-lived raw admin queue
    const h = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: GOLD_NQN, ioQueues: 2 });
    expect((await h.read(1, GOLDEN_AT, GOLDEN.length)).equals(GOLDEN)).toBe(true);
    await h.close();
    const f = await NvmeTcpHost.connect({ host: '127.0.0.1', port, subnqn: NQN, ioQueues: 2 });
    await f.write(1, 0, GOLDEN);
    expect((await f.read(1, 0, GOLDEN.length)).equals(GOLDEN)).toBe(true);
    await f.close();
    expect(target.stats().protocolErrors).toBeGreaterThan(0);
  });
});
