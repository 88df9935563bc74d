/**
 * One error class for the whole project. Codes are a closed union; each wire
 * (NVMe status, NBD error, WebSocket close code, process exit code) translates
 * a ReplError in exactly one place of its own.
 */
export type ErrorCode =
  | 'E_PROTOCOL'
  | 'E_HANDSHAKE'
  | 'E_VERSION'
  | 'E_AUTH'
  | 'E_FENCED'
  | 'E_CLOSED'
  | 'E_TIMEOUT'
  | 'E_RANGE'
  | 'E_INVALID'
  | 'E_READ_ONLY'
  | 'E_NOT_FOUND'
  | 'E_BUSY'
  | 'E_IO'
  | 'E_NOSPC'
  | 'E_BITMAP_CORRUPT'
  | 'E_USAGE'
  | 'E_INTERNAL';

export class ReplError extends Error {
  readonly code: ErrorCode;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ReplError';
    this.code = code;
  }

  static range(offset: number, length: number, size: number): ReplError {
    return new ReplError('E_RANGE', `range ${offset}+${length} outside device of ${size} bytes`);
  }
  static protocol(message: string): ReplError {
    return new ReplError('E_PROTOCOL', message);
  }
  static readOnly(what = 'device'): ReplError {
    return new ReplError('E_READ_ONLY', `${what} is read-only`);
  }
  static closed(what = 'device'): ReplError {
    return new ReplError('E_CLOSED', `${what} is closed`);
  }
  static invalid(message: string): ReplError {
    return new ReplError('E_INVALID', message);
  }
  static io(message: string, cause?: unknown): ReplError {
    return new ReplError('E_IO', message, { cause });
  }
  static internal(message: string, cause?: unknown): ReplError {
    return new ReplError('E_INTERNAL', message, { cause });
  }
}

/** Wraps anything thrown into a ReplError; Node fs errors become E_IO / E_NOSPC. */
export function asReplError(err: unknown): ReplError {
  if (err instanceof ReplError) return err;
  const e = err as NodeJS.ErrnoException | undefined;
  if (e && typeof e === 'object' && typeof e.code === 'string') {
    if (e.code === 'ENOSPC' || e.code === 'EDQUOT' || e.code === 'EFBIG') {
      return new ReplError('E_NOSPC', e.message, { cause: e });
    }
    if (e.code === 'EROFS' || e.code === 'EACCES' || e.code === 'EPERM') {
      return new ReplError('E_READ_ONLY', e.message, { cause: e });
    }
    return new ReplError('E_IO', e.message, { cause: e });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new ReplError('E_INTERNAL', message, { cause: err });
}
