/**
 * Client side of the fixed-newstyle handshake: greeting, client flags, then
 * options one at a time (send, read replies until the final one). Used by
 * NbdClient.connect() and NbdClient.list(). Replies are bounded before their
 * payload is read.
 */
import * as net from 'node:net';
import { ReplError } from '../errors';
import { ExactReader } from './client-socket';
import {
  ClientFlag,
  GREETING_LENGTH,
  HandshakeFlag,
  Info,
  OPTION_REPLY_HEADER_LENGTH,
  Opt,
  Rep,
  decodeGreeting,
  decodeInfoItem,
  decodeOptionReplyHeader,
  encodeClientFlags,
  encodeInfoRequest,
  encodeMetaContextRequest,
  encodeOptionRequest,
  isErrorReply,
  readU64,
  BASE_ALLOCATION,
} from './protocol';

/** Largest option reply payload we accept. */
const MAX_OPTION_REPLY = 64 * 1024;

export interface OptionReply {
  type: number;
  payload: Buffer;
}

export interface NegotiatedExport {
  size: number;
  flags: number;
  structured: boolean;
  /** Context id of base:allocation, or null when not negotiated. */
  baseAllocationId: number | null;
  maxPayload: number;
}

export class ClientHandshake {
  private noZeroes = false;

  constructor(
    private readonly socket: net.Socket,
    private readonly reader: ExactReader,
  ) {}

  async greet(): Promise<void> {
    const { flags } = decodeGreeting(await this.reader.read(GREETING_LENGTH));
    if (!(flags & HandshakeFlag.FIXED_NEWSTYLE)) {
      throw new ReplError('E_HANDSHAKE', 'NBD server does not speak fixed newstyle');
    }
    this.noZeroes = (flags & HandshakeFlag.NO_ZEROES) !== 0;
    this.socket.write(encodeClientFlags(ClientFlag.FIXED_NEWSTYLE | (this.noZeroes ? ClientFlag.NO_ZEROES : 0)));
  }

  /** Sends one option and collects replies up to and including the final one (ACK or error). */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.socket.write(encodeOptionRequest(option, data));
    const replies: OptionReply[] = [];
    for (;;) {
      const h = decodeOptionReplyHeader(await this.reader.read(OPTION_REPLY_HEADER_LENGTH));
      if (h.option !== option) throw ReplError.protocol(`reply for option ${h.option} while waiting for ${option}`);
      if (h.length > MAX_OPTION_REPLY) throw ReplError.protocol(`option reply of ${h.length} bytes`);
      const payload = await this.reader.read(h.length);
      replies.push({ type: h.type, payload });
      if (h.type === Rep.ACK || isErrorReply(h.type)) return replies;
    }
  }

  async negotiate(exportName: string, wantStructured: boolean): Promise<NegotiatedExport> {
    let structured = false;
    let baseAllocationId: number | null = null;
    if (wantStructured) {
      structured = final(await this.option(Opt.STRUCTURED_REPLY)).type === Rep.ACK;
    }
    if (structured) {
      const data = encodeMetaContextRequest({ name: exportName, queries: [BASE_ALLOCATION] });
      const replies = await this.option(Opt.SET_META_CONTEXT, data);
      for (const r of replies) {
        if (r.type === Rep.META_CONTEXT && r.payload.length >= 4 && r.payload.toString('utf8', 4) === BASE_ALLOCATION) {
          baseAllocationId = r.payload.readUInt32BE(0);
        }
      }
      if (final(replies).type !== Rep.ACK) baseAllocationId = null;
    }
    const go = await this.option(Opt.GO, encodeInfoRequest({ name: exportName, requests: [Info.BLOCK_SIZE] }));
    const last = final(go);
    if (last.type === Rep.ERR_UNSUP) return this.exportNameFallback(exportName, structured);
    if (last.type !== Rep.ACK) throw optionError('NBD_OPT_GO', exportName, last);
    let size = -1;
    let flags = 0;
    let maxPayload = 32 * 1024 * 1024;
    for (const r of go) {
      if (r.type !== Rep.INFO) continue;
      const item = decodeInfoItem(r.payload);
      if (item.type === 'export') {
        size = item.size;
        flags = item.flags;
      } else if (item.type === 'block-size' && item.maximum > 0) {
        maxPayload = Math.min(item.maximum, maxPayload);
      }
    }
    if (size < 0) throw ReplError.protocol('NBD_OPT_GO succeeded without NBD_INFO_EXPORT');
    return { size, flags, structured, baseAllocationId, maxPayload };
  }

  private async exportNameFallback(exportName: string, structured: boolean): Promise<NegotiatedExport> {
    this.socket.write(encodeOptionRequest(Opt.EXPORT_NAME, Buffer.from(exportName, 'utf8')));
    const b = await this.reader.read(10);
    if (!this.noZeroes) await this.reader.read(124);
    return {
      size: readU64(b, 0),
      flags: b.readUInt16BE(8),
      structured,
      baseAllocationId: null,
      maxPayload: 32 * 1024 * 1024,
    };
  }
}

function final(replies: OptionReply[]): OptionReply {
  const last = replies[replies.length - 1];
  if (!last) throw ReplError.internal('option produced no reply');
  return last;
}

function optionError(what: string, exportName: string, reply: OptionReply): ReplError {
  const message = reply.payload.toString('utf8');
  const text = `${what} '${exportName}' refused (0x${reply.type.toString(16)})${message ? `: ${message}` : ''}`;
  if (reply.type === Rep.ERR_UNKNOWN) return new ReplError('E_NOT_FOUND', text);
  return new ReplError('E_HANDSHAKE', text);
}
