/**
 * AgentSession: one agent connection (one volume) on the hub.
 *
 *   handshake --Hello admitted--> streaming --Goodbye/close/violation--> closing --> closed
 *       \--Refuse/violation/close-----------------------------------------^
 *
 * Handshake: the first message must be Hello; the host decides (fencing.ts)
 * and answers Welcome or Refuse (+ close code). Anything else before the
 * Welcome is a protocol violation.
 * Streaming: every record is validated (sizes, ranges, CRC32C of data when
 * non-zero, seq strictly increasing and epochs never reopened within the
 * session) and then appended to the volume's journal in arrival order; a
 * violation closes the connection with 4000 before the bad record reaches the
 * journal, so the replica stays consistent. After the group commit that
 * covers Seal(E) the session sends Ack{E, durableSeq}; acks are cumulative
 * and go out in journal order.
 * Replays are harmless: records carry absolute offsets and the journal order
 * is the truth, so a resent write simply lands again (same bytes, same place);
 * seq only has to grow within a session (the agent restarts it from
 * max(own counter, Welcome.durable_seq + 1)).
 * Backpressure: while more than HIGH_WATER payload bytes wait for the journal
 * the socket is paused (TCP pushes back on the agent), resumed below LOW_WATER.
 * Failback: a session welcomed with sync mode 'failback' carries a
 * FailbackDriver (hub/failback-session.ts) that gets the agent's failback
 * messages; any other record before endFailback() is a protocol violation.
 * After endFailback() the session streams like any RESUME session.
 */
import { ReplError } from '../common/errors';
import { Logger } from '../common/log';
import { crc32c } from '../common/nvme-tcp/crc32c';
import {
  AgentFailbackMessage,
  AgentMessage,
  AgentStatus,
  HubMessage,
  Hello,
  RefuseCode,
  ResyncBegin,
  ResyncEnd,
  Seal,
  Welcome,
  Write,
  decodeAgentMessage,
  encodeHubMessage,
} from '../proto/codec';
import { CloseCode, refuseCloseCode, toCloseCode } from './close-codes';
import { ReplicaStore } from './replica-store';

export type SessionState = 'handshake' | 'streaming' | 'closing' | 'closed';

export const TRANSITIONS: Record<SessionState, readonly SessionState[]> = {
  handshake: ['streaming', 'closing'],
  streaming: ['closing'],
  closing: ['closed'],
  closed: [],
};

const HIGH_WATER = 64 * 1024 * 1024;
const LOW_WATER = 16 * 1024 * 1024;

/** What the session needs from its WebSocket. */
export interface SessionTransport {
  send(data: Buffer): void;
  close(code: number, reason: string): void;
  pause(): void;
  resume(): void;
}

/** Receives a failback session's agent messages (hub/failback-session.ts). */
export interface FailbackDriver {
  onMessage(msg: AgentFailbackMessage): void;
  onClosed(reason: string): void;
}

export type Admission =
  | { kind: 'refuse'; code: RefuseCode; message: string }
  | { kind: 'welcome'; welcome: Welcome; store: ReplicaStore; failback?: FailbackDriver };

export interface SessionObserver {
  record(volume: string, type: string, bytes: number): void;
  ack(volume: string, latencySeconds: number): void;
}

export interface SessionHost {
  /** Fencing + volume creation; must mark the volume busy before it awaits anything. */
  admit(hello: Hello, session: AgentSession): Promise<Admission>;
  /** Called once when an admitted session ends. */
  release(session: AgentSession): void;
  observer: SessionObserver;
}

export interface SessionOptions {
  logger: Logger;
  /** Largest data payload of one Write. */
  maxRecordBytes: number;
  remote: string;
  nowMs?: () => number;
}

export interface ResyncProgress {
  full: boolean;
  doneBytes: number;
  totalBytes: number;
}

export class AgentSession {
  private stateValue: SessionState = 'handshake';
  private logger: Logger;
  private readonly now: () => number;
  /** Set after admission; the volume this session streams. */
  private storeRef: ReplicaStore | null = null;
  private helloValue: Hello | null = null;
  private lastSeq = -1;
  /** Newest record seq received in this session (-1: none yet). */
  get receivedSeq(): number {
    return this.lastSeq;
  }
  /** Newest epoch sealed in this session; writes must use a later one. */
  private lastSealEpoch = -1;
  private lastWriteEpoch = 0;
  private paused = false;
  private failback: FailbackDriver | null = null;
  agentStatus: AgentStatus | null = null;
  statusAtMs: number | null = null;
  resync: ResyncProgress | null = null;
  readonly connectedAtMs: number;

  constructor(
    private readonly transport: SessionTransport,
    private readonly host: SessionHost,
    private readonly options: SessionOptions,
  ) {
    this.now = options.nowMs ?? Date.now;
    this.connectedAtMs = this.now();
    this.logger = options.logger.child({ remote: options.remote });
  }

  get state(): SessionState {
    return this.stateValue;
  }

  get hello(): Hello | null {
    return this.helloValue;
  }

  get volumeName(): string | null {
    return this.storeRef ? this.storeRef.meta.name : null;
  }

  private transition(to: SessionState, reason: string): void {
    if (!TRANSITIONS[this.stateValue].includes(to)) {
      throw ReplError.internal(`session: illegal transition ${this.stateValue} -> ${to} (${reason})`);
    }
    this.logger.debug({ from: this.stateValue, to, reason }, 'session state');
    this.stateValue = to;
  }

  /** Feeds one binary WebSocket message. Never throws. */
  onMessage(buf: Buffer): void {
    if (this.stateValue === 'closing' || this.stateValue === 'closed') return;
    let msg: AgentMessage;
    try {
      msg = decodeAgentMessage(buf);
      if (this.stateValue === 'handshake') this.onHandshakeMessage(msg);
      else this.dispatch(msg);
    } catch (err) {
      this.fail(err);
    }
  }

  /** The transport closed (by the peer or by us). */
  onClosed(code: number, reason: string): void {
    if (this.stateValue === 'closed') return;
    if (this.stateValue !== 'closing') this.transition('closing', `transport closed ${code} ${reason}`);
    this.transition('closed', 'transport closed');
    const failback = this.failback;
    this.failback = null;
    failback?.onClosed(`closed ${code} ${reason}`);
    if (this.storeRef) this.host.release(this);
    this.logger.info({ code, reason }, 'agent disconnected');
  }

  /** Closes from our side (hub stopping, or a violation). */
  close(code: number, reason: string): void {
    if (this.stateValue === 'closing' || this.stateValue === 'closed') return;
    this.transition('closing', reason);
    this.transport.close(code, reason.slice(0, 120));
  }

  private fail(err: unknown): void {
    const code = toCloseCode(err);
    const message = err instanceof Error ? err.message : String(err);
    if (code === CloseCode.INTERNAL) this.logger.error({ err }, 'session failed');
    else this.logger.warn({ code, reason: message }, 'agent protocol violation; dropping connection');
    this.close(code, message);
  }

  private onHandshakeMessage(msg: AgentMessage): void {
    if (this.helloValue) throw ReplError.protocol(`${msg.type} before Welcome`);
    if (msg.type !== 'hello') throw ReplError.protocol(`expected Hello, got ${msg.type}`);
    const hello = msg.hello;
    this.helloValue = hello;
    this.logger = this.logger.child({ volume: hello.volumeName, agent: hello.agentId });
    this.host.admit(hello, this).then(
      (admission) => this.onAdmission(admission),
      (err) => this.fail(err),
    );
  }

  /** Sends a hub message on the streaming session (failback driver). */
  send(m: HubMessage): void {
    if (this.stateValue === 'streaming') this.transport.send(encodeHubMessage(m));
  }

  /** The failback finished: from now on the session takes ordinary records. */
  endFailback(): void {
    this.failback = null;
  }

  private onAdmission(a: Admission): void {
    if (this.stateValue !== 'handshake') {
      if (a.kind === 'welcome') {
        a.failback?.onClosed('session closed during admission');
        this.host.release(this);
      }
      return;
    }
    if (a.kind === 'refuse') {
      this.logger.warn({ code: a.code, reason: a.message }, 'agent refused');
      this.transport.send(encodeHubMessage({ type: 'refuse', refuse: { code: a.code, message: a.message } }));
      this.close(refuseCloseCode(a.code), a.message);
      return;
    }
    this.storeRef = a.store;
    const hello = this.helloValue!;
    this.lastSeq = hello.nextSeq - 1;
    this.lastSealEpoch = hello.nextEpoch - 1;
    this.failback = a.failback ?? null;
    this.transition('streaming', 'welcomed');
    this.transport.send(encodeHubMessage({ type: 'welcome', welcome: a.welcome }));
    this.logger.info({ mode: a.welcome.syncMode, generation: a.welcome.generation }, 'agent welcomed');
  }

  private dispatch(msg: AgentMessage): void {
    if (msg.type === 'failbackDirty' || msg.type === 'failbackAck' || msg.type === 'failbackApplied') {
      if (!this.failback) throw ReplError.protocol(`${msg.type} outside a failback`);
      return this.failback.onMessage(msg);
    }
    if (this.failback && msg.type !== 'status' && msg.type !== 'goodbye') throw ReplError.protocol(`${msg.type} during a failback`);
    switch (msg.type) {
      case 'write':
        return this.onWrite(msg.write);
      case 'seal':
        return this.onSeal(msg.seal);
      case 'resyncBegin':
        return this.onResyncBegin(msg.resyncBegin);
      case 'resyncEnd':
        return this.onResyncEnd(msg.resyncEnd);
      case 'status':
        return this.onStatus(msg.status);
      case 'goodbye':
        this.logger.info({ reason: msg.goodbye.reason }, 'agent said goodbye');
        return this.close(CloseCode.NORMAL, 'goodbye');
      case 'hello':
        throw ReplError.protocol('second Hello');
    }
  }

  private onWrite(w: Write): void {
    const store = this.storeRef!;
    const size = store.meta.size;
    if (w.seq <= this.lastSeq) throw ReplError.protocol(`write seq ${w.seq} not after ${this.lastSeq}`);
    if (w.epoch <= this.lastSealEpoch) throw ReplError.protocol(`write seq ${w.seq} in sealed epoch ${w.epoch}`);
    if (w.epoch < this.lastWriteEpoch) throw ReplError.protocol(`write seq ${w.seq} epoch went backwards`);
    if (w.length === 0 || w.offset + w.length > size) {
      throw new ReplError('E_RANGE', `write seq ${w.seq}: range ${w.offset}+${w.length} outside ${size} bytes`);
    }
    if (w.kind === 'data' && w.length > this.options.maxRecordBytes) {
      throw ReplError.protocol(`write seq ${w.seq}: ${w.length} bytes exceeds ${this.options.maxRecordBytes}`);
    }
    if (w.origin === 'resync' && !this.resync) {
      throw ReplError.protocol(`resync write seq ${w.seq} outside a resync group`);
    }
    let dataCrc: number | undefined;
    if (w.kind === 'data') {
      dataCrc = crc32c(w.data);
      if (w.crc32c !== 0 && w.crc32c !== dataCrc) throw ReplError.protocol(`write seq ${w.seq}: CRC32C mismatch`);
    }
    this.lastSeq = w.seq;
    this.lastWriteEpoch = w.epoch;
    this.host.observer.record(store.meta.name, w.kind, w.data.length);
    this.track(store.appendWrite(w, dataCrc));
  }

  private onSeal(s: Seal): void {
    const store = this.storeRef!;
    if (s.epoch <= this.lastSealEpoch) throw ReplError.protocol(`seal of epoch ${s.epoch} after ${this.lastSealEpoch}`);
    if (s.epoch < this.lastWriteEpoch) throw ReplError.protocol(`seal of epoch ${s.epoch} below write epoch ${this.lastWriteEpoch}`);
    this.lastSealEpoch = s.epoch;
    const receivedAt = this.now();
    this.host.observer.record(store.meta.name, 'seal', 0);
    this.track(
      store.appendSeal(s).then(() => {
        if (this.stateValue !== 'streaming') return;
        this.transport.send(encodeHubMessage({ type: 'ack', ack: { durableEpoch: s.epoch, durableSeq: store.durableSeq } }));
        this.host.observer.ack(store.meta.name, (this.now() - receivedAt) / 1000);
      }),
    );
  }

  private onResyncBegin(b: ResyncBegin): void {
    const store = this.storeRef!;
    this.resync = { full: b.full || (this.resync?.full ?? false), doneBytes: 0, totalBytes: b.totalBytes };
    this.host.observer.record(store.meta.name, 'resync-begin', 0);
    this.track(store.appendResyncBegin(b, this.now()));
  }

  private onResyncEnd(e: ResyncEnd): void {
    const store = this.storeRef!;
    if (!this.resync) throw ReplError.protocol('ResyncEnd without ResyncBegin');
    if (e.epoch <= this.lastSealEpoch) throw ReplError.protocol(`ResyncEnd names sealed epoch ${e.epoch}`);
    this.resync = null;
    this.host.observer.record(store.meta.name, 'resync-end', 0);
    this.track(store.appendResyncEnd(e, this.now()));
  }

  private onStatus(s: AgentStatus): void {
    this.agentStatus = s;
    this.statusAtMs = this.now();
    if (this.resync) {
      this.resync.doneBytes = s.resyncDoneBytes;
      this.resync.totalBytes = s.resyncTotalBytes || this.resync.totalBytes;
    }
  }

  /** Watches an append: failures end the session; the queue drives backpressure. */
  private track(p: Promise<void>): void {
    const store = this.storeRef!;
    if (!this.paused && store.queuedBytes > HIGH_WATER) {
      this.paused = true;
      this.transport.pause();
    }
    p.then(
      () => {
        if (this.paused && store.queuedBytes < LOW_WATER) {
          this.paused = false;
          this.transport.resume();
        }
      },
      (err) => this.fail(new ReplError('E_IO', `journal append failed: ${(err as Error).message}`, { cause: err })),
    );
  }
}
