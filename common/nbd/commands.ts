/**
 * Transmission-phase commands: validate a request against the export, run it
 * on the BlockDevice and build the reply buffers. Never throws: every failure
 * becomes an NBD error reply (structured error chunk when structured replies
 * were agreed, simple reply otherwise).
 *
 * Validation order (crib sheet 4.4): unknown command -> EINVAL; flag not valid
 * for the command -> EINVAL (FUA tolerated everywhere); write-type command on a
 * read-only export -> EPERM; command not advertised -> EINVAL; range: WRITE
 * and WRITE_ZEROES past the end -> ENOSPC, everything else -> EINVAL.
 * Zero-length requests succeed without touching the device.
 *
 * Read replies are [header, data]: the device's buffer is written as is.
 */
import { Extent } from '../block/device';
import { toNbdError, nbdErrorName } from './errors';
import { BASE_ALLOCATION_ID, ServedExport } from './handshake';
import {
  BlockStatusExtent,
  Cmd,
  CmdFlag,
  NbdErrno,
  NbdRequest,
  REPLY_FLAG_DONE,
  ReplyType,
  StateFlag,
  TxFlag,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  encodeStructuredHeader,
} from './protocol';

export interface CommandContext {
  readonly export: ServedExport;
  /** Transmission flags sent to the client. */
  readonly flags: number;
  readonly structured: boolean;
  /** base:allocation was selected for this export. */
  readonly blockStatus: boolean;
  readonly maxPayload: number;
}

/** Upper bound of extents in one block-status reply (protocol allows 2^20; clients re-ask). */
const MAX_EXTENTS = 64 * 1024;

const ALLOWED_FLAGS: Record<number, number> = {
  [Cmd.READ]: CmdFlag.FUA | CmdFlag.DF,
  [Cmd.WRITE]: CmdFlag.FUA,
  [Cmd.FLUSH]: CmdFlag.FUA,
  [Cmd.TRIM]: CmdFlag.FUA,
  [Cmd.CACHE]: CmdFlag.FUA,
  [Cmd.WRITE_ZEROES]: CmdFlag.FUA | CmdFlag.NO_HOLE | CmdFlag.FAST_ZERO,
  [Cmd.BLOCK_STATUS]: CmdFlag.FUA | CmdFlag.REQ_ONE,
};

class CommandError {
  constructor(
    readonly errno: number,
    readonly message: string,
  ) {}
}

export function errorReply(ctx: CommandContext, cookie: bigint, errno: number, message: string): Buffer[] {
  if (ctx.structured) return [encodeErrorChunk(cookie, errno, message)];
  return [encodeSimpleReply(errno, cookie)];
}

/** Returns an error for an invalid request, or null when it may run. */
export function validateRequest(ctx: CommandContext, req: NbdRequest): CommandError | null {
  const allowed = ALLOWED_FLAGS[req.type];
  if (allowed === undefined) return new CommandError(NbdErrno.EINVAL, `unknown command ${req.type}`);
  let valid = allowed;
  if (!(ctx.flags & TxFlag.SEND_DF)) valid &= ~CmdFlag.DF;
  if (!(ctx.flags & TxFlag.SEND_FAST_ZERO)) valid &= ~CmdFlag.FAST_ZERO;
  if (req.flags & ~valid) return new CommandError(NbdErrno.EINVAL, `flags 0x${req.flags.toString(16)} not valid`);
  const mutating = req.type === Cmd.WRITE || req.type === Cmd.TRIM || req.type === Cmd.WRITE_ZEROES;
  if (mutating && ctx.flags & TxFlag.READ_ONLY) return new CommandError(NbdErrno.EPERM, 'export is read-only');
  if (req.type === Cmd.TRIM && !(ctx.flags & TxFlag.SEND_TRIM)) {
    return new CommandError(NbdErrno.EINVAL, 'trim not supported');
  }
  if (req.type === Cmd.WRITE_ZEROES && !(ctx.flags & TxFlag.SEND_WRITE_ZEROES)) {
    return new CommandError(NbdErrno.EINVAL, 'write zeroes not supported');
  }
  if (req.type === Cmd.BLOCK_STATUS && !(ctx.structured && ctx.blockStatus)) {
    return new CommandError(NbdErrno.EINVAL, 'no metadata context selected');
  }
  if (req.type === Cmd.READ && req.length > ctx.maxPayload) {
    return new CommandError(NbdErrno.EINVAL, `read of ${req.length} bytes exceeds ${ctx.maxPayload}`);
  }
  if (req.type === Cmd.FLUSH) return null;
  const size = ctx.export.device.info.size;
  if (req.offset > size || req.offset + req.length > size) {
    const errno = req.type === Cmd.WRITE || req.type === Cmd.WRITE_ZEROES ? NbdErrno.ENOSPC : NbdErrno.EINVAL;
    return new CommandError(errno, `range ${req.offset}+${req.length} beyond export size ${size}`);
  }
  if (req.type === Cmd.BLOCK_STATUS && req.length === 0) {
    return new CommandError(NbdErrno.EINVAL, 'block status of an empty range');
  }
  return null;
}

/** Validates and runs one request (payload: WRITE data). Resolves to the reply buffers. */
export async function executeRequest(ctx: CommandContext, req: NbdRequest, payload: Buffer | null): Promise<Buffer[]> {
  const invalid = validateRequest(ctx, req);
  if (invalid) return errorReply(ctx, req.cookie, invalid.errno, invalid.message);
  try {
    return await run(ctx, req, payload);
  } catch (err) {
    if (err instanceof CommandError) return errorReply(ctx, req.cookie, err.errno, err.message);
    const errno = toNbdError(err);
    return errorReply(ctx, req.cookie, errno, `${nbdErrorName(errno)}: ${(err as Error).message ?? String(err)}`);
  }
}

async function run(ctx: CommandContext, req: NbdRequest, payload: Buffer | null): Promise<Buffer[]> {
  const dev = ctx.export.device;
  const fua = (req.flags & CmdFlag.FUA) !== 0;
  const ok = (): Buffer[] => [encodeSimpleReply(0, req.cookie)];
  switch (req.type) {
    case Cmd.READ:
      return readReply(ctx, req, req.length === 0 ? Buffer.alloc(0) : await dev.read(req.offset, req.length));
    case Cmd.WRITE:
      if (payload && payload.length > 0) await dev.write(req.offset, payload, { fua });
      return ok();
    case Cmd.FLUSH:
      await dev.flush();
      return ok();
    case Cmd.TRIM:
      if (req.length > 0) await dev.trim(req.offset, req.length, { fua });
      return ok();
    case Cmd.CACHE:
      return ok();
    case Cmd.WRITE_ZEROES:
      await writeZeroes(ctx, req, fua);
      return ok();
    case Cmd.BLOCK_STATUS: {
      const extents = await blockStatus(ctx, req.offset, req.length, (req.flags & CmdFlag.REQ_ONE) !== 0);
      return [encodeBlockStatusChunk(req.cookie, BASE_ALLOCATION_ID, extents, true)];
    }
    default:
      throw new CommandError(NbdErrno.EINVAL, `unknown command ${req.type}`);
  }
}

function readReply(ctx: CommandContext, req: NbdRequest, data: Buffer): Buffer[] {
  if (!ctx.structured) return data.length > 0 ? [encodeSimpleReply(0, req.cookie), data] : [encodeSimpleReply(0, req.cookie)];
  if (data.length === 0) {
    return [encodeStructuredHeader({ flags: REPLY_FLAG_DONE, type: ReplyType.NONE, cookie: req.cookie, length: 0 })];
  }
  // one OFFSET_DATA chunk covers the range: valid with and without DF
  return [encodeOffsetDataHeader(req.cookie, req.offset, data.length, true), data];
}

async function writeZeroes(ctx: CommandContext, req: NbdRequest, fua: boolean): Promise<void> {
  // Zeroing is not faster than writing zeroes for our devices: answer fast-zero
  // requests at once, changing nothing (the client falls back to writing).
  if (req.flags & CmdFlag.FAST_ZERO) throw new CommandError(NbdErrno.ENOTSUP, 'fast zero not supported');
  if (req.length === 0) return;
  // NO_HOLE: the range should stay allocated; the device writes zero bytes
  // (WriteOptions.noHole). Still a zeroing call, so replication ships a zeroes
  // record instead of the zero data a plain write would carry.
  await ctx.export.device.writeZeroes(req.offset, req.length, { fua, noHole: (req.flags & CmdFlag.NO_HOLE) !== 0 });
}

function extentFlags(e: Extent): number {
  return (e.hole ? StateFlag.HOLE : 0) | (e.zero ? StateFlag.ZERO : 0);
}

/**
 * base:allocation extents for [offset, offset+length): consecutive from offset,
 * clipped to the range, gaps in the device's answer reported as data (always
 * correct), neighbours with equal flags merged. Without extents() on the
 * device: one data extent.
 */
export async function blockStatus(
  ctx: CommandContext,
  offset: number,
  length: number,
  reqOne: boolean,
): Promise<BlockStatusExtent[]> {
  const dev = ctx.export.device;
  const end = offset + length;
  const out: BlockStatusExtent[] = [];
  const add = (len: number, flags: number): void => {
    const last = out[out.length - 1];
    if (last && last.flags === flags) last.length += len;
    else out.push({ length: len, flags });
  };
  let pos = offset;
  if (dev.extents) {
    for (const e of await dev.extents(offset, length)) {
      const start = Math.max(e.offset, pos);
      const stop = Math.min(e.offset + e.length, end);
      if (stop <= start) continue;
      if (start > pos) add(start - pos, 0);
      add(stop - start, extentFlags(e));
      pos = stop;
      if (out.length >= MAX_EXTENTS || (reqOne && out.length > 1)) break;
    }
  }
  if (pos < end && out.length < MAX_EXTENTS) add(end - pos, 0);
  return reqOne ? out.slice(0, 1) : out;
}
