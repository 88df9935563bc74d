/**
 * NbdConnection: one accepted socket, from greeting to close.
 *
 *   greeting --client flags--> options --GO/EXPORT_NAME--> transmission
 *       |                         |  ABORT/errors                  | DISC, export removed,
 *       +-----bad input/timeout---+-------------> closed <---------+ server close (drain first)
 *
 * Transmission is pipelined: each request starts as soon as it is parsed and
 * replies go out in completion order. In-flight work is bounded by count and
 * bytes; when a bound is hit (or MAX_UNSENT_BYTES of replies wait in the
 * socket) we stop parsing and pause the socket instead of buffering without
 * limit. Replies finishing in the same loop turn are batched with cork/uncork
 * (one writev, uncorked from setImmediate); a read reply is written as
 * header + the device's buffer (no copy).
 * Protocol violations (bad magic, bad client flags, absurd lengths) close the
 * socket hard; the error never leaves this class.
 * Reads: the accepted socket arrives paused and is moved to static-buffer
 * reads (static-reads.ts); every chunk is then a view of a buffer the next
 * read overwrites, so onData() leaves nothing queued that points into it
 * (reader.detach()) and write payloads are always copies (pooled when large,
 * released once the device write settled).
 */
import * as net from 'node:net';
import { Logger } from '../log';
import { ReplError } from '../errors';
import { CommandContext, errorReply, executeRequest } from './commands';
import {
  ExportLookup,
  HandshakeState,
  ServedExport,
  handleOption,
  newHandshakeState,
  transmissionFlags,
} from './handshake';
import {
  ClientFlag,
  Cmd,
  HandshakeFlag,
  NbdErrno,
  NbdRequest,
  Rep,
  encodeGreeting,
  encodeOptionError,
} from './protocol';
import { ReaderLimits, ServerEvent, ServerReader } from './server-reader';
import { adoptStaticReads } from '../block/static-reads';

export type ConnectionState = 'handshake' | 'transmission' | 'draining' | 'closed';

export interface ConnectionLimits extends ReaderLimits {
  handshakeTimeoutMs: number;
  maxOptions: number;
  maxInFlight: number;
  maxInFlightBytes: number;
  /** How long shutdown() waits for in-flight requests before closing anyway. */
  drainTimeoutMs: number;
  /** Move the socket to static-buffer reads (block/static-reads.ts); false keeps stream reads. */
  staticReads: boolean;
}

export interface ConnectionHooks {
  readonly exports: ExportLookup;
  readonly logger: Logger;
  readonly limits: ConnectionLimits;
  onRequest(): void;
  onProtocolError(): void;
  onClosed(conn: NbdConnection): void;
}

const SERVER_FLAGS = HandshakeFlag.FIXED_NEWSTYLE | HandshakeFlag.NO_ZEROES;
/**
 * Replies queued in the socket beyond which we stop parsing until 'drain'.
 * Node's default write high-water mark (16 KiB) would stall the pipeline
 * after four 4 KiB read replies of one batch; in-flight bytes are bounded
 * separately (maxInFlightBytes).
 */
const MAX_UNSENT_BYTES = 4 * 1024 * 1024;

export class NbdConnection {
  private state: ConnectionState = 'handshake';
  private readonly reader: ServerReader;
  private handshake: HandshakeState | null = null;
  private optionCount = 0;
  /** Set on entering transmission. */
  private ctx: CommandContext | null = null;
  private inFlight = 0;
  private inFlightBytes = 0;
  /** True while a cork() is pending its nextTick uncork(). */
  private corked = false;
  /** Waiting for 'drain' before parsing more requests. */
  private waitingDrain = false;
  private handshakeTimer: NodeJS.Timeout | null = null;
  /** Resolved when in-flight reaches zero during draining. */
  private drainWaiters: Array<() => void> = [];
  private readonly closedPromise: Promise<void>;
  private readonly log: Logger;

  private readonly socket: net.Socket;
  /** Chunks are views of the shared static read buffer (see the file header). */
  private readonly transient: boolean;

  /** `accepted` comes from a server created with pauseOnConnect. */
  constructor(
    accepted: net.Socket,
    private readonly hooks: ConnectionHooks,
  ) {
    const adopted = hooks.limits.staticReads ? adoptStaticReads(accepted, (chunk) => this.onData(chunk)) : null;
    const socket = adopted ?? accepted;
    this.socket = socket;
    this.transient = adopted !== null;
    this.reader = new ServerReader(hooks.limits, { transientChunks: this.transient });
    this.log = hooks.logger.child({ peer: `${socket.remoteAddress}:${socket.remotePort}` });
    this.closedPromise = new Promise((resolve) => socket.once('close', () => resolve()));
    socket.setNoDelay(true);
    if (!adopted) {
      socket.on('data', (chunk: Buffer) => this.onData(chunk));
      socket.resume();
    }
    socket.on('error', (err) => this.log.debug({ err: err.message }, 'nbd socket error'));
    socket.on('close', () => this.onSocketClosed());
    socket.on('drain', () => {
      this.waitingDrain = false;
      this.pump();
    });
    this.handshakeTimer = setTimeout(() => this.fail('handshake timeout'), hooks.limits.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    socket.write(encodeGreeting(SERVER_FLAGS));
  }

  /** Export served on this connection (null until transmission). */
  get exportName(): string | null {
    return this.ctx ? this.ctx.export.name : null;
  }

  get connectionState(): ConnectionState {
    return this.state;
  }

  /**
   * Stops reading, lets in-flight requests finish and reply (waiting at most
   * drainTimeoutMs for a stuck device), then closes.
   */
  async shutdown(): Promise<void> {
    if (this.state === 'closed') return;
    if (this.state === 'handshake') {
      this.socket.destroy();
    } else if (this.state === 'transmission') {
      this.state = 'draining';
      this.reader.setPhase('stopped');
      this.socket.pause();
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<void>((resolve) => {
        timer = setTimeout(resolve, this.hooks.limits.drainTimeoutMs);
      });
      await Promise.race([this.drained(), timeout]);
      clearTimeout(timer);
      if (this.inFlight > 0) this.log.warn({ inFlight: this.inFlight }, 'nbd requests still running at close');
      this.close('server closing connection');
    }
    await this.closedPromise;
  }

  private onData(chunk: Buffer): void {
    this.reader.push(chunk);
    this.pump();
    if (this.transient) this.reader.detach();
  }

  private canParse(): boolean {
    if (this.state === 'closed' || this.state === 'draining' || this.socket.destroyed) return false;
    if (this.waitingDrain) return false;
    const l = this.hooks.limits;
    return this.inFlight === 0 || (this.inFlight < l.maxInFlight && this.inFlightBytes < l.maxInFlightBytes);
  }

  /** Parses and dispatches events until input runs out or a bound is hit. */
  private pump(): void {
    while (this.canParse()) {
      let ev: ServerEvent | null;
      try {
        ev = this.reader.next();
      } catch (err) {
        this.protocolError((err as Error).message);
        return;
      }
      if (ev === null) break;
      this.dispatch(ev);
    }
    if (this.state === 'closed' || this.state === 'draining') return;
    if (this.canParse()) this.socket.resume();
    else this.socket.pause();
  }

  private dispatch(ev: ServerEvent): void {
    switch (ev.kind) {
      case 'client-flags':
        return this.onClientFlags(ev.flags);
      case 'option':
        return this.onOption(ev.option, ev.data);
      case 'option-too-big':
        this.countOption();
        return this.send([encodeOptionError(ev.option, Rep.ERR_TOO_BIG, `option data of ${ev.length} bytes`)]);
      case 'request':
        return this.onRequest(ev.request, ev.payload);
      case 'request-too-big':
        this.hooks.onRequest();
        return this.send(
          errorReply(this.context(), ev.request.cookie, NbdErrno.EINVAL, `payload of ${ev.request.length} bytes`),
        );
    }
  }

  private onClientFlags(flags: number): void {
    const known = ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES;
    if (flags & ~known || (flags & ClientFlag.NO_ZEROES && !(SERVER_FLAGS & HandshakeFlag.NO_ZEROES))) {
      this.protocolError(`client flags 0x${flags.toString(16)} not offered`);
      return;
    }
    this.handshake = newHandshakeState(flags);
    this.reader.setPhase('options');
  }

  private countOption(): void {
    if (++this.optionCount > this.hooks.limits.maxOptions) this.protocolError('too many options');
  }

  private onOption(option: number, data: Buffer): void {
    this.countOption();
    if (this.state !== 'handshake' || !this.handshake) return;
    const out = handleOption(this.handshake, this.hooks.exports, option, data, this.hooks.limits);
    this.log.debug({ option, action: out.action }, 'nbd option');
    switch (out.action) {
      case 'reply':
        return this.send(out.replies);
      case 'abort':
        this.send(out.replies);
        this.close('client aborted');
        return;
      case 'close':
        this.close(out.reason);
        return;
      case 'transmission':
        this.send(out.replies);
        this.enterTransmission(out.export, this.handshake);
        return;
    }
  }

  private enterTransmission(exp: ServedExport, hs: HandshakeState): void {
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
    this.ctx = {
      export: exp,
      flags: transmissionFlags(exp, hs.structured),
      structured: hs.structured,
      blockStatus: hs.structured && hs.metaExport === exp.name,
      maxPayload: this.hooks.limits.maxPayload,
    };
    this.state = 'transmission';
    this.reader.setPhase('transmission');
    this.log.debug({ export: exp.name, structured: hs.structured }, 'nbd transmission');
  }

  private context(): CommandContext {
    if (!this.ctx) throw ReplError.internal('nbd request outside transmission');
    return this.ctx;
  }

  private onRequest(req: NbdRequest, payload: Buffer | null): void {
    if (req.type === Cmd.DISC) {
      void this.disconnect();
      return;
    }
    this.hooks.onRequest();
    const bytes = req.type === Cmd.READ || req.type === Cmd.WRITE ? req.length : 0;
    this.inFlight++;
    this.inFlightBytes += bytes;
    executeRequest(this.context(), req, payload).then(
      (replies) => {
        // the device call settled: it keeps no reference to the payload (device.ts)
        if (payload) this.reader.pool.release(payload);
        this.send(replies);
        this.requestDone(bytes);
      },
      (err) => {
        if (payload) this.reader.pool.release(payload);
        this.log.error({ err }, 'nbd request handler failed');
        this.requestDone(bytes);
      },
    );
  }

  private requestDone(bytes: number): void {
    this.inFlight--;
    this.inFlightBytes -= bytes;
    if (this.inFlight === 0) for (const w of this.drainWaiters.splice(0)) w();
    this.pump();
  }

  /** NBD_CMD_DISC: no reply; finish what is in flight, flush (cheap insurance), close. */
  private async disconnect(): Promise<void> {
    if (this.state !== 'transmission') return;
    this.state = 'draining';
    this.reader.setPhase('stopped');
    this.socket.pause();
    await this.drained();
    const exp = this.ctx?.export;
    if (exp && !exp.readOnly) {
      await exp.device.flush().catch((err) => this.log.warn({ err }, 'flush on disconnect failed'));
    }
    this.close('client disconnected');
  }

  private drained(): Promise<void> {
    if (this.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => this.drainWaiters.push(resolve));
  }

  private send(buffers: Buffer[]): void {
    const s = this.socket;
    if (s.destroyed || s.writableEnded) return;
    if (!this.corked) {
      this.corked = true;
      s.cork();
      setImmediate(this.uncork);
    }
    let ok = true;
    for (const b of buffers) ok = s.write(b) && ok;
    if (!ok && s.writableLength >= MAX_UNSENT_BYTES) this.waitingDrain = true;
  }

  /**
   * Uncorks in the check phase, after every I/O callback of this loop turn
   * (socket data, thread-pool completions) had its say: all replies finished
   * in one turn leave in one writev.
   */
  private readonly uncork = (): void => {
    this.corked = false;
    this.socket.uncork();
  };

  private protocolError(reason: string): void {
    if (this.state === 'closed') return;
    this.hooks.onProtocolError();
    this.log.warn({ reason }, 'nbd protocol error; closing connection');
    this.fail(reason);
  }

  /** Hard close. */
  private fail(reason: string): void {
    if (this.state === 'closed') return;
    this.log.debug({ reason }, 'nbd connection dropped');
    this.markClosed();
    this.socket.destroy();
  }

  /** Polite close: pending replies are flushed first. */
  private close(reason: string): void {
    if (this.state === 'closed') return;
    this.log.debug({ reason }, 'nbd connection closing');
    this.markClosed();
    this.socket.end();
    // keep reading (the reader drops everything now) so the peer's hang-up is
    // seen: a paused static-buffer socket would not notice EOF
    this.socket.resume();
    setTimeout(() => this.socket.destroy(), 2000).unref();
  }

  private markClosed(): void {
    this.state = 'closed';
    this.reader.setPhase('stopped');
    if (this.handshakeTimer) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = null;
  }

  private onSocketClosed(): void {
    this.markClosed();
    for (const w of this.drainWaiters.splice(0)) w();
    this.hooks.onClosed(this);
  }
}
