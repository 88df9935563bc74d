/**
 * The one translation from errors and refusals to WebSocket close codes on
 * the hub side (replication-spec "Session"): 4000 invalid/protocol, 4001 auth,
 * 4002 version, 4003 busy, 4004 fenced; 1011 for our own failures.
 */
import { ReplError } from '../common/errors';
import { RefuseCode } from '../proto/codec';

export const CloseCode = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  INTERNAL: 1011,
  INVALID: 4000,
  AUTH: 4001,
  VERSION: 4002,
  BUSY: 4003,
  FENCED: 4004,
} as const;

export function refuseCloseCode(code: RefuseCode): number {
  switch (code) {
    case 'auth':
      return CloseCode.AUTH;
    case 'version':
      return CloseCode.VERSION;
    case 'busy':
      return CloseCode.BUSY;
    case 'uuid-mismatch':
    case 'stale-generation':
    case 'failed-over':
      return CloseCode.FENCED;
    case 'invalid':
    case 'unspecified':
      return CloseCode.INVALID;
  }
}

export function toCloseCode(err: unknown): number {
  if (!(err instanceof ReplError)) return CloseCode.INTERNAL;
  switch (err.code) {
    case 'E_PROTOCOL':
    case 'E_INVALID':
    case 'E_RANGE':
    case 'E_HANDSHAKE':
      return CloseCode.INVALID;
    case 'E_AUTH':
      return CloseCode.AUTH;
    case 'E_VERSION':
      return CloseCode.VERSION;
    case 'E_BUSY':
      return CloseCode.BUSY;
    case 'E_FENCED':
      return CloseCode.FENCED;
    case 'E_CLOSED':
      return CloseCode.GOING_AWAY;
    default:
      return CloseCode.INTERNAL;
  }
}
