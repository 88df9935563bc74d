/**
 * NVMe completion status values and the translations between ReplError and
 * the 16-bit CQE STATUS word, each in exactly one place: toNvmeStatus() on the
 * target side, statusError() on the host side.
 *
 * STATUS word = DNR<<15 | M<<14 | CRD<<12 | SCT<<9 | SC<<1 (phase bit 0 is 0 on fabrics).
 */
import { ErrorCode, ReplError } from '../errors';

export function nvmeStatus(sct: number, sc: number, dnr: boolean): number {
  return ((dnr ? 1 : 0) << 15) | ((sct & 7) << 9) | ((sc & 0xff) << 1);
}

export const DNR = 0x8000;

/** Status words as sent on the wire (DNR included where it is normal). */
export const Status = {
  SUCCESS: 0x0000,
  INVALID_OPCODE: nvmeStatus(0, 0x01, true),
  INVALID_FIELD: nvmeStatus(0, 0x02, true),
  CID_CONFLICT: nvmeStatus(0, 0x03, true),
  DATA_TRANSFER_ERROR: nvmeStatus(0, 0x04, false),
  INTERNAL_ERROR: nvmeStatus(0, 0x06, false),
  ABORT_REQUESTED: nvmeStatus(0, 0x07, false),
  INVALID_NAMESPACE: nvmeStatus(0, 0x0b, true),
  COMMAND_SEQUENCE_ERROR: nvmeStatus(0, 0x0c, true),
  SGL_DATA_LENGTH_INVALID: nvmeStatus(0, 0x0f, true),
  SGL_DESCRIPTOR_TYPE_INVALID: nvmeStatus(0, 0x11, true),
  SGL_OFFSET_INVALID: nvmeStatus(0, 0x16, true),
  KATO_INVALID: nvmeStatus(0, 0x1a, true),
  NAMESPACE_WRITE_PROTECTED: nvmeStatus(0, 0x20, true),
  COMMAND_INTERRUPTED: nvmeStatus(0, 0x21, false),
  TRANSIENT_TRANSPORT_ERROR: nvmeStatus(0, 0x22, false),
  LBA_OUT_OF_RANGE: nvmeStatus(0, 0x80, true),
  CAPACITY_EXCEEDED: nvmeStatus(0, 0x81, true),
  NAMESPACE_NOT_READY: nvmeStatus(0, 0x82, false),
  INVALID_QUEUE_ID: nvmeStatus(1, 0x01, true),
  INVALID_QUEUE_SIZE: nvmeStatus(1, 0x02, true),
  AER_LIMIT_EXCEEDED: nvmeStatus(1, 0x05, true),
  INVALID_LOG_PAGE: nvmeStatus(1, 0x09, true),
  CONNECT_INCOMPATIBLE_FORMAT: nvmeStatus(1, 0x80, true),
  CONNECT_CONTROLLER_BUSY: nvmeStatus(1, 0x81, false),
  CONNECT_INVALID_PARAMETERS: nvmeStatus(1, 0x82, true),
  CONNECT_INVALID_HOST: nvmeStatus(1, 0x84, true),
  WRITE_FAULT: nvmeStatus(2, 0x80, true),
  UNRECOVERED_READ_ERROR: nvmeStatus(2, 0x81, true),
  ACCESS_DENIED: nvmeStatus(2, 0x86, true),
} as const;

export function statusSct(status: number): number {
  return (status >> 9) & 7;
}

export function statusSc(status: number): number {
  return (status >> 1) & 0xff;
}

export function statusDnr(status: number): boolean {
  return (status & DNR) !== 0;
}

/** Which kind of command failed, to pick between Write Fault and Unrecovered Read Error. */
export type CommandKind = 'read' | 'write' | 'other';

/** ReplError (or anything thrown by a BlockDevice) -> NVMe status word. The one target-side translation. */
export function toNvmeStatus(err: unknown, kind: CommandKind = 'other'): number {
  const code = err instanceof ReplError ? err.code : 'E_INTERNAL';
  switch (code) {
    case 'E_RANGE':
      return Status.LBA_OUT_OF_RANGE;
    case 'E_INVALID':
    case 'E_USAGE':
      return Status.INVALID_FIELD;
    case 'E_READ_ONLY':
      return Status.NAMESPACE_WRITE_PROTECTED;
    case 'E_FENCED':
    case 'E_AUTH':
      return Status.ACCESS_DENIED;
    case 'E_NOSPC':
      return Status.CAPACITY_EXCEEDED;
    case 'E_NOT_FOUND':
      return Status.INVALID_NAMESPACE;
    // transient back-end conditions: let the host retry (DNR clear)
    case 'E_CLOSED':
    case 'E_BUSY':
      return Status.NAMESPACE_NOT_READY;
    case 'E_TIMEOUT':
      return Status.COMMAND_INTERRUPTED;
    case 'E_IO':
      return kind === 'read' ? Status.UNRECOVERED_READ_ERROR : kind === 'write' ? Status.WRITE_FAULT : Status.INTERNAL_ERROR;
    default:
      return Status.INTERNAL_ERROR;
  }
}

const STATUS_NAMES = new Map<number, string>(
  Object.entries(Status).map(([name, value]) => [value & ~DNR, name.toLowerCase().replace(/_/g, ' ')]),
);

export function describeStatus(status: number): string {
  const name = STATUS_NAMES.get(status & ~DNR & ~1) ?? 'unknown status';
  const hex = (status & 0xffff).toString(16).padStart(4, '0');
  return `${name} (sct ${statusSct(status)}, sc 0x${statusSc(status).toString(16)}, status 0x${hex}${statusDnr(status) ? ', dnr' : ''})`;
}

/** A command completed with a non-zero NVMe status (host side). */
export class NvmeStatusError extends ReplError {
  readonly sct: number;
  readonly sc: number;
  readonly dnr: boolean;

  constructor(
    code: ErrorCode,
    readonly status: number,
    what: string,
  ) {
    super(code, `${what} failed: ${describeStatus(status)}`);
    this.sct = statusSct(status);
    this.sc = statusSc(status);
    this.dnr = statusDnr(status);
  }
}

/** NVMe status word -> ReplError. The one host-side translation. */
export function statusError(status: number, what: string): NvmeStatusError {
  const s = status & ~DNR & 0xfffe;
  let code: ErrorCode = 'E_IO';
  if (s === (Status.LBA_OUT_OF_RANGE & ~DNR)) code = 'E_RANGE';
  else if (s === (Status.INVALID_FIELD & ~DNR) || s === (Status.INVALID_OPCODE & ~DNR)) code = 'E_INVALID';
  else if (s === (Status.NAMESPACE_WRITE_PROTECTED & ~DNR)) code = 'E_READ_ONLY';
  else if (s === (Status.INVALID_NAMESPACE & ~DNR)) code = 'E_NOT_FOUND';
  else if (s === (Status.ACCESS_DENIED & ~DNR)) code = 'E_FENCED';
  else if (s === (Status.CAPACITY_EXCEEDED & ~DNR)) code = 'E_NOSPC';
  else if (s === (Status.NAMESPACE_NOT_READY & ~DNR) || s === (Status.CONNECT_CONTROLLER_BUSY & ~DNR)) code = 'E_BUSY';
  else if (statusSct(status) === 1 && statusSc(status) >= 0x80) code = 'E_HANDSHAKE';
  return new NvmeStatusError(code, status, what);
}
