import fc from 'fast-check';
import { ReplError } from '../../../common/errors';
import {
  Cmd,
  IHAVEOPT,
  Info,
  InfoItem,
  NbdRequest,
  Opt,
  REPLY_FLAG_DONE,
  REQUEST_LENGTH,
  Rep,
  ReplyType,
  decodeBlockStatusPayload,
  decodeClientFlags,
  decodeErrorPayload,
  decodeGreeting,
  decodeInfoItem,
  decodeInfoRequest,
  decodeMetaContextReply,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReplyHeader,
  decodeReplyHeader,
  decodeRequest,
  decodeServerReply,
  encodeBlockStatusChunk,
  encodeClientFlags,
  encodeErrorChunk,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoItem,
  encodeInfoRequest,
  encodeMetaContextReply,
  encodeMetaContextRequest,
  encodeOffsetDataHeader,
  encodeOptionReply,
  encodeOptionRequest,
  encodeRequest,
  encodeServerReply,
  encodeSimpleReply,
  readU64,
} from '../../../common/nbd/protocol';
import { fromNbdError, toNbdError } from '../../../common/nbd/errors';

const hex = (b: Buffer): string => b.toString('hex');

describe('nbd protocol codec', () => {
  it('encodes the greeting exactly as the crib sheet shows', () => {
    expect(hex(encodeGreeting(3))).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
    expect(decodeGreeting(encodeGreeting(3))).toEqual({ flags: 3 });
    expect(() => decodeGreeting(Buffer.alloc(18))).toThrow(ReplError);
    expect(decodeClientFlags(encodeClientFlags(3))).toBe(3);
  });

  it('round-trips option requests and replies', () => {
    const data = Buffer.from('hello');
    const req = encodeOptionRequest(Opt.GO, data);
    expect(req.readBigUInt64BE(0)).toBe(IHAVEOPT);
    expect(decodeOptionHeader(req)).toEqual({ option: Opt.GO, length: 5 });
    expect(req.subarray(16).toString()).toBe('hello');
    const rep = encodeOptionReply(Opt.LIST, Rep.ERR_UNSUP, Buffer.from('no'));
    expect(hex(rep.subarray(0, 8))).toBe('0003e889045565a9');
    expect(decodeOptionReplyHeader(rep)).toEqual({ option: Opt.LIST, type: Rep.ERR_UNSUP, length: 2 });
    const bad = Buffer.from(req);
    bad[0] = 0;
    expect(() => decodeOptionHeader(bad)).toThrow(/IHAVEOPT/);
  });

  it('encodes NBD_INFO_EXPORT like the crib sheet example (1 GiB, 0x0ded)', () => {
    const b = encodeInfoItem({ type: 'export', size: 1024 ** 3, flags: 0x0ded });
    expect(hex(b)).toBe('0000' + '0000000040000000' + '0ded');
  });

  it('round-trips info items', () => {
    const items: InfoItem[] = [
      { type: 'export', size: 2 ** 40 + 512, flags: 0x0d6d },
      { type: 'name', name: 'disk' },
      { type: 'description', description: 'recovery view ✓' },
      { type: 'block-size', minimum: 1, preferred: 4096, maximum: 32 << 20 },
    ];
    for (const item of items) expect(decodeInfoItem(encodeInfoItem(item))).toEqual(item);
    expect(decodeInfoItem(Buffer.from([0, 9, 1]))).toEqual({ type: 'unknown', info: 9 });
    expect(() => decodeInfoItem(Buffer.from([0, 0, 1]))).toThrow(ReplError);
  });

  it('round-trips INFO/GO and meta-context requests (property)', () => {
    const name = fc.string({ maxLength: 40 });
    fc.assert(
      fc.property(name, fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 10 }), (n, requests) => {
        expect(decodeInfoRequest(encodeInfoRequest({ name: n, requests }))).toEqual({ name: n, requests });
      }),
    );
    fc.assert(
      fc.property(name, fc.array(fc.string({ maxLength: 30 }), { maxLength: 6 }), (n, queries) => {
        expect(decodeMetaContextRequest(encodeMetaContextRequest({ name: n, queries }))).toEqual({ name: n, queries });
      }),
    );
  });

  it('rejects INFO data whose lengths do not add up', () => {
    const good = encodeInfoRequest({ name: 'disk', requests: [Info.BLOCK_SIZE] });
    expect(() => decodeInfoRequest(good.subarray(0, good.length - 1))).toThrow(/length mismatch/);
    expect(() => decodeInfoRequest(Buffer.concat([good, Buffer.alloc(1)]))).toThrow(/length mismatch/);
    const huge = Buffer.from(good);
    huge.writeUInt32BE(0xffffffff, 0);
    expect(() => decodeInfoRequest(huge)).toThrow(ReplError);
    const meta = encodeMetaContextRequest({ name: 'd', queries: ['base:allocation'] });
    const lying = Buffer.from(meta);
    lying.writeUInt32BE(1_000_000, 5); // query count far beyond the data
    expect(() => decodeMetaContextRequest(lying)).toThrow(/query count/);
    expect(() => decodeMetaContextRequest(Buffer.concat([meta, Buffer.alloc(2)]))).toThrow(/trailing/);
  });

  it('decoders never throw anything but ReplError on random input (property)', () => {
    const decoders = [
      decodeInfoRequest,
      decodeMetaContextRequest,
      decodeInfoItem,
      decodeServerReply,
      decodeMetaContextReply,
      decodeRequest,
      decodeReplyHeader,
      decodeErrorPayload,
      decodeBlockStatusPayload,
      decodeOptionHeader,
    ];
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => {
        for (const d of decoders) {
          try {
            d(Buffer.from(bytes));
          } catch (err) {
            expect(err).toBeInstanceOf(ReplError);
          }
        }
      }),
    );
  });

  it('round-trips requests (property), with the cookie kept as 64 bits', () => {
    const arb = fc.record({
      flags: fc.integer({ min: 0, max: 0xffff }),
      type: fc.integer({ min: 0, max: 0xffff }),
      cookie: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }),
      offset: fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
      length: fc.integer({ min: 0, max: 0xffffffff }),
    });
    fc.assert(
      fc.property(arb, (req: NbdRequest) => {
        const b = encodeRequest(req);
        expect(b.length).toBe(REQUEST_LENGTH);
        expect(decodeRequest(b)).toEqual(req);
      }),
    );
    const bad = encodeRequest({ flags: 0, type: Cmd.READ, cookie: 1n, offset: 0, length: 1 });
    bad.writeUInt32BE(0x12560953, 0);
    expect(() => decodeRequest(bad)).toThrow(/magic/);
  });

  it('reads 64-bit offsets above 2^53 as huge numbers (rejected by range checks)', () => {
    const b = Buffer.alloc(8, 0xff);
    expect(readU64(b, 0)).toBeGreaterThan(Number.MAX_SAFE_INTEGER);
  });

  it('encodes simple and structured replies', () => {
    const cookie = 0xfedcba9876543210n;
    expect(decodeReplyHeader(encodeSimpleReply(22, cookie))).toEqual({ kind: 'simple', error: 22, cookie });
    const data = encodeOffsetDataHeader(cookie, 4096, 512, true);
    expect(data.length).toBe(28);
    expect(decodeReplyHeader(data)).toEqual({
      kind: 'structured',
      flags: REPLY_FLAG_DONE,
      type: ReplyType.OFFSET_DATA,
      cookie,
      length: 520,
    });
    expect(readU64(data, 20)).toBe(4096);
    const err = encodeErrorChunk(cookie, 5, 'disk on fire');
    expect(decodeErrorPayload(err.subarray(20))).toEqual({ error: 5, message: 'disk on fire' });
    const bs = encodeBlockStatusChunk(cookie, 1, [
      { length: 65536, flags: 0 },
      { length: 4096, flags: 3 },
    ]);
    const h = decodeReplyHeader(bs);
    expect(h).toMatchObject({ type: ReplyType.BLOCK_STATUS, length: 20 });
    expect(decodeBlockStatusPayload(bs.subarray(20))).toEqual({
      contextId: 1,
      extents: [
        { length: 65536, flags: 0 },
        { length: 4096, flags: 3 },
      ],
    });
  });

  it('encodes LIST, META_CONTEXT and EXPORT_NAME answers', () => {
    expect(hex(encodeServerReply(''))).toBe('00000000');
    expect(decodeServerReply(encodeServerReply('disk', 'the disk'))).toEqual({ name: 'disk', description: 'the disk' });
    expect(decodeMetaContextReply(encodeMetaContextReply(1, 'base:allocation'))).toEqual({
      id: 1,
      name: 'base:allocation',
    });
    expect(encodeExportNameReply(4096, 0x0ded, true).length).toBe(10);
    expect(encodeExportNameReply(4096, 0x0ded, false).length).toBe(134);
  });

  it('translates ReplError codes to NBD errnos and back in one place', () => {
    expect(toNbdError(ReplError.readOnly())).toBe(1);
    expect(toNbdError(ReplError.io('x'))).toBe(5);
    expect(toNbdError(ReplError.range(0, 1, 0))).toBe(22);
    expect(toNbdError(new ReplError('E_NOSPC', 'full'))).toBe(28);
    expect(toNbdError(ReplError.closed())).toBe(108);
    expect(toNbdError(Object.assign(new Error('x'), { code: 'EDQUOT' }))).toBe(28);
    expect(fromNbdError(1).code).toBe('E_READ_ONLY');
    expect(fromNbdError(28).code).toBe('E_NOSPC');
    expect(fromNbdError(5, 'bad sector').message).toMatch(/EIO \(bad sector\)/);
    expect(fromNbdError(12345).code).toBe('E_INVALID');
  });
});
