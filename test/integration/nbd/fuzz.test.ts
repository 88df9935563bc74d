/**
 * Fuzzes a live NbdServer with random and mutated byte streams. Properties:
 * nothing escapes the connection handler (no uncaught exception or unhandled
 * rejection), the server keeps serving a well-behaved client, and data on an
 * export the fuzzer cannot name stays intact.
 */
import fc from 'fast-check';
import { createHash } from 'node:crypto';
import { MemoryDevice } from '../../../common/block/memory-device';
import { NbdClient } from '../../../common/nbd/client';
import { NbdServer } from '../../../common/nbd/server';
import {
  Cmd,
  CmdFlag,
  Info,
  Opt,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  encodeRequest,
} from '../../../common/nbd/protocol';
import { RawPeer } from './raw-peer';

const KiB = 1024;
const SIZE = 1024 * KiB;

function validSession(): Buffer {
  const req = (type: number, offset: number, length: number, flags = 0, cookie = 1n): Buffer =>
    encodeRequest({ flags, type, cookie, offset, length });
  return Buffer.concat([
    encodeClientFlags(3),
    encodeOptionRequest(Opt.STRUCTURED_REPLY),
    encodeOptionRequest(Opt.LIST),
    encodeOptionRequest(Opt.SET_META_CONTEXT, encodeMetaContextRequest({ name: 'fuzz', queries: ['base:allocation'] })),
    encodeOptionRequest(Opt.GO, encodeInfoRequest({ name: 'fuzz', requests: [Info.BLOCK_SIZE, Info.NAME] })),
    req(Cmd.WRITE, 4096, 512, CmdFlag.FUA),
    Buffer.alloc(512, 0x42),
    req(Cmd.READ, 0, 8192, CmdFlag.DF, 2n),
    req(Cmd.BLOCK_STATUS, 0, SIZE, 0, 3n),
    req(Cmd.WRITE_ZEROES, 8192, 4096, CmdFlag.NO_HOLE, 4n),
    req(Cmd.TRIM, 65536, 65536, 0, 5n),
    req(Cmd.CACHE, 0, 4096, 0, 6n),
    req(Cmd.FLUSH, 0, 0, 0, 7n),
    req(Cmd.DISC, 0, 0, 0, 8n),
  ]);
}

function digest(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

describe('NbdServer fuzz', () => {
  let server: NbdServer;
  let port: number;
  let precious: MemoryDevice;
  let preciousHash: string;
  const escaped: unknown[] = [];
  const onEscape = (err: unknown): void => {
    escaped.push(err);
  };

  beforeAll(async () => {
    process.on('uncaughtException', onEscape);
    process.on('unhandledRejection', onEscape);
    server = new NbdServer({ handshakeTimeoutMs: 1000 });
    precious = new MemoryDevice(SIZE);
    const data = Buffer.alloc(SIZE);
    for (let i = 0; i < SIZE; i++) data[i] = (i * 37) & 0xff;
    await precious.write(0, data);
    preciousHash = digest(data);
    server.addExport({ name: 'fuzz', device: new MemoryDevice(SIZE) });
    server.addExport({ name: 'precious-data-export', device: precious });
    ({ port } = await server.listen('127.0.0.1', 0));
  });

  afterAll(async () => {
    await server.close();
    process.off('uncaughtException', onEscape);
    process.off('unhandledRejection', onEscape);
  });

  /** Sends the bytes, gives the server a moment to react, then hangs up. */
  async function send(bytes: Buffer): Promise<void> {
    const p = await RawPeer.connect(port);
    const chunk = 1 + (bytes.length % 97);
    for (let i = 0; i < bytes.length; i += chunk) p.write(bytes.subarray(i, i + chunk));
    await p.waitClosed(15);
    p.destroy();
  }

  async function healthy(): Promise<void> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName: 'precious-data-export' });
    try {
      expect(digest(await c.read(0, SIZE))).toBe(preciousHash);
    } finally {
      await c.close();
    }
  }

  it('survives random bytes after the greeting', async () => {
    await fc.assert(
      fc.asyncProperty(fc.boolean(), fc.uint8Array({ maxLength: 300 }), async (validFlags, bytes) => {
        await send(Buffer.concat([validFlags ? encodeClientFlags(3) : Buffer.alloc(0), Buffer.from(bytes)]));
      }),
      { numRuns: 150 },
    );
    await healthy();
    expect(escaped).toEqual([]);
  });

  it('survives mutated valid sessions (option haggling and requests)', async () => {
    const base = validSession();
    const mutation = fc.record({
      edits: fc.array(fc.record({ at: fc.nat({ max: base.length - 1 }), value: fc.integer({ min: 0, max: 255 }) }), {
        minLength: 1,
        maxLength: 6,
      }),
      cut: fc.option(fc.nat({ max: base.length }), { nil: undefined }),
    });
    await fc.assert(
      fc.asyncProperty(mutation, async ({ edits, cut }) => {
        const b = Buffer.from(base);
        for (const e of edits) b[e.at] = e.value;
        await send(cut === undefined ? b : b.subarray(0, cut));
      }),
      { numRuns: 200 },
    );
    await healthy();
    expect(escaped).toEqual([]);
    await new Promise((r) => setTimeout(r, 100));
    expect(server.stats().connections).toBeLessThanOrEqual(1);
  });

  it('still serves the unmutated session correctly', async () => {
    const p = await RawPeer.connect(port);
    p.write(validSession());
    expect(await p.waitClosed(3000)).toBe(true);
    expect(p.available).toBeGreaterThan(8192);
    p.destroy();
    await healthy();
  });
});
