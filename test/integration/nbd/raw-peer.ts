/**
 * RawPeer: a byte-level NBD client for tests that must send what a real
 * client never would (garbage, bad magics, oversized payloads).
 */
import * as net from 'node:net';
import {
  ClientFlag,
  GREETING_LENGTH,
  Info,
  OPTION_REPLY_HEADER_LENGTH,
  Opt,
  Rep,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeOptionRequest,
} from '../../../common/nbd/protocol';

export class RawPeer {
  private buf = Buffer.alloc(0);
  private waiters: Array<() => void> = [];
  closed = false;
  /** Bytes received in total (also counted in sink mode). */
  received = 0;
  /** When true, incoming bytes are counted and dropped. */
  private sinking = false;
  readonly closedPromise: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.received += c.length;
      if (!this.sinking) this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closedPromise = new Promise((resolve) =>
      socket.on('close', () => {
        this.closed = true;
        this.wake();
        resolve();
      }),
    );
  }

  static connect(port: number): Promise<RawPeer> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => resolve(new RawPeer(s)));
      s.once('error', reject);
    });
  }

  /** Connects, reads the greeting, sends flags and GO; returns a peer in transmission. */
  static async transmission(port: number, exportName: string, structured = false): Promise<RawPeer> {
    const p = await RawPeer.connect(port);
    await p.read(GREETING_LENGTH);
    p.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | ClientFlag.NO_ZEROES));
    if (structured) await p.option(Opt.STRUCTURED_REPLY);
    const replies = await p.option(Opt.GO, encodeInfoRequest({ name: exportName, requests: [Info.BLOCK_SIZE] }));
    if (replies[replies.length - 1]?.type !== Rep.ACK) throw new Error('GO failed');
    return p;
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  write(b: Buffer): void {
    if (!this.socket.destroyed) this.socket.write(b);
  }

  get available(): number {
    return this.buf.length;
  }

  /** Exactly n bytes, or rejects if the connection closes first / times out. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.buf.length < n) {
      if (this.closed) throw new Error(`connection closed with ${this.buf.length}/${n} bytes`);
      if (Date.now() > deadline) throw new Error(`timeout waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  async option(option: number, data?: Buffer): Promise<Array<{ type: number; payload: Buffer }>> {
    this.write(encodeOptionRequest(option, data));
    const out: Array<{ type: number; payload: Buffer }> = [];
    for (;;) {
      const h = decodeOptionReplyHeader(await this.read(OPTION_REPLY_HEADER_LENGTH));
      out.push({ type: h.type, payload: await this.read(h.length) });
      if (h.type === Rep.ACK || h.type >= 0x80000000) return out;
    }
  }

  /** Drops unread and future input; resolves once `total` unread bytes have arrived (without buffering them). */
  async sinkUntil(total: number, timeoutMs = 20000): Promise<void> {
    this.sinking = true;
    const consumed = this.received - this.buf.length;
    this.buf = Buffer.alloc(0);
    const deadline = Date.now() + timeoutMs;
    while (this.received - consumed < total) {
      const got = this.received - consumed;
      if (this.closed) throw new Error(`connection closed after ${got}/${total} bytes`);
      if (Date.now() > deadline) throw new Error(`timeout after ${got}/${total} bytes`);
      await new Promise<void>((resolve) => {
        this.waiters.push(resolve);
        setTimeout(resolve, 50);
      });
    }
  }

  /** Resolves true if the server closed within timeoutMs. */
  async waitClosed(timeoutMs = 2000): Promise<boolean> {
    await Promise.race([this.closedPromise, new Promise((r) => setTimeout(r, timeoutMs))]);
    return this.closed;
  }

  destroy(): void {
    this.socket.destroy();
  }
}
