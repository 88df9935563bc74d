/**
 * NBD client library: NbdClient speaks the protocol (pipelined requests,
 * simple or structured replies), NbdBlockDevice adapts it to BlockDevice.
 *
 * Requests may be issued concurrently; each gets a fresh cookie and a pending
 * entry; one reply loop reads headers sequentially and settles entries by
 * cookie, so replies may arrive in any order. When the connection drops, all
 * pending requests reject with E_CLOSED. close() waits for in-flight requests,
 * sends NBD_CMD_DISC and ends the socket.
 */
import * as net from 'node:net';
import { BlockDevice, DeviceInfo, Extent, WriteOptions, checkRange } from '../block/device';
import { ReplError } from '../errors';
import { ClientHandshake, NegotiatedExport } from './client-handshake';
import { ExactReader } from './client-socket';
import { fromNbdError } from './errors';
import {
  Cmd,
  CmdFlag,
  Opt,
  REPLY_FLAG_DONE,
  Rep,
  ReplyType,
  SIMPLE_REPLY_MAGIC,
  StateFlag,
  TxFlag,
  decodeBlockStatusPayload,
  decodeErrorPayload,
  decodeReplyHeader,
  decodeServerReply,
  encodeRequest,
  readU64,
  replyHeaderLength,
} from './protocol';

export interface NbdConnectOptions {
  host: string;
  port: number;
  exportName: string;
  /** Ask for structured replies (and base:allocation); default true. */
  structuredReplies?: boolean;
}

export interface ZeroOptions extends WriteOptions {
  noHole?: boolean;
  fastZero?: boolean;
}

interface Pending {
  type: number;
  offset: number;
  length: number;
  resolve: (value: Buffer | Extent[] | null) => void;
  reject: (err: Error) => void;
  data?: Buffer;
  extents?: Extent[];
  error?: ReplError;
}

function connectSocket(host: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    socket.once('connect', () => {
      socket.off('error', reject);
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err) => reject(new ReplError('E_CLOSED', `cannot connect to NBD ${host}:${port}: ${err.message}`)));
  });
}

export class NbdClient {
  readonly size: number;
  readonly flags: number;
  readonly structured: boolean;
  readonly maxPayload: number;
  private readonly baseAllocationId: number | null;
  private readonly pending = new Map<bigint, Pending>();
  private nextCookie = 1n;
  private closing: Promise<void> | null = null;
  private failure: ReplError | null = null;

  private constructor(
    private readonly socket: net.Socket,
    private readonly reader: ExactReader,
    negotiated: NegotiatedExport,
  ) {
    this.size = negotiated.size;
    this.flags = negotiated.flags;
    this.structured = negotiated.structured;
    this.maxPayload = negotiated.maxPayload;
    this.baseAllocationId = negotiated.baseAllocationId;
    socket.on('close', () => this.failAll(ReplError.closed('NBD connection')));
    void this.replyLoop();
  }

  static async connect(opts: NbdConnectOptions): Promise<NbdClient> {
    const socket = await connectSocket(opts.host, opts.port);
    const reader = new ExactReader(socket);
    socket.on('error', () => undefined); // surfaced through the reader
    try {
      const hs = new ClientHandshake(socket, reader);
      await hs.greet();
      const negotiated = await hs.negotiate(opts.exportName, opts.structuredReplies ?? true);
      return new NbdClient(socket, reader, negotiated);
    } catch (err) {
      socket.destroy();
      throw err;
    }
  }

  /** Export names offered by the server (NBD_OPT_LIST). */
  static async list(host: string, port: number): Promise<string[]> {
    const socket = await connectSocket(host, port);
    const reader = new ExactReader(socket);
    socket.on('error', () => undefined);
    try {
      const hs = new ClientHandshake(socket, reader);
      await hs.greet();
      const replies = await hs.option(Opt.LIST);
      const last = replies[replies.length - 1];
      if (!last || last.type !== Rep.ACK) throw new ReplError('E_HANDSHAKE', 'NBD_OPT_LIST refused');
      const names = replies.filter((r) => r.type === Rep.SERVER).map((r) => decodeServerReply(r.payload).name);
      await hs.option(Opt.ABORT).catch(() => undefined);
      return names;
    } finally {
      socket.destroy();
    }
  }

  get canBlockStatus(): boolean {
    return this.structured && this.baseAllocationId !== null;
  }

  read(offset: number, length: number): Promise<Buffer> {
    return this.request(Cmd.READ, 0, offset, length) as Promise<Buffer>;
  }

  async write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    await this.request(Cmd.WRITE, opts.fua ? CmdFlag.FUA : 0, offset, data.length, data);
  }

  async writeZeroes(offset: number, length: number, opts: ZeroOptions = {}): Promise<void> {
    const flags =
      (opts.fua ? CmdFlag.FUA : 0) | (opts.noHole ? CmdFlag.NO_HOLE : 0) | (opts.fastZero ? CmdFlag.FAST_ZERO : 0);
    await this.request(Cmd.WRITE_ZEROES, flags, offset, length);
  }

  async trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    await this.request(Cmd.TRIM, opts.fua ? CmdFlag.FUA : 0, offset, length);
  }

  async flush(): Promise<void> {
    await this.request(Cmd.FLUSH, 0, 0, 0);
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.request(Cmd.CACHE, 0, offset, length);
  }

  /** base:allocation extents from offset (may cover less than length; the last may reach beyond). */
  async blockStatus(offset: number, length: number, opts: { reqOne?: boolean } = {}): Promise<Extent[]> {
    if (!this.canBlockStatus) throw ReplError.invalid('base:allocation was not negotiated');
    return (await this.request(Cmd.BLOCK_STATUS, opts.reqOne ? CmdFlag.REQ_ONE : 0, offset, length)) as Extent[];
  }

  /** Sends a raw request (also used by tests for invalid commands). */
  request(type: number, flags: number, offset: number, length: number, payload?: Buffer): Promise<Buffer | Extent[] | null> {
    if (this.failure) return Promise.reject(this.failure);
    if (this.closing) return Promise.reject(ReplError.closed('NBD client'));
    const cookie = this.nextCookie++;
    const header = encodeRequest({ flags, type, cookie, offset, length });
    return new Promise((resolve, reject) => {
      this.pending.set(cookie, { type, offset, length, resolve, reject });
      this.socket.cork();
      this.socket.write(header);
      if (payload && payload.length > 0) this.socket.write(payload);
      process.nextTick(() => this.socket.uncork());
    });
  }

  get inFlight(): number {
    return this.pending.size;
  }

  close(): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        const waits = [...this.pending.values()].map(
          (p) => new Promise<void>((r) => ((p.resolve = wrap(p.resolve, r)), (p.reject = wrap(p.reject, r)))),
        );
        await Promise.all(waits);
        if (!this.socket.destroyed) {
          this.socket.write(encodeRequest({ flags: 0, type: Cmd.DISC, cookie: 0n, offset: 0, length: 0 }));
          await new Promise<void>((resolve) => {
            this.socket.once('close', () => resolve());
            this.socket.end();
            setTimeout(() => this.socket.destroy(), 2000).unref();
          });
        }
      })();
    }
    return this.closing;
  }

  private failAll(err: ReplError): void {
    if (!this.failure) this.failure = err;
    for (const p of this.pending.values()) p.reject(this.failure);
    this.pending.clear();
  }

  private async replyLoop(): Promise<void> {
    try {
      for (;;) {
        const magic = await this.reader.read(4);
        const rest = await this.reader.read(replyHeaderLength(magic.readUInt32BE(0)) - 4);
        const header = decodeReplyHeader(Buffer.concat([magic, rest]));
        const p = this.pending.get(header.cookie);
        if (!p) throw ReplError.protocol(`reply for unknown cookie ${header.cookie}`);
        if (header.kind === 'simple') {
          await this.onSimpleReply(header.cookie, p, header.error);
        } else {
          if (header.length > this.maxPayload + 64 && header.length > (p.type === Cmd.READ ? p.length + 8 : 1 << 24)) {
            throw ReplError.protocol(`structured chunk of ${header.length} bytes`);
          }
          this.onChunk(p, header.type, await this.reader.read(header.length));
          if (header.flags & REPLY_FLAG_DONE) this.settle(header.cookie, p);
        }
      }
    } catch (err) {
      const e = err instanceof ReplError ? err : ReplError.protocol(String(err));
      this.failAll(e);
      this.socket.destroy();
    }
  }

  private async onSimpleReply(cookie: bigint, p: Pending, error: number): Promise<void> {
    this.pending.delete(cookie);
    if (error !== 0) return p.reject(fromNbdError(error, '', `NBD command ${p.type}`));
    if (p.type === Cmd.READ) return p.resolve(p.length > 0 ? await this.reader.read(p.length) : Buffer.alloc(0));
    p.resolve(null);
  }

  private onChunk(p: Pending, type: number, payload: Buffer): void {
    switch (type) {
      case ReplyType.NONE:
        return;
      case ReplyType.OFFSET_DATA: {
        const at = readU64(payload, 0) - p.offset;
        const data = payload.subarray(8);
        if (p.type !== Cmd.READ || at < 0 || at + data.length > p.length) throw ReplError.protocol('bad data chunk');
        // one chunk for the whole range (our server's answer): keep the buffer as is
        if (at === 0 && data.length === p.length && !p.data) p.data = data;
        else data.copy((p.data ??= Buffer.alloc(p.length)), at);
        return;
      }
      case ReplyType.OFFSET_HOLE: {
        const at = readU64(payload, 0) - p.offset;
        const n = payload.readUInt32BE(8);
        if (p.type !== Cmd.READ || at < 0 || at + n > p.length) throw ReplError.protocol('bad hole chunk');
        (p.data ??= Buffer.alloc(p.length)).fill(0, at, at + n);
        return;
      }
      case ReplyType.BLOCK_STATUS: {
        const { contextId, extents } = decodeBlockStatusPayload(payload);
        if (contextId !== this.baseAllocationId) return;
        let pos = p.offset;
        p.extents = extents.map((e) => {
          const x = { offset: pos, length: e.length, hole: !!(e.flags & StateFlag.HOLE), zero: !!(e.flags & StateFlag.ZERO) };
          pos += e.length;
          return x;
        });
        return;
      }
      default:
        if (!(type & 0x8000)) throw ReplError.protocol(`unknown reply chunk type ${type}`);
        {
          const { error, message } = decodeErrorPayload(payload);
          p.error ??= fromNbdError(error, message, `NBD command ${p.type}`);
        }
    }
  }

  private settle(cookie: bigint, p: Pending): void {
    this.pending.delete(cookie);
    if (p.error) return p.reject(p.error);
    if (p.type === Cmd.READ) return p.resolve(p.data ?? Buffer.alloc(p.length));
    if (p.type === Cmd.BLOCK_STATUS) return p.resolve(p.extents ?? []);
    p.resolve(null);
  }
}

function wrap<A>(f: (a: A) => void, then: () => void): (a: A) => void {
  return (a: A) => {
    f(a);
    then();
  };
}

export interface NbdBlockDeviceOptions extends NbdConnectOptions {
  /** Logical block size reported in DeviceInfo (default 512). */
  blockSize?: number;
}

/** BlockDevice over one NBD connection (e.g. to read a remote recovery export). */
export class NbdBlockDevice implements BlockDevice {
  readonly info: DeviceInfo;
  readonly extents?: (offset: number, length: number) => Promise<Extent[]>;

  private constructor(
    readonly client: NbdClient,
    blockSize: number,
  ) {
    const f = client.flags;
    if (client.size % blockSize !== 0) {
      throw ReplError.invalid(`NBD export size ${client.size} is not a multiple of ${blockSize}`);
    }
    this.info = {
      size: client.size,
      blockSize,
      readOnly: (f & TxFlag.READ_ONLY) !== 0,
      canTrim: (f & TxFlag.SEND_TRIM) !== 0,
      canWriteZeroes: (f & TxFlag.SEND_WRITE_ZEROES) !== 0,
      trimReadsZeroes: false,
    };
    if (client.canBlockStatus) this.extents = (offset, length) => this.allocation(offset, length);
  }

  static async open(opts: NbdBlockDeviceOptions): Promise<NbdBlockDevice> {
    const client = await NbdClient.connect(opts);
    try {
      return new NbdBlockDevice(client, opts.blockSize ?? 512);
    } catch (err) {
      await client.close();
      throw err;
    }
  }

  async read(offset: number, length: number): Promise<Buffer> {
    checkRange(this.info, offset, length);
    if (length <= this.client.maxPayload) return this.client.read(offset, length);
    const parts: Promise<Buffer>[] = [];
    for (let pos = offset; pos < offset + length; pos += this.client.maxPayload) {
      parts.push(this.client.read(pos, Math.min(this.client.maxPayload, offset + length - pos)));
    }
    return Buffer.concat(await Promise.all(parts));
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.checkWrite(offset, data.length);
    const step = this.client.maxPayload;
    const parts: Promise<void>[] = [];
    for (let pos = 0; pos < data.length; pos += step) {
      parts.push(this.client.write(offset + pos, data.subarray(pos, pos + step), options));
    }
    await Promise.all(parts);
  }

  async writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.checkWrite(offset, length);
    if (!this.info.canWriteZeroes) return this.write(offset, Buffer.alloc(length), options);
    await this.eachPiece(offset, length, (o, n) => this.client.writeZeroes(o, n, options));
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.checkWrite(offset, length);
    if (!this.info.canTrim) return;
    await this.eachPiece(offset, length, (o, n) => this.client.trim(o, n, options));
  }

  flush(): Promise<void> {
    return this.client.flush();
  }

  close(): Promise<void> {
    return this.client.close();
  }

  private checkWrite(offset: number, length: number): void {
    if (this.info.readOnly) throw ReplError.readOnly('NBD export');
    checkRange(this.info, offset, length);
  }

  /** Payload-less requests carry a 32-bit length: split large ranges. */
  private async eachPiece(offset: number, length: number, op: (o: number, n: number) => Promise<void>): Promise<void> {
    const step = 1024 * 1024 * 1024;
    const parts: Promise<void>[] = [];
    for (let pos = offset; pos < offset + length; pos += step) parts.push(op(pos, Math.min(step, offset + length - pos)));
    await Promise.all(parts);
  }

  private async allocation(offset: number, length: number): Promise<Extent[]> {
    checkRange(this.info, offset, length);
    const out: Extent[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const got = await this.client.blockStatus(pos, Math.min(end - pos, 0xffffffff));
      if (got.length === 0) throw ReplError.protocol('block status returned no extents');
      for (const e of got) {
        if (pos >= end) break;
        const n = Math.min(e.length, end - pos);
        if (n <= 0) throw ReplError.protocol('block status returned an empty extent');
        out.push({ offset: pos, length: n, hole: e.hole, zero: e.zero });
        pos += n;
      }
    }
    return out;
  }
}
