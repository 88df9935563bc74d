/**
 * Types shared by the per-queue transport (connection.ts) and the command
 * handlers (fabrics.ts, admin.ts, io.ts): what a handler receives, what it
 * returns, and the narrow views of the queue and the target it may use.
 */
import type { Logger } from '../log';
import type { Controller, QueueHandle } from './controller';
import type { Subsystem } from './subsystem';
import type { Sqe } from './sqe';

export interface Command {
  sqe: Sqe;
  /** Host-to-controller data (in-capsule or collected from H2CData), null when none. */
  data: Buffer | null;
}

export interface Completion {
  status: number;
  dw0?: number;
  dw1?: number;
  /** Controller-to-host data, sent as C2HData before the CapsuleResp. */
  data?: Buffer;
  /** Close the connection once the response is written (Disconnect, failed Connect). */
  closeAfter?: boolean;
}

export const OK: Completion = { status: 0 };

export function fail(status: number, dw0 = 0): Completion {
  return { status, dw0 };
}

/** Limits and tunables resolved from NvmeTcpTargetOptions. */
export interface TargetLimits {
  maxH2CData: number;
  maxIoQueues: number;
  maxConnections: number;
  icReqTimeoutMs: number;
  pduTimeoutMs: number;
  keepAliveGraceMs: number;
  /** Largest in-capsule data accepted (IOCCSZ * 16 - 64). */
  maxCapsuleData: number;
  /** Largest data transfer of one command (MDTS). */
  maxTransfer: number;
  /** C2HData PDU size used when sending read data. */
  maxC2HData: number;
  /** Bytes of solicited write data one connection may have buffered at once. */
  maxR2TBuffer: number;
  /** Accepted sockets read into the shared static buffer (block/static-reads.ts); false keeps stream reads. */
  staticReads: boolean;
}

/** What a queue may ask of the target. */
export interface TargetContext {
  readonly logger: Logger;
  readonly limits: TargetLimits;
  findSubsystem(nqn: string): Subsystem | undefined;
  /** Discovery log page as seen by a host connected to the given local address/port. */
  discoveryLog(local: { address: string; port: number }): Buffer;
  countCommand(): void;
  countProtocolError(): void;
  /** A read completed by its last C2HData (SUCCESS flag) instead of a CapsuleResp. */
  countSuccessRead(): void;
}

/** What a command handler may ask of its queue. */
export interface QueueContext {
  readonly target: TargetContext;
  readonly logger: Logger;
  /** -1 until Connect succeeded. */
  readonly qid: number;
  readonly controller: Controller | null;
  readonly local: { address: string; port: number };
  /** This connection as the controller sees it. */
  readonly handle: QueueHandle;
  /** Binds this connection as the admin queue of a new controller. */
  bindAdmin(controller: Controller, sqsize: number, sqFlowDisabled: boolean): void;
  /** Binds this connection as I/O queue qid of an existing controller. */
  bindIo(controller: Controller, qid: number, sqsize: number, sqFlowDisabled: boolean): void;
}
