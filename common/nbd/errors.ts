/**
 * The one translation between ReplError and NBD error numbers, both ways.
 * NBD errnos are fixed by the protocol (not the host's errno values). The
 * server maps a device failure with toNbdError(); the client maps a reply's
 * error with fromNbdError(). Unknown numbers are treated like EINVAL, as QEMU
 * does.
 */
import { ReplError, asReplError } from '../errors';
import { NbdErrno } from './protocol';

export function toNbdError(err: unknown): number {
  const e = asReplError(err);
  switch (e.code) {
    case 'E_READ_ONLY':
    case 'E_FENCED':
      return NbdErrno.EPERM;
    case 'E_NOSPC':
      return NbdErrno.ENOSPC;
    case 'E_RANGE':
    case 'E_INVALID':
    case 'E_USAGE':
    case 'E_PROTOCOL':
      return NbdErrno.EINVAL;
    case 'E_CLOSED':
      return NbdErrno.ESHUTDOWN;
    default:
      // E_IO, E_TIMEOUT, E_BUSY, E_INTERNAL, ...: the backing store failed
      return NbdErrno.EIO;
  }
}

export function nbdErrorName(errno: number): string {
  for (const [name, value] of Object.entries(NbdErrno)) if (value === errno) return name;
  return `error ${errno}`;
}

export function fromNbdError(errno: number, message = '', what = 'request'): ReplError {
  const text = `${what} failed: ${nbdErrorName(errno)}${message ? ` (${message})` : ''}`;
  switch (errno) {
    case NbdErrno.EPERM:
      return new ReplError('E_READ_ONLY', text);
    case NbdErrno.ENOSPC:
      return new ReplError('E_NOSPC', text);
    case NbdErrno.EIO:
    case NbdErrno.ENOMEM:
      return new ReplError('E_IO', text);
    case NbdErrno.ESHUTDOWN:
      return new ReplError('E_CLOSED', text);
    default:
      return new ReplError('E_INVALID', text);
  }
}
