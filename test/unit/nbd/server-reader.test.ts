import fc from 'fast-check';
import { ReplError } from '../../../common/errors';
import {
  Cmd,
  CmdFlag,
  Info,
  Opt,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOptionRequest,
  encodeRequest,
} from '../../../common/nbd/protocol';
import { BufferPool } from '../../../common/block/buffer-pool';
import { ServerEvent, ServerReader } from '../../../common/nbd/server-reader';

const payload = Buffer.from(Array.from({ length: 700 }, (_, i) => (i * 7) & 0xff));

/** A whole client session: flags, two options, GO, then pipelined requests. */
function session(): Buffer {
  return Buffer.concat([
    encodeClientFlags(3),
    encodeOptionRequest(Opt.STRUCTURED_REPLY),
    encodeOptionRequest(99, Buffer.from('unknown option data')),
    encodeOptionRequest(Opt.GO, encodeInfoRequest({ name: 'disk', requests: [Info.BLOCK_SIZE] })),
    encodeRequest({ flags: 0, type: Cmd.READ, cookie: 1n, offset: 0, length: 4096 }),
    encodeRequest({ flags: CmdFlag.FUA, type: Cmd.WRITE, cookie: 2n, offset: 512, length: payload.length }),
    payload,
    encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: 3n, offset: 0, length: 0 }),
    encodeRequest({ flags: 0, type: Cmd.FLUSH, cookie: 4n, offset: 0, length: 0 }),
    encodeRequest({ flags: 0, type: Cmd.DISC, cookie: 5n, offset: 0, length: 0 }),
  ]);
}

/** Drains events the way the server does: GO switches to transmission. */
function drain(reader: ServerReader, out: ServerEvent[]): void {
  for (let ev = reader.next(); ev; ev = reader.next()) {
    out.push(ev);
    if (ev.kind === 'client-flags') reader.setPhase('options');
    if (ev.kind === 'option' && ev.option === Opt.GO) reader.setPhase('transmission');
  }
}

function feed(chunks: Buffer[]): ServerEvent[] {
  const reader = new ServerReader();
  const out: ServerEvent[] = [];
  for (const c of chunks) {
    reader.push(c);
    drain(reader, out);
  }
  expect(reader.buffered).toBe(0);
  return out;
}

function summary(events: ServerEvent[]): unknown[] {
  return events.map((e) => {
    switch (e.kind) {
      case 'option':
        return ['option', e.option, e.data.toString('hex')];
      case 'request':
        return ['request', e.request, e.payload ? e.payload.toString('hex') : null];
      default:
        return e;
    }
  });
}

describe('nbd ServerReader', () => {
  const stream = session();
  const expected = summary(feed([stream]));

  it('parses a whole session', () => {
    expect(expected.map((e) => (Array.isArray(e) ? e[0] : (e as ServerEvent).kind))).toEqual([
      'client-flags',
      'option',
      'option',
      'option',
      'request',
      'request',
      'request',
      'request',
      'request',
    ]);
    expect(expected[5]).toEqual([
      'request',
      { flags: CmdFlag.FUA, type: Cmd.WRITE, cookie: 2n, offset: 512, length: payload.length },
      payload.toString('hex'),
    ]);
  });

  it('gives the same events when split at every offset', () => {
    for (let i = 0; i <= stream.length; i++) {
      expect(summary(feed([stream.subarray(0, i), stream.subarray(i)]))).toEqual(expected);
    }
  });

  it('gives the same events one byte at a time', () => {
    const bytes = Array.from({ length: stream.length }, (_, i) => stream.subarray(i, i + 1));
    expect(summary(feed(bytes))).toEqual(expected);
  });

  it('gives the same events for random chunkings (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 20 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        const chunks: Buffer[] = [];
        let prev = 0;
        for (const p of points) {
          chunks.push(stream.subarray(prev, p));
          prev = p;
        }
        chunks.push(stream.subarray(prev));
        expect(summary(feed(chunks))).toEqual(expected);
      }),
    );
  });

  it('returns write payloads without copying when they arrive in one chunk', () => {
    const reader = new ServerReader();
    reader.setPhase('transmission');
    const buf = Buffer.concat([
      encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: 1n, offset: 0, length: payload.length }),
      payload,
    ]);
    reader.push(buf);
    const ev = reader.next();
    expect(ev?.kind).toBe('request');
    if (ev?.kind === 'request') expect(ev.payload?.buffer).toBe(buf.buffer);
  });

  it('keeps nothing of a transient chunk: the same events when every chunk is overwritten after push', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: stream.length }), { maxLength: 20 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        points.push(stream.length);
        const reader = new ServerReader({}, { transientChunks: true });
        const scratch = Buffer.alloc(stream.length);
        const out: ServerEvent[] = [];
        let prev = 0;
        for (const p of points) {
          // one reused buffer, as a socket reading into a static buffer delivers it
          const n = stream.copy(scratch, 0, prev, p);
          reader.push(scratch.subarray(0, n));
          drain(reader, out);
          reader.detach();
          scratch.fill(0xee);
          prev = p;
        }
        expect(reader.buffered).toBe(0);
        expect(summary(out)).toEqual(expected);
      }),
    );
  });

  it('assembles a payload that spans chunks in a pooled buffer as its bytes arrive', () => {
    const pool = new BufferPool({ minBytes: 16 * 1024, maxBytes: 1024 * 1024, maxFreeBytes: 1024 * 1024 });
    const reader = new ServerReader({}, { pool });
    reader.setPhase('transmission');
    const big = Buffer.from(Array.from({ length: 40000 }, (_, i) => (i * 13) & 0xff));
    const header = encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: 7n, offset: 0, length: big.length });
    reader.push(Buffer.concat([header, big.subarray(0, 1000)]));
    expect(reader.next()).toBeNull();
    // the bytes moved into the payload buffer: nothing stays queued
    expect(reader.buffered).toBe(0);
    reader.push(big.subarray(1000, 30000));
    expect(reader.next()).toBeNull();
    reader.push(big.subarray(30000));
    const ev = reader.next();
    expect(ev?.kind).toBe('request');
    if (ev?.kind !== 'request' || !ev.payload) throw new Error('no payload');
    expect(ev.payload.equals(big)).toBe(true);
    expect(pool.stats).toMatchObject({ allocated: 1, leased: 1 });
    pool.release(ev.payload);
    expect(pool.stats).toMatchObject({ leased: 0, freeBytes: 65536 });
    // the next payload of that size class reuses the buffer
    reader.push(Buffer.concat([header, big.subarray(0, 5)]));
    reader.push(big.subarray(5));
    const again = reader.next();
    expect(again?.kind === 'request' && again.payload?.buffer).toBe(ev.payload.buffer);
    expect(pool.stats).toMatchObject({ allocated: 1, reused: 1, leased: 1 });
  });

  it('skips oversized option data and reports it after the data has been consumed', () => {
    const reader = new ServerReader({ maxOptionLength: 16, maxOptionDiscard: 1024 });
    reader.setPhase('options');
    reader.push(encodeOptionRequest(Opt.GO, Buffer.alloc(100)));
    reader.push(encodeOptionRequest(Opt.LIST));
    expect(reader.next()).toEqual({ kind: 'option-too-big', option: Opt.GO, length: 100 });
    expect(reader.next()).toMatchObject({ kind: 'option', option: Opt.LIST });
  });

  it('abandons the stream for absurd option lengths and bad magics', () => {
    const reader = new ServerReader({ maxOptionDiscard: 1024 });
    reader.setPhase('options');
    reader.push(encodeOptionRequest(Opt.GO).subarray(0, 12));
    reader.push(Buffer.from([0x7f, 0xff, 0xff, 0xff]));
    expect(() => reader.next()).toThrow(ReplError);

    const r2 = new ServerReader();
    r2.setPhase('transmission');
    const req = encodeRequest({ flags: 0, type: Cmd.READ, cookie: 1n, offset: 0, length: 1 });
    req.writeUInt32BE(0x96744668, 0);
    r2.push(req);
    expect(() => r2.next()).toThrow(/magic/);
  });

  it('drops write payloads above maxPayload without buffering them', () => {
    const reader = new ServerReader({ maxPayload: 1024 });
    reader.setPhase('transmission');
    reader.push(encodeRequest({ flags: 0, type: Cmd.WRITE, cookie: 9n, offset: 0, length: 5000 }));
    for (let i = 0; i < 5; i++) {
      reader.push(Buffer.alloc(1000));
      const ev = reader.next();
      expect(reader.buffered).toBe(0);
      if (i < 4) expect(ev).toBeNull();
      else expect(ev).toMatchObject({ kind: 'request-too-big', request: { cookie: 9n, length: 5000 } });
    }
    reader.push(encodeRequest({ flags: 0, type: Cmd.FLUSH, cookie: 10n, offset: 0, length: 0 }));
    expect(reader.next()).toMatchObject({ kind: 'request', request: { type: Cmd.FLUSH, cookie: 10n } });
  });

  it('ignores input once stopped', () => {
    const reader = new ServerReader();
    reader.setPhase('stopped');
    reader.push(Buffer.alloc(100));
    expect(reader.next()).toBeNull();
    expect(reader.buffered).toBe(0);
  });
});
