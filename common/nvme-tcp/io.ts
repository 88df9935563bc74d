/**
 * NVM I/O commands mapped onto BlockDevice: Read, Write (FUA), Flush, Write
 * Zeroes, Dataset Management (deallocate -> trim). Every command is validated
 * here (namespace, LBA range, transfer length, write protection) before the
 * device sees it; device errors are translated by toNvmeStatus() only.
 * precheckWrite() runs the same checks before the target solicits data with
 * R2T, so a doomed write never costs a data transfer.
 */
import { Command, Completion, OK, QueueContext, fail } from './command';
import type { Controller } from './controller';
import { DSM_RANGE_LEN, IoOpcode, decodeDsmRanges } from './sqe';
import { Status, toNvmeStatus } from './status';
import type { NamespaceState } from './subsystem';

const ZERO_CHUNK = Buffer.alloc(1024 * 1024);
/** CDW11 b2 of Dataset Management: deallocate. */
const DSM_AD = 0x4;
const FUA = 1 << 30;
const DEAC = 1 << 25;

interface LbaRange {
  offset: number;
  length: number;
}

/** SLBA/NLB of Read, Write and Write Zeroes as a byte range; null when out of range. */
function lbaRange(ns: NamespaceState, cmd: Command): LbaRange | null {
  const slba = cmd.sqe.cdw11 * 2 ** 32 + cmd.sqe.cdw10;
  const nlb = (cmd.sqe.cdw12 & 0xffff) + 1;
  if (!Number.isSafeInteger(slba) || slba + nlb > ns.blocks) return null;
  return { offset: slba * ns.blockSize, length: nlb * ns.blockSize };
}

function namespaceOf(q: QueueContext, cmd: Command): NamespaceState | undefined {
  return q.controller!.subsystem.namespaces.get(cmd.sqe.nsid);
}

/** Checks a data-carrying write before its data is solicited; 0 when it may proceed. */
export function precheckWrite(q: QueueContext, cmd: Command): number {
  const { opcode } = cmd.sqe;
  if (opcode !== IoOpcode.WRITE && opcode !== IoOpcode.DATASET_MANAGEMENT) return 0;
  const ns = namespaceOf(q, cmd);
  if (!ns) return Status.INVALID_NAMESPACE;
  if (opcode === IoOpcode.DATASET_MANAGEMENT) return 0;
  if (ns.readOnly) return Status.NAMESPACE_WRITE_PROTECTED;
  const r = lbaRange(ns, cmd);
  if (!r) return Status.LBA_OUT_OF_RANGE;
  if (r.length !== cmd.sqe.sglLength) return Status.SGL_DATA_LENGTH_INVALID;
  return 0;
}

/** Read and Write complete with one then() on the device promise (no async wrappers on the hot path). */
export function handleIo(q: QueueContext, cmd: Command): Completion | Promise<Completion> {
  const ctrl = q.controller!;
  const { opcode } = cmd.sqe;
  if (opcode === IoOpcode.FLUSH) return flush(q, cmd);
  const ns = namespaceOf(q, cmd);
  if (!ns) {
    const known = opcode === IoOpcode.READ || opcode === IoOpcode.WRITE || opcode === IoOpcode.WRITE_ZEROES;
    return fail(known || opcode === IoOpcode.DATASET_MANAGEMENT ? Status.INVALID_NAMESPACE : Status.INVALID_OPCODE);
  }
  switch (opcode) {
    case IoOpcode.READ:
      return read(ctrl, ns, cmd);
    case IoOpcode.WRITE:
      return write(ctrl, ns, cmd);
    case IoOpcode.WRITE_ZEROES:
      return writeZeroes(ctrl, ns, cmd);
    case IoOpcode.DATASET_MANAGEMENT:
      return datasetManagement(ns, cmd);
    default:
      return fail(Status.INVALID_OPCODE);
  }
}

function read(ctrl: Controller, ns: NamespaceState, cmd: Command): Completion | Promise<Completion> {
  const r = lbaRange(ns, cmd);
  if (!r) return fail(Status.LBA_OUT_OF_RANGE);
  if (r.length !== cmd.sqe.sglLength) return fail(Status.SGL_DATA_LENGTH_INVALID);
  let p: Promise<Buffer>;
  try {
    p = ns.device.read(r.offset, r.length);
  } catch (err) {
    return fail(toNvmeStatus(err, 'read'));
  }
  return p.then(
    (data): Completion => {
      ctrl.counters.bytesRead += r.length;
      ctrl.counters.readCommands++;
      return { status: 0, data };
    },
    (err: unknown) => fail(toNvmeStatus(err, 'read')),
  );
}

function write(ctrl: Controller, ns: NamespaceState, cmd: Command): Completion | Promise<Completion> {
  if (ns.readOnly) return fail(Status.NAMESPACE_WRITE_PROTECTED);
  const r = lbaRange(ns, cmd);
  if (!r) return fail(Status.LBA_OUT_OF_RANGE);
  if (!cmd.data || cmd.data.length !== r.length) return fail(Status.SGL_DATA_LENGTH_INVALID);
  const fua = (cmd.sqe.cdw12 & FUA) !== 0 || !ctrl.writeCacheEnabled;
  let p: Promise<void>;
  try {
    p = ns.device.write(r.offset, cmd.data, fua ? { fua } : undefined);
  } catch (err) {
    return fail(toNvmeStatus(err, 'write'));
  }
  return p.then(
    (): Completion => {
      ctrl.counters.bytesWritten += r.length;
      ctrl.counters.writeCommands++;
      return OK;
    },
    (err: unknown) => fail(toNvmeStatus(err, 'write')),
  );
}

async function writeZeroes(ctrl: Controller, ns: NamespaceState, cmd: Command): Promise<Completion> {
  if (ns.readOnly) return fail(Status.NAMESPACE_WRITE_PROTECTED);
  const r = lbaRange(ns, cmd);
  if (!r) return fail(Status.LBA_OUT_OF_RANGE);
  const fua = (cmd.sqe.cdw12 & FUA) !== 0 || !ctrl.writeCacheEnabled;
  const opts = fua ? { fua } : undefined;
  const info = ns.device.info;
  try {
    if ((cmd.sqe.cdw12 & DEAC) !== 0 && info.canTrim && info.trimReadsZeroes) {
      await ns.device.trim(r.offset, r.length, opts);
    } else if (info.canWriteZeroes) {
      await ns.device.writeZeroes(r.offset, r.length, opts);
    } else {
      for (let pos = r.offset; pos < r.offset + r.length; pos += ZERO_CHUNK.length) {
        const n = Math.min(ZERO_CHUNK.length, r.offset + r.length - pos);
        await ns.device.write(pos, ZERO_CHUNK.subarray(0, n), opts);
      }
    }
    return OK;
  } catch (err) {
    return fail(toNvmeStatus(err, 'write'));
  }
}

async function datasetManagement(ns: NamespaceState, cmd: Command): Promise<Completion> {
  const count = (cmd.sqe.cdw10 & 0xff) + 1;
  if (!cmd.data || cmd.data.length < count * DSM_RANGE_LEN) return fail(Status.SGL_DATA_LENGTH_INVALID);
  // without AD the ranges are only hints
  if ((cmd.sqe.cdw11 & DSM_AD) === 0) return OK;
  if (ns.readOnly) return fail(Status.NAMESPACE_WRITE_PROTECTED);
  const ranges: LbaRange[] = [];
  for (const d of decodeDsmRanges(cmd.data, count)) {
    const slba = Number(d.slba);
    if (d.slba > BigInt(ns.blocks) || slba + d.blocks > ns.blocks) return fail(Status.LBA_OUT_OF_RANGE);
    if (d.blocks > 0) ranges.push({ offset: slba * ns.blockSize, length: d.blocks * ns.blockSize });
  }
  if (!ns.device.info.canTrim) return OK;
  try {
    await Promise.all(ranges.map((r) => ns.device.trim(r.offset, r.length)));
    return OK;
  } catch (err) {
    return fail(toNvmeStatus(err, 'write'));
  }
}

async function flush(q: QueueContext, cmd: Command): Promise<Completion> {
  const sub = q.controller!.subsystem;
  let targets: NamespaceState[];
  if (cmd.sqe.nsid === 0xffffffff) targets = [...sub.namespaces.values()];
  else {
    const ns = sub.namespaces.get(cmd.sqe.nsid);
    if (!ns) return fail(Status.INVALID_NAMESPACE);
    targets = [ns];
  }
  try {
    await Promise.all(targets.filter((ns) => !ns.readOnly).map((ns) => ns.device.flush()));
    return OK;
  } catch (err) {
    return fail(toNvmeStatus(err, 'write'));
  }
}
