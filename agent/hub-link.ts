/**
 * HubLink: one reconnecting WebSocket session to the hub for one volume.
 * It owns the socket, the handshake, liveness and the send queue; what to
 * send and what an Ack means belong to replicator.ts.
 *
 *   idle ─▶ connecting ─▶ handshaking ─▶ streaming
 *              │  ▲            │             │
 *              ▼  │            ▼             ▼
 *             backoff ◀────────┴─────────────┘       any ─▶ closed (close())
 *
 * - One loop (single flight): start()/ensureConnected() never open a second
 *   socket. The delay comes from the pure backoff(attempt); the attempt counter
 *   resets only after a Welcome. A Refuse is logged, kept for status(), and
 *   followed by the long refuseBackoffMs (at most FAILED_OVER_RETRY_MS after
 *   a 'failed-over' refusal: failback starts when the agent asks again).
 * - Heartbeat: a WebSocket ping every heartbeatIntervalMs; maxMissedPongs
 *   missed pongs -> ws.terminate() (not close(): a dead peer never answers).
 * - Send queue: messages are encoded on send(); they go to the socket while
 *   ws.bufferedAmount < highWaterMark and wait in our queue otherwise.
 *   queuedBytes = our queue + ws.bufferedAmount; the replicator bounds it.
 *   Nothing survives a session: the queue is discarded on disconnect.
 * - Batching: send() only queues; a setImmediate at the end of the loop turn
 *   sends the whole queue with the TCP socket corked, so every record queued
 *   in that turn leaves in one writev instead of one syscall each (at most one
 *   loop turn of extra latency). Only some sends carry a completion
 *   callback (the last of a batch, and one per SEND_CALLBACK_BYTES): the
 *   callbacks fire in order, so 'drain' still follows the bytes, without one
 *   event per record.
 * - Frames are sent with an all-zero mask (see zeroMask).
 * - Write records (the bulk of the stream) are encoded by proto/write-codec.ts
 *   straight into 4 MiB slabs, one frame per record, each frame a view of its
 *   slab (ws frames a zero-masked Buffer without copying it). A slab goes back
 *   to a small free list once every frame cut from it has been written to the
 *   socket (send callbacks fire in order, so the callback of a later frame
 *   proves the earlier ones were written). A 4 KiB record therefore costs no
 *   allocation of its own, and a large one a copy into warm memory instead of
 *   a freshly faulted buffer. Slabs of a session that ends are left to the GC.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import WebSocket from 'ws';
import { ReplError } from '../common/errors';
import { Logger } from '../common/log';
import { encodedWriteBytes, encodeWriteInto } from '../proto/write-codec';
import {
  Ack,
  AgentMessage,
  decodeHubMessage,
  encodeAgentMessage,
  Hello,
  HubFailbackMessage,
  MAX_MESSAGE_BYTES,
  Refuse,
  Welcome,
} from '../proto/codec';

export type LinkState = 'idle' | 'connecting' | 'handshaking' | 'streaming' | 'backoff' | 'closed';

export const TRANSITIONS: Record<LinkState, readonly LinkState[]> = {
  idle: ['connecting', 'closed'],
  connecting: ['handshaking', 'backoff', 'closed'],
  handshaking: ['streaming', 'backoff', 'closed'],
  streaming: ['backoff', 'closed'],
  backoff: ['connecting', 'closed'],
  closed: [],
};

export interface BackoffPolicy {
  baseMs: number;
  maxMs: number;
  factor: number;
  /** Fraction of the delay randomised either way (0.2 = ±20%). */
  jitter: number;
}

/** Retry delay after a 'failed-over' refusal (a failback waits for the agent to ask). */
export const FAILED_OVER_RETRY_MS = 5000;

export const DEFAULT_BACKOFF: BackoffPolicy = { baseMs: 500, maxMs: 30_000, factor: 2, jitter: 0.2 };

/** Pure: delay before reconnect attempt `attempt` (0-based), within [baseMs, maxMs]. */
export function backoff(attempt: number, random: () => number = Math.random, policy: BackoffPolicy = DEFAULT_BACKOFF): number {
  const raw = policy.baseMs * Math.pow(policy.factor, Math.min(Math.max(attempt, 0), 60));
  const capped = Math.min(policy.maxMs, raw);
  const jittered = capped * (1 - policy.jitter + 2 * policy.jitter * random());
  return Math.round(Math.min(policy.maxMs, Math.max(policy.baseMs, jittered)));
}

/** WebSocket close code for a ReplError that makes us drop a session (the one translation). */
export function toCloseCode(err: ReplError): number {
  switch (err.code) {
    case 'E_PROTOCOL':
    case 'E_INVALID':
      return 4000;
    case 'E_AUTH':
      return 4001;
    case 'E_VERSION':
      return 4002;
    case 'E_BUSY':
      return 4003;
    case 'E_FENCED':
      return 4004;
    case 'E_CLOSED':
      return 1000;
    default:
      return 1011;
  }
}

export interface HeartbeatTarget {
  sendPing(): void;
  onStale(): void;
}

export interface IntervalTimers {
  setInterval(fn: () => void, ms: number): unknown;
  clearInterval(handle: unknown): void;
}

const realTimers: IntervalTimers = {
  setInterval: (fn, ms) => setInterval(fn, ms),
  clearInterval: (h) => clearInterval(h as NodeJS.Timeout),
};

/** Pings every intervalMs; after maxMissed unanswered pings calls onStale once. */
export class Heartbeat {
  private missed = 0;
  private handle: unknown = null;

  constructor(
    private readonly target: HeartbeatTarget,
    private readonly intervalMs: number,
    private readonly maxMissed: number,
    private readonly timers: IntervalTimers = realTimers,
  ) {}

  start(): void {
    if (this.handle !== null) return;
    this.missed = 0;
    this.handle = this.timers.setInterval(() => this.tick(), this.intervalMs);
  }

  stop(): void {
    if (this.handle !== null) this.timers.clearInterval(this.handle);
    this.handle = null;
  }

  /** Any sign of life (pong or message) from the peer. */
  alive(): void {
    this.missed = 0;
  }

  tick(): void {
    if (this.missed >= this.maxMissed) {
      this.stop();
      this.target.onStale();
      return;
    }
    this.missed++;
    this.target.sendPing();
  }
}

export interface HubLinkOptions {
  url: string;
  /** Builds the Hello for each attempt (counters change between sessions). */
  hello(): Hello;
  /** PEM CA bundle for wss:// with a private CA. */
  ca?: Buffer;
  logger: Logger;
  handshakeTimeoutMs?: number;
  heartbeatIntervalMs?: number;
  maxMissedPongs?: number;
  /** ws.bufferedAmount above which messages wait in our queue. */
  highWaterMark?: number;
  backoffPolicy?: BackoffPolicy;
  refuseBackoffMs?: number;
  random?: () => number;
}

export interface HubLinkEvents {
  state: [to: LinkState, from: LinkState, reason: string];
  welcome: [welcome: Welcome];
  refuse: [refuse: Refuse];
  ack: [ack: Ack];
  /** A failback message (after a Welcome with sync mode 'failback'; agent/failback.ts). */
  failback: [msg: HubFailbackMessage];
  /** A session that had been welcomed ended. */
  down: [reason: string];
  /** Queued bytes went down (a send completed). */
  drain: [];
}

export interface LinkStatus {
  state: LinkState;
  /** Sessions welcomed after the first one. */
  reconnects: number;
  attempts: number;
  lastRefuse: (Refuse & { atMs: number }) | null;
  lastError: string | null;
}

/**
 * Client frames must carry a mask (RFC 6455), but the key is ours to choose.
 * Masking exists so a browser's script cannot make an intercepting proxy see
 * attacker-chosen bytes as a request and poison its cache; our peer is always
 * our own hub, over loopback or TLS, with no script in the loop, so the mask
 * buys nothing. With an all-zero key ws skips the XOR and the copy on our side
 * (sender.js frame(): skipMasking) and the hub's receiver skips the unmask
 * (receiver.js: unmask only when the key is non-zero): about a third of the
 * agent's CPU during a bulk sync went to masking before this.
 */
export function zeroMask(mask: Buffer): void {
  mask.fill(0);
}

/** Bytes after which a send carries a completion callback even inside one batch. */
export const SEND_CALLBACK_BYTES = 256 * 1024;
/** Largest WebSocket frame header: 2 bytes, 8 of extended length, 4 of mask. */
const MAX_FRAME_HEADER = 14;
/** Slab size for encoded Write records, and how many idle slabs are kept. */
export const SLAB_BYTES = 4 * 1024 * 1024;
const FREE_SLABS = 4;

interface Slab {
  buf: Buffer;
  /** Bytes handed out. */
  used: number;
  /** Frames cut from it that the socket has not written yet. */
  refs: number;
  /** No more frames will be cut from it (it is not the current slab). */
  retired: boolean;
}

/** One queued frame and the slab it is a view of (null: its own buffer). */
interface Frame {
  buf: Buffer;
  slab: Slab | null;
}

/** Slabs for encoded records: the current one, and a free list of written ones. */
export class SlabPool {
  private current: Slab | null = null;
  private readonly free: Buffer[] = [];
  readonly stats = { allocated: 0, reused: 0 };

  /** A slab with `bytes` free at its `used` offset (null when bytes exceed a slab). */
  take(bytes: number): Slab | null {
    if (bytes > SLAB_BYTES) return null;
    const cur = this.current;
    if (cur && cur.used + bytes <= cur.buf.length) return cur;
    if (cur) this.retire(cur);
    const reused = this.free.pop();
    if (reused) this.stats.reused++;
    else this.stats.allocated++;
    this.current = { buf: reused ?? Buffer.allocUnsafeSlow(SLAB_BYTES), used: 0, refs: 0, retired: false };
    return this.current;
  }

  private retire(slab: Slab): void {
    slab.retired = true;
    if (slab.refs === 0) this.recycle(slab);
  }

  /** A frame cut from `slab` was written to the socket. */
  release(slab: Slab): void {
    slab.refs--;
    if (slab.retired && slab.refs === 0) this.recycle(slab);
  }

  private recycle(slab: Slab): void {
    if (this.free.length < FREE_SLABS) this.free.push(slab.buf);
  }

  /** The session ended: frames not written never come back; start afresh. */
  reset(): void {
    this.current = null;
  }
}

export class HubLink extends EventEmitter<HubLinkEvents> {
  private st: LinkState = 'idle';
  private ws: WebSocket | null = null;
  /** Encoded messages waiting for ws.bufferedAmount to fall below the mark. */
  private queue: Frame[] = [];
  /** Frames handed to ws whose write is not confirmed yet (in send order); base = frames confirmed before list[0]. */
  private unconfirmed: { list: (Slab | null)[]; base: number } = { list: [], base: 0 };
  private readonly slabs = new SlabPool();
  private queueBytes = 0;
  private loop: Promise<void> | null = null;
  private readonly abort = new AbortController();
  private attempt = 0;
  private welcomes = 0;
  private attempts = 0;
  private lastRefuse: (Refuse & { atMs: number }) | null = null;
  private lastError: string | null = null;
  private streamingWaiters: { resolve: () => void; reject: (e: unknown) => void }[] = [];
  private readonly hwm: number;
  /** The session's TCP socket (from the 'upgrade' response), corked while a batch builds. */
  private socket: Socket | null = null;
  /** Pending end-of-turn flush of the queue. */
  private flushTimer: NodeJS.Immediate | null = null;

  constructor(private readonly options: HubLinkOptions) {
    super();
    this.hwm = options.highWaterMark ?? 4 * 1024 * 1024;
    let url: URL;
    try {
      url = new URL(options.url);
    } catch {
      throw ReplError.invalid(`hub url '${options.url}' is not a URL`);
    }
    if (url.protocol !== 'ws:' && url.protocol !== 'wss:') throw ReplError.invalid(`hub url '${options.url}' must be ws:// or wss://`);
  }

  get state(): LinkState {
    return this.st;
  }

  get streaming(): boolean {
    return this.st === 'streaming';
  }

  /** Bytes queued by us plus bytes the socket has not written yet. */
  get queuedBytes(): number {
    return this.queueBytes + (this.ws?.bufferedAmount ?? 0);
  }

  status(): LinkStatus {
    return {
      state: this.st,
      reconnects: Math.max(0, this.welcomes - 1),
      attempts: this.attempts,
      lastRefuse: this.lastRefuse,
      lastError: this.lastError,
    };
  }

  private transition(to: LinkState, reason: string): void {
    const from = this.st;
    if (!TRANSITIONS[from].includes(to)) throw ReplError.internal(`hub link: illegal transition ${from} -> ${to} (${reason})`);
    this.st = to;
    // streaming <-> not streaming is what an operator cares about; the rest is detail
    const level = to === 'streaming' || from === 'streaming' ? 'info' : 'debug';
    this.options.logger[level]({ from, to, reason }, 'hub link state');
    this.emit('state', to, from, reason);
  }

  /** Starts the connect loop once. */
  start(): void {
    if (!this.loop && this.st !== 'closed') this.loop = this.run();
  }

  /** Resolves when a session is streaming (starting the loop if needed); the single in-flight loop is shared. */
  ensureConnected(): Promise<void> {
    if (this.st === 'streaming') return Promise.resolve();
    if (this.st === 'closed') return Promise.reject(ReplError.closed('hub link'));
    this.start();
    return new Promise((resolve, reject) => this.streamingWaiters.push({ resolve, reject }));
  }

  private async run(): Promise<void> {
    while (!this.abort.signal.aborted) {
      this.transition('connecting', this.attempts === 0 ? 'start' : 'retry');
      this.attempts++;
      const outcome = await this.session();
      if (this.abort.signal.aborted) break;
      let delay: number;
      if (outcome === 'refused') {
        delay = this.options.refuseBackoffMs ?? 30_000;
        // failed over: an operator's failback may be waiting for us; ask again soon
        if (this.lastRefuse?.code === 'failed-over') delay = Math.min(delay, FAILED_OVER_RETRY_MS);
      }
      else delay = backoff(this.attempt++, this.options.random, this.options.backoffPolicy);
      this.transition('backoff', `${outcome}; retry in ${delay} ms`);
      try {
        await sleep(delay, this.abort.signal);
      } catch {
        break;
      }
    }
  }

  /** One connection attempt; resolves when it is over. */
  private session(): Promise<'welcomed' | 'refused' | 'failed'> {
    return new Promise((resolve) => {
      const o = this.options;
      let outcome: 'welcomed' | 'refused' | 'failed' = 'failed';
      let ws: WebSocket;
      try {
        ws = new WebSocket(o.url, {
          ca: o.ca,
          handshakeTimeout: o.handshakeTimeoutMs ?? 10_000,
          maxPayload: MAX_MESSAGE_BYTES,
          perMessageDeflate: false,
          generateMask: zeroMask,
        });
      } catch (err) {
        this.lastError = (err as Error).message;
        return resolve('failed');
      }
      this.ws = ws;
      const heartbeat = new Heartbeat(
        {
          sendPing: () => ws.ping(),
          onStale: () => {
            this.lastError = 'hub stopped answering pings';
            o.logger.warn({ url: o.url }, 'hub link: no pong, terminating');
            ws.terminate();
          },
        },
        o.heartbeatIntervalMs ?? 5000,
        o.maxMissedPongs ?? 3,
      );
      const handshakeTimer = setTimeout(() => {
        this.lastError = 'handshake timed out';
        ws.terminate();
      }, o.handshakeTimeoutMs ?? 10_000);
      ws.on('upgrade', (res) => {
        res.socket.setNoDelay(true);
        this.socket = res.socket;
      });
      ws.on('open', () => {
        this.transition('handshaking', 'socket open');
        heartbeat.start();
        ws.send(encodeAgentMessage({ type: 'hello', hello: o.hello() }));
      });
      ws.on('pong', () => heartbeat.alive());
      ws.on('message', (data, isBinary) => {
        heartbeat.alive();
        const r = this.onMessage(ws, data as Buffer, isBinary);
        if (r === 'welcomed') {
          clearTimeout(handshakeTimer);
          outcome = 'welcomed';
        } else if (r === 'refused') outcome = 'refused';
      });
      ws.on('error', (err) => {
        // an operator must see why the link is down, but not once per retry
        if (err.message !== this.lastError) o.logger.warn({ url: o.url, err: err.message }, 'hub link error');
        this.lastError = err.message;
      });
      ws.on('close', (code, reason) => {
        clearTimeout(handshakeTimer);
        heartbeat.stop();
        if (this.flushTimer) clearImmediate(this.flushTimer);
        this.flushTimer = null;
        this.socket = null;
        this.ws = null;
        this.queue = [];
        this.queueBytes = 0;
        this.unconfirmed = { list: [], base: 0 };
        this.slabs.reset();
        const why = `closed ${code}${reason.length ? ` ${reason.toString()}` : ''}`;
        if (this.st === 'streaming' || outcome === 'welcomed') this.emit('down', this.lastError ?? why);
        if (outcome !== 'refused' && !this.lastError) this.lastError = why;
        resolve(outcome);
      });
    });
  }

  private onMessage(ws: WebSocket, data: Buffer, isBinary: boolean): 'welcomed' | 'refused' | null {
    let msg;
    try {
      if (!isBinary) throw ReplError.protocol('text frame from hub');
      msg = decodeHubMessage(data);
    } catch (err) {
      this.dropSession(ws, err instanceof ReplError ? err : ReplError.protocol(String(err)));
      return null;
    }
    switch (msg.type) {
      case 'welcome':
        if (this.st !== 'handshaking') return this.protocolError(ws, 'welcome outside handshake');
        this.attempt = 0;
        this.welcomes++;
        this.lastError = null;
        this.lastRefuse = null;
        this.transition('streaming', `welcome from ${msg.welcome.hubId}`);
        this.emit('welcome', msg.welcome);
        for (const w of this.streamingWaiters.splice(0)) w.resolve();
        return 'welcomed';
      case 'refuse':
        this.lastRefuse = { ...msg.refuse, atMs: Date.now() };
        this.lastError = `refused (${msg.refuse.code}): ${msg.refuse.message}`;
        this.options.logger.error({ code: msg.refuse.code, message: msg.refuse.message, url: this.options.url }, 'hub refused the session');
        this.emit('refuse', msg.refuse);
        ws.close(1000);
        return 'refused';
      case 'ack':
        if (this.st !== 'streaming') return this.protocolError(ws, 'ack before welcome');
        this.emit('ack', msg.ack);
        return null;
      case 'goodbye':
        this.lastError = `hub said goodbye: ${msg.goodbye.reason}`;
        ws.close(1000);
        return null;
      case 'failbackBegin':
      case 'failbackData':
      case 'failbackEnd':
      case 'failbackDone':
        if (this.st !== 'streaming') return this.protocolError(ws, `${msg.type} before welcome`);
        this.emit('failback', msg);
        return null;
    }
  }

  private protocolError(ws: WebSocket, message: string): null {
    this.dropSession(ws, ReplError.protocol(message));
    return null;
  }

  private dropSession(ws: WebSocket, err: ReplError): void {
    this.lastError = err.message;
    this.options.logger.warn({ err: err.message }, 'hub link: dropping session');
    ws.close(toCloseCode(err), err.message.slice(0, 120));
    setTimeout(() => ws.terminate(), 1000).unref();
  }

  /** Queues a message on the streaming session; false when there is none. */
  send(msg: AgentMessage): boolean {
    if (this.st !== 'streaming' || !this.ws) return false;
    let frame: Frame;
    if (msg.type === 'write') {
      const bytes = encodedWriteBytes(msg.write);
      const slab = this.slabs.take(bytes);
      if (slab) {
        const start = slab.used;
        slab.used = encodeWriteInto(slab.buf, start, msg.write);
        slab.refs++;
        frame = { buf: slab.buf.subarray(start, slab.used), slab };
      } else {
        const buf = Buffer.allocUnsafe(bytes);
        encodeWriteInto(buf, 0, msg.write);
        frame = { buf, slab: null };
      }
    } else frame = { buf: encodeAgentMessage(msg), slab: null };
    this.queue.push(frame);
    this.queueBytes += frame.buf.length;
    if (!this.flushTimer) this.flushTimer = setImmediate(this.flush);
    return true;
  }

  /** End of the loop turn: everything queued in it goes out as one batch. */
  private readonly flush = (): void => {
    this.flushTimer = null;
    this.pump();
  };

  private pump(): void {
    const ws = this.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || this.queue.length === 0) return;
    // corked: the frames of this batch leave in one writev (Node counts nested
    // corks, so ws's own cork/uncork per frame does not flush early)
    this.socket?.cork();
    let sinceCallback = 0;
    while (this.queue.length > 0 && ws.bufferedAmount < this.hwm) {
      const { buf, slab } = this.queue.shift()!;
      this.queueBytes -= buf.length;
      sinceCallback += buf.length;
      const sent = this.unconfirmed;
      sent.list.push(slab);
      // the last message this pump sends always carries the callback (it re-pumps);
      // MAX_FRAME_HEADER: the frame header counts in bufferedAmount too
      const last = this.queue.length === 0 || ws.bufferedAmount + buf.length + MAX_FRAME_HEADER >= this.hwm;
      if (last || sinceCallback >= SEND_CALLBACK_BYTES) {
        sinceCallback = 0;
        const upTo = sent.base + sent.list.length;
        ws.send(buf, { binary: true }, (err) => this.onSent(err, sent, upTo));
      } else ws.send(buf, { binary: true });
    }
    this.socket?.uncork();
  }

  /**
   * Every frame sent before number `upTo` is written (callbacks fire in send
   * order). `sent` belongs to one session: a callback arriving after its
   * session ended finds it replaced and releases nothing.
   */
  private onSent(err: Error | undefined, sent: HubLink['unconfirmed'], upTo: number): void {
    if (sent === this.unconfirmed && !err) {
      const n = upTo - sent.base;
      if (n > 0) {
        for (const slab of sent.list.splice(0, n)) if (slab) this.slabs.release(slab);
        sent.base += n;
      }
    }
    this.pump();
    this.emit('drain');
  }

  /** Ends the current session (if any) so the loop reconnects after a backoff. */
  disconnect(reason: string): void {
    this.lastError = reason;
    this.ws?.terminate();
  }

  async close(): Promise<void> {
    if (this.st === 'closed') return;
    this.abort.abort();
    const ws = this.ws;
    if (ws) {
      this.pump(); // what was queued this turn (the goodbye) goes before the close frame
      const closed = new Promise<void>((r) => ws.once('close', () => r()));
      ws.close(1000, 'agent stopping');
      const t = setTimeout(() => ws.terminate(), 2000);
      await closed;
      clearTimeout(t);
    }
    await this.loop;
    this.transition('closed', 'close()');
    for (const w of this.streamingWaiters.splice(0)) w.reject(ReplError.closed('hub link'));
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(ReplError.closed('hub link'));
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(t);
      reject(ReplError.closed('hub link'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
