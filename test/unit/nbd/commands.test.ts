import { BlockDevice, Extent } from '../../../common/block/device';
import { MemoryDevice } from '../../../common/block/memory-device';
import { ReplError } from '../../../common/errors';
import { CommandContext, blockStatus, executeRequest, validateRequest } from '../../../common/nbd/commands';
import { ServedExport, transmissionFlags } from '../../../common/nbd/handshake';
import {
  Cmd,
  CmdFlag,
  NbdErrno,
  NbdRequest,
  ReplyType,
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeReplyHeader,
} from '../../../common/nbd/protocol';

const SIZE = 1 << 20;

function ctx(device: BlockDevice, opts: { structured?: boolean; readOnly?: boolean; blockStatus?: boolean } = {}): CommandContext {
  const exp: ServedExport = { name: 'd', device, description: '', readOnly: opts.readOnly ?? device.info.readOnly };
  const structured = opts.structured ?? true;
  return {
    export: exp,
    flags: transmissionFlags(exp, structured),
    structured,
    blockStatus: opts.blockStatus ?? structured,
    maxPayload: 32 << 20,
  };
}

const req = (type: number, offset = 0, length = 512, flags = 0): NbdRequest => ({ type, offset, length, flags, cookie: 7n });

function errnoOf(c: CommandContext, r: NbdRequest): number {
  return validateRequest(c, r)?.errno ?? 0;
}

describe('nbd command validation', () => {
  const c = ctx(new MemoryDevice(SIZE));

  it('follows the crib-sheet order and errnos', () => {
    expect(errnoOf(c, req(8))).toBe(NbdErrno.EINVAL); // RESIZE: unknown
    expect(errnoOf(c, req(0xffff))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.WRITE, 0, 512, CmdFlag.DF))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.READ, 0, 512, CmdFlag.DF | CmdFlag.FUA))).toBe(0);
    expect(errnoOf(c, req(Cmd.READ, SIZE - 1, 2))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.WRITE, SIZE, 1))).toBe(NbdErrno.ENOSPC);
    expect(errnoOf(c, req(Cmd.WRITE_ZEROES, SIZE - 512, 1024))).toBe(NbdErrno.ENOSPC);
    expect(errnoOf(c, req(Cmd.TRIM, SIZE - 512, 1024))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.CACHE, 2 ** 60, 1))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.BLOCK_STATUS, 0, 0))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.READ, 0, (32 << 20) + 1))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(c, req(Cmd.FLUSH, 0, 0))).toBe(0);
    expect(errnoOf(c, req(Cmd.READ, SIZE, 0))).toBe(0);
  });

  it('rejects DF without structured replies and BLOCK_STATUS without a context', () => {
    const simple = ctx(new MemoryDevice(SIZE), { structured: false });
    expect(errnoOf(simple, req(Cmd.READ, 0, 512, CmdFlag.DF))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(simple, req(Cmd.BLOCK_STATUS))).toBe(NbdErrno.EINVAL);
    expect(errnoOf(ctx(new MemoryDevice(SIZE), { blockStatus: false }), req(Cmd.BLOCK_STATUS))).toBe(NbdErrno.EINVAL);
  });

  it('gives EPERM for every write-type command on a read-only export, even out of range', () => {
    const ro = ctx(new MemoryDevice(SIZE), { readOnly: true });
    for (const t of [Cmd.WRITE, Cmd.TRIM, Cmd.WRITE_ZEROES]) expect(errnoOf(ro, req(t, SIZE * 2))).toBe(NbdErrno.EPERM);
    expect(errnoOf(ro, req(Cmd.READ))).toBe(0);
  });
});

describe('nbd command execution', () => {
  it('answers READ with one OFFSET_DATA chunk carrying the device buffer, or a simple reply', async () => {
    const dev = new MemoryDevice(SIZE);
    await dev.write(4096, Buffer.alloc(512, 0xab));
    const out = await executeRequest(ctx(dev), req(Cmd.READ, 4096, 512), null);
    expect(out).toHaveLength(2);
    expect(decodeReplyHeader(out[0]!)).toMatchObject({ type: ReplyType.OFFSET_DATA, length: 520, cookie: 7n });
    expect(out[1]!.equals(Buffer.alloc(512, 0xab))).toBe(true);
    const simple = await executeRequest(ctx(dev, { structured: false }), req(Cmd.READ, 4096, 512), null);
    expect(decodeReplyHeader(simple[0]!)).toEqual({ kind: 'simple', error: 0, cookie: 7n });
    const empty = await executeRequest(ctx(dev), req(Cmd.READ, 0, 0), null);
    expect(decodeReplyHeader(empty[0]!)).toMatchObject({ type: ReplyType.NONE, flags: 1 });
  });

  it('turns device failures into error chunks through toNbdError', async () => {
    const failing = new MemoryDevice(SIZE);
    failing.read = async () => {
      throw ReplError.io('medium error');
    };
    const out = await executeRequest(ctx(failing), req(Cmd.READ), null);
    expect(decodeReplyHeader(out[0]!)).toMatchObject({ type: ReplyType.ERROR, flags: 1 });
    expect(decodeErrorPayload(out[0]!.subarray(20))).toMatchObject({ error: NbdErrno.EIO });
    const simple = await executeRequest(ctx(failing, { structured: false }), req(Cmd.READ), null);
    expect(decodeReplyHeader(simple[0]!)).toMatchObject({ kind: 'simple', error: NbdErrno.EIO });
  });

  it('WRITE_ZEROES: FAST_ZERO -> ENOTSUP changing nothing; NO_HOLE allocates; plain may punch', async () => {
    const dev = new MemoryDevice(SIZE);
    await dev.write(0, Buffer.alloc(SIZE, 1));
    const fast = await executeRequest(ctx(dev), req(Cmd.WRITE_ZEROES, 0, 65536, CmdFlag.FAST_ZERO), null);
    expect(decodeErrorPayload(fast[0]!.subarray(20)).error).toBe(NbdErrno.ENOTSUP);
    expect((await dev.read(0, 16)).equals(Buffer.alloc(16, 1))).toBe(true);

    await executeRequest(ctx(dev), req(Cmd.WRITE_ZEROES, 0, 65536, CmdFlag.NO_HOLE), null);
    expect((await dev.read(0, 65536)).equals(Buffer.alloc(65536))).toBe(true);
    expect((await dev.extents(0, 65536))[0]).toMatchObject({ hole: false });
    await executeRequest(ctx(dev), req(Cmd.WRITE_ZEROES, 65536, 65536), null);
    expect((await dev.extents(65536, 65536))[0]).toMatchObject({ hole: true, zero: true });
  });

  it('builds block status from extents(): clipped, gaps as data, merged, REQ_ONE', async () => {
    const dev = new MemoryDevice(SIZE);
    await dev.write(65536, Buffer.alloc(512, 1));
    const c = ctx(dev);
    expect(await blockStatus(c, 0, 3 * 65536, false)).toEqual([
      { length: 65536, flags: 3 },
      { length: 65536, flags: 0 },
      { length: 65536, flags: 3 },
    ]);
    expect(await blockStatus(c, 100, 1000, true)).toEqual([{ length: 1000, flags: 3 }]);
    const weird: BlockDevice = Object.assign(Object.create(dev) as MemoryDevice, {
      extents: async (): Promise<Extent[]> => [
        { offset: 0, length: 4096, zero: true, hole: true },
        { offset: 8192, length: 4096, zero: true, hole: true },
        { offset: 12288, length: 4096, zero: true, hole: true },
      ],
    });
    expect(await blockStatus(ctx(weird), 1024, 32768, false)).toEqual([
      { length: 3072, flags: 3 },
      { length: 4096, flags: 0 },
      { length: 8192, flags: 3 },
      { length: 32768 - 3072 - 4096 - 8192, flags: 0 },
    ]);
    const plain: BlockDevice = {
      info: dev.info,
      read: (o, l) => dev.read(o, l),
      write: (o, d) => dev.write(o, d),
      writeZeroes: (o, l) => dev.writeZeroes(o, l),
      trim: (o, l) => dev.trim(o, l),
      flush: () => dev.flush(),
      close: () => dev.close(),
    };
    expect(await blockStatus(ctx(plain), 0, SIZE, false)).toEqual([{ length: SIZE, flags: 0 }]);
    const out = await executeRequest(c, req(Cmd.BLOCK_STATUS, 0, 65536), null);
    expect(decodeBlockStatusPayload(out[0]!.subarray(20))).toEqual({ contextId: 1, extents: [{ length: 65536, flags: 3 }] });
  });
});
