/**
 * Controller: the state of one association (admin queue + its I/O queues):
 * fabrics properties CAP/VS/CC/CSTS, features, keep-alive timer and
 * asynchronous events.
 *
 *   CC.EN 0->1 : validate CC, CSTS.RDY = 1
 *   CC.EN 1->0 : reset - I/O queues are closed, RDY = 0
 *   CC.SHN != 0: SHST = in progress, flush every namespace, SHST = complete
 *
 * Keep alive: armed at Connect from KATO (ms) and re-armed by each Keep Alive;
 * it fires after KATO + grace and tears the controller down (all of its
 * connections are closed). KATO 0 disables it. Teardown is idempotent and
 * also runs when the admin connection closes.
 */
import type { Logger } from '../log';
import { NVME_VERSION, SmartCounters } from './identify';
import { Status } from './status';
import type { Subsystem } from './subsystem';

/** Per-queue operations the controller needs from a connection. */
export interface QueueHandle {
  readonly qid: number;
  close(reason: string): void;
}

export const Property = { CAP: 0x00, VS: 0x08, CC: 0x14, CSTS: 0x1c } as const;

/** Max queue entries (0-based) the host may use per I/O queue. */
export const MQES = 127;
/** CAP: MQES 127, CQR, TO 15 (7.5 s), CSS NVM. */
export const CAP = (0x20n << 32n) | (0x0fn << 24n) | (1n << 16n) | BigInt(MQES);
/** AERL + 1: outstanding Asynchronous Event Requests per controller. */
export const MAX_AERS = 4;

export const AsyncEvent = {
  NS_ATTRIBUTE_CHANGED: 0x00040002,
  DISCOVERY_CHANGED: 0x0070f002,
} as const;
/** OAES bits: namespace attribute notices (I/O), discovery log change (discovery). */
export const OAES_IO = 1 << 8;
export const OAES_DISCOVERY = 1 << 31;

const CC_EN = 0x1;
const CSTS_RDY = 0x1;
const CSTS_CFS = 0x2;
const SHST_MASK = 0xc;
const SHST_IN_PROGRESS = 0x4;
const SHST_COMPLETE = 0x8;

export interface ControllerOptions {
  cntlid: number;
  subsystem: Subsystem;
  hostnqn: string;
  hostid: Buffer;
  admin: QueueHandle;
  katoMs: number;
  keepAliveGraceMs: number;
  maxIoQueues: number;
  logger: Logger;
  onTeardown(controller: Controller): void;
}

export class Controller {
  readonly cntlid: number;
  readonly subsystem: Subsystem;
  readonly hostnqn: string;
  readonly hostid: Buffer;
  readonly ioQueues = new Map<number, QueueHandle>();
  readonly counters: SmartCounters = { bytesRead: 0, bytesWritten: 0, readCommands: 0, writeCommands: 0, powerOnHours: 0 };
  /** NSIDs changed since the host last read LID 4. */
  readonly changedNs = new Set<number>();
  cc = 0;
  csts = 0;
  katoMs: number;
  /** Granted I/O queues (Number of Queues); null until the host asked. */
  grantedIoQueues: number | null = null;
  asyncEventConfig = 0;
  writeCacheEnabled = true;
  temperatureThreshold = 0x157;
  private readonly admin: QueueHandle;
  private readonly options: ControllerOptions;
  /** Held AERs: resolvers of their completion promises, oldest first. */
  private readonly aers: Array<(dw0: number) => void> = [];
  /** Events raised while no AER was outstanding. */
  private readonly pendingEvents: number[] = [];
  private kaTimer: NodeJS.Timeout | null = null;
  private tornDown = false;

  constructor(options: ControllerOptions) {
    this.options = options;
    this.cntlid = options.cntlid;
    this.subsystem = options.subsystem;
    this.hostnqn = options.hostnqn;
    this.hostid = options.hostid;
    this.admin = options.admin;
    this.katoMs = options.katoMs;
    this.armKeepAlive();
  }

  get isDiscovery(): boolean {
    return this.subsystem.discovery;
  }

  get ready(): boolean {
    return (this.csts & CSTS_RDY) !== 0;
  }

  get alive(): boolean {
    return !this.tornDown;
  }

  /** I/O queues the host may connect (granted by Number of Queues, else the limit). */
  get ioQueueLimit(): number {
    return this.grantedIoQueues ?? this.options.maxIoQueues;
  }

  get maxIoQueues(): number {
    return this.options.maxIoQueues;
  }

  propertyGet(offset: number, size8: boolean): { status: number; value: bigint } {
    const four = (v: number): { status: number; value: bigint } =>
      size8 ? { status: Status.INVALID_FIELD, value: 0n } : { status: 0, value: BigInt(v >>> 0) };
    switch (offset) {
      case Property.CAP:
        return size8 ? { status: 0, value: CAP } : { status: Status.INVALID_FIELD, value: 0n };
      case Property.VS:
        return four(NVME_VERSION);
      case Property.CC:
        return four(this.cc);
      case Property.CSTS:
        return four(this.csts);
      default:
        return { status: Status.INVALID_FIELD, value: 0n };
    }
  }

  propertySet(offset: number, size8: boolean, value: bigint): number {
    if (offset !== Property.CC || size8) return Status.INVALID_FIELD;
    const next = Number(value & 0xffffffffn);
    const prev = this.cc;
    this.cc = next;
    if (next & CC_EN && !(prev & CC_EN)) this.enable(next);
    if (!(next & CC_EN) && prev & CC_EN) this.reset();
    const shn = (next >>> 14) & 3;
    if (shn !== 0 && (this.csts & SHST_MASK) === 0) this.shutdown();
    if (shn === 0 && !(next & CC_EN)) this.csts &= ~SHST_MASK;
    return 0;
  }

  private enable(cc: number): void {
    const iosqes = (cc >>> 16) & 0xf;
    const iocqes = (cc >>> 20) & 0xf;
    const mps = (cc >>> 7) & 0xf;
    const ams = (cc >>> 11) & 0x7;
    const css = (cc >>> 4) & 0x7;
    const badEntrySizes = !this.isDiscovery && (iosqes !== 6 || iocqes !== 4);
    if (badEntrySizes || mps !== 0 || ams !== 0 || css !== 0) {
      this.options.logger.warn({ cntlid: this.cntlid, cc }, 'invalid CC on enable; raising CSTS.CFS');
      this.csts |= CSTS_CFS;
      return;
    }
    this.csts = (this.csts & ~CSTS_CFS) | CSTS_RDY;
  }

  private reset(): void {
    this.csts &= ~(CSTS_RDY | CSTS_CFS);
    for (const q of [...this.ioQueues.values()]) q.close('controller reset (CC.EN cleared)');
    this.ioQueues.clear();
  }

  private shutdown(): void {
    this.csts = (this.csts & ~SHST_MASK) | SHST_IN_PROGRESS;
    const flushes = [...this.subsystem.namespaces.values()].filter((ns) => !ns.readOnly).map((ns) => ns.device.flush());
    Promise.allSettled(flushes).then((results) => {
      for (const r of results) {
        if (r.status === 'rejected') this.options.logger.warn({ err: r.reason, cntlid: this.cntlid }, 'flush on shutdown failed');
      }
      if ((this.csts & SHST_MASK) === SHST_IN_PROGRESS) this.csts = (this.csts & ~SHST_MASK) | SHST_COMPLETE;
    });
  }

  /** Keep Alive command or Set Features KATO. */
  keepAlive(): void {
    this.armKeepAlive();
  }

  setKato(ms: number): void {
    this.katoMs = ms;
    this.armKeepAlive();
  }

  private armKeepAlive(): void {
    if (this.kaTimer) clearTimeout(this.kaTimer);
    this.kaTimer = null;
    if (this.katoMs === 0 || this.tornDown) return;
    this.kaTimer = setTimeout(() => {
      this.options.logger.warn({ cntlid: this.cntlid, katoMs: this.katoMs }, 'keep alive timeout; tearing down controller');
      this.teardown('keep alive timeout');
    }, this.katoMs + this.options.keepAliveGraceMs);
    this.kaTimer.unref();
  }

  /** Holds an AER; resolves with DW0 when an event is reported. Null when the limit is reached. */
  addAer(): Promise<number> | null {
    if (this.aers.length >= MAX_AERS) return null;
    const event = this.pendingEvents.shift();
    if (event !== undefined) return Promise.resolve(event);
    return new Promise<number>((resolve) => this.aers.push(resolve));
  }

  /** Reports an asynchronous event if the host enabled it (discovery changes are always reported). */
  raiseEvent(dw0: number): void {
    const enabled = this.isDiscovery ? (this.asyncEventConfig & OAES_DISCOVERY) !== 0 : (this.asyncEventConfig & OAES_IO) !== 0;
    if (!enabled || this.tornDown) return;
    const aer = this.aers.shift();
    if (aer) aer(dw0);
    else if (this.pendingEvents.length < 16 && !this.pendingEvents.includes(dw0)) this.pendingEvents.push(dw0);
  }

  /** Closes every connection of the association; idempotent. */
  teardown(reason: string): void {
    if (this.tornDown) return;
    this.tornDown = true;
    if (this.kaTimer) clearTimeout(this.kaTimer);
    this.kaTimer = null;
    this.aers.length = 0;
    for (const q of [...this.ioQueues.values()]) q.close(reason);
    this.ioQueues.clear();
    this.admin.close(reason);
    this.options.onTeardown(this);
  }
}
