/**
 * The front ends' static-buffer reads depend on Node internals (see
 * common/block/static-reads.ts); this test fails when a Node upgrade breaks the
 * fast path, instead of the server silently falling back to stream reads.
 */
import * as net from 'node:net';
import { READ_BUFFER_BYTES, adoptStaticReads } from '../../../common/block/static-reads';

async function withServer(onSocket: (s: net.Socket) => void, client: (port: number) => Promise<void>): Promise<void> {
  const server = net.createServer({ pauseOnConnect: true }, onSocket);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as net.AddressInfo).port;
  try {
    await client(port);
  } finally {
    await new Promise<void>((r) => server.close(() => r()));
  }
}

describe('adoptStaticReads', () => {
  it('delivers every byte through one reused buffer, then end and close; the server can close', async () => {
    const sent = Buffer.from(Array.from({ length: 3 * READ_BUFFER_BYTES + 123 }, (_, i) => (i * 31) & 0xff));
    const received: Buffer[] = [];
    const memories = new Set<ArrayBufferLike>();
    let adopted: net.Socket | null = null;
    let closed!: Promise<void>;
    await withServer(
      (s) => {
        adopted = adoptStaticReads(s, (chunk) => {
          memories.add(chunk.buffer);
          received.push(Buffer.from(chunk));
        });
        const a = adopted;
        closed = new Promise((r) => a?.once('close', () => r()));
        a?.on('end', () => a.end());
      },
      async (port) => {
        const c = net.connect(port, '127.0.0.1');
        await new Promise((r) => c.once('connect', r));
        c.end(sent);
        await new Promise((r) => c.once('close', r));
      },
    );
    expect(adopted).not.toBeNull();
    await closed;
    expect(Buffer.concat(received).equals(sent)).toBe(true);
    expect(memories.size).toBe(1);
  });

  it('pauses and resumes reading', async () => {
    let adopted: net.Socket | null = null;
    let got = 0;
    await withServer(
      (s) => {
        adopted = adoptStaticReads(s, (chunk) => {
          got += chunk.length;
          adopted?.pause();
          setTimeout(() => adopted?.resume(), 5);
        });
        adopted?.on('end', () => adopted?.end());
      },
      async (port) => {
        const c = net.connect(port, '127.0.0.1');
        await new Promise((r) => c.once('connect', r));
        for (let i = 0; i < 20; i++) c.write(Buffer.alloc(1000));
        c.end();
        await new Promise((r) => c.once('close', r));
      },
    );
    expect(got).toBe(20000);
  });
});
