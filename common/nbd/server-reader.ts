/**
 * ServerReader: streaming reassembly of what an NBD client sends, for the
 * server. Pure (no sockets): push() socket chunks, then call next() until it
 * returns null. next() yields ONE event at a time because the meaning of the
 * following bytes depends on how the server handled the event (an option
 * that enters transmission switches the phase); the server calls setPhase()
 * between events.
 *
 *   client-flags --(4 bytes)--> options --(setPhase)--> transmission
 *                                  each: header(16) -> data(L) | skip(L)
 *                                              each: header(28) -> payload | skip
 *
 * Limits (every length from the wire is bounded before allocation):
 *  - option data up to maxOptionLength is buffered and delivered; up to
 *    maxOptionDiscard it is dropped as it arrives and reported as
 *    'option-too-big'; beyond that the stream is abandoned (E_PROTOCOL);
 *  - a WRITE payload up to maxPayload is delivered; a larger one is dropped
 *    as it arrives and reported as 'request-too-big' (the client gets EINVAL).
 * A bad magic throws ReplError('E_PROTOCOL'): the stream is out of sync.
 *
 * Payload memory: a WRITE payload that lies inside one pushed chunk is a
 * view of it (no copy); otherwise it is copied, as its bytes arrive, into a
 * buffer from `pool`, and the consumer hands that back with pool.release()
 * once the device write settled (release() ignores views). With
 * `transientChunks` a pushed chunk is only valid until the caller's next
 * push (a socket reading into one reused buffer): payloads and option data
 * are then always copied, and the caller calls detach() before it reuses
 * the chunk's memory.
 */
import { BufferPool, payloadPool } from '../block/buffer-pool';
import { ReplError } from '../errors';
import { ByteQueue } from './byte-queue';
import {
  Cmd,
  NbdRequest,
  OPTION_HEADER_LENGTH,
  REQUEST_LENGTH,
  decodeClientFlags,
  decodeOptionHeader,
  decodeRequest,
} from './protocol';

export type ReaderPhase = 'client-flags' | 'options' | 'transmission' | 'stopped';

export type ServerEvent =
  | { kind: 'client-flags'; flags: number }
  | { kind: 'option'; option: number; data: Buffer }
  | { kind: 'option-too-big'; option: number; length: number }
  | { kind: 'request'; request: NbdRequest; payload: Buffer | null }
  | { kind: 'request-too-big'; request: NbdRequest };

export interface ReaderOptions {
  /** Pushed chunks are overwritten after push() returns (see the file header). */
  transientChunks?: boolean;
  pool?: BufferPool;
}

export interface ReaderLimits {
  maxOptionLength: number;
  maxOptionDiscard: number;
  maxPayload: number;
}

export const DEFAULT_READER_LIMITS: ReaderLimits = {
  maxOptionLength: 64 * 1024,
  maxOptionDiscard: 1024 * 1024,
  maxPayload: 32 * 1024 * 1024,
};

/** What the reader is in the middle of, within a phase. */
type Pending =
  | { what: 'header' }
  | { what: 'option-data'; option: number; length: number }
  | { what: 'option-skip'; option: number; length: number; remaining: number }
  | { what: 'payload'; request: NbdRequest; buf: Buffer | null; filled: number }
  | { what: 'payload-skip'; request: NbdRequest; remaining: number };

export class ServerReader {
  private readonly queue = new ByteQueue();
  private readonly limits: ReaderLimits;
  private phaseValue: ReaderPhase = 'client-flags';
  private pending: Pending = { what: 'header' };

  readonly pool: BufferPool;
  private readonly transient: boolean;

  constructor(limits: Partial<ReaderLimits> = {}, options: ReaderOptions = {}) {
    this.limits = { ...DEFAULT_READER_LIMITS, ...limits };
    this.pool = options.pool ?? payloadPool;
    this.transient = options.transientChunks ?? false;
  }

  get phase(): ReaderPhase {
    return this.phaseValue;
  }

  /** Bytes received and not yet consumed. */
  get buffered(): number {
    return this.queue.length;
  }

  setPhase(phase: ReaderPhase): void {
    this.phaseValue = phase;
    this.pending = { what: 'header' };
  }

  push(chunk: Buffer): void {
    if (this.phaseValue !== 'stopped') this.queue.push(chunk);
  }

  /** Copies the bytes still queued out of the pushed chunks (transientChunks). */
  detach(): void {
    this.queue.detach();
  }

  /** The next n queued bytes, owned by the caller (never a view of a transient chunk). */
  private takeOwned(n: number): Buffer {
    if (!this.transient) return this.queue.take(n);
    const out = Buffer.allocUnsafe(n);
    this.queue.takeInto(out, 0, n);
    return out;
  }

  /** The next complete event, or null when more bytes are needed. */
  next(): ServerEvent | null {
    switch (this.phaseValue) {
      case 'client-flags':
        if (this.queue.length < 4) return null;
        return { kind: 'client-flags', flags: decodeClientFlags(this.queue.take(4)) };
      case 'options':
        return this.nextOption();
      case 'transmission':
        return this.nextRequest();
      case 'stopped':
        return null;
    }
  }

  private nextOption(): ServerEvent | null {
    const p = this.pending;
    if (p.what === 'header') {
      if (this.queue.length < OPTION_HEADER_LENGTH) return null;
      const h = decodeOptionHeader(this.queue.take(OPTION_HEADER_LENGTH));
      if (h.length > this.limits.maxOptionDiscard) {
        throw ReplError.protocol(`option ${h.option} with ${h.length} bytes of data exceeds every limit`);
      }
      this.pending =
        h.length > this.limits.maxOptionLength
          ? { what: 'option-skip', option: h.option, length: h.length, remaining: h.length }
          : { what: 'option-data', option: h.option, length: h.length };
      return this.nextOption();
    }
    if (p.what === 'option-data') {
      if (this.queue.length < p.length) return null;
      this.pending = { what: 'header' };
      return { kind: 'option', option: p.option, data: this.takeOwned(p.length) };
    }
    if (p.what === 'option-skip') {
      p.remaining -= this.queue.skip(p.remaining);
      if (p.remaining > 0) return null;
      this.pending = { what: 'header' };
      return { kind: 'option-too-big', option: p.option, length: p.length };
    }
    throw ReplError.internal(`reader in state ${p.what} during options`);
  }

  private nextRequest(): ServerEvent | null {
    const p = this.pending;
    if (p.what === 'header') {
      if (this.queue.length < REQUEST_LENGTH) return null;
      const request = decodeRequest(this.queue.take(REQUEST_LENGTH));
      if (request.type !== Cmd.WRITE || request.length === 0) {
        return { kind: 'request', request, payload: request.type === Cmd.WRITE ? Buffer.alloc(0) : null };
      }
      this.pending =
        request.length > this.limits.maxPayload
          ? { what: 'payload-skip', request, remaining: request.length }
          : { what: 'payload', request, buf: null, filled: 0 };
      return this.nextRequest();
    }
    if (p.what === 'payload') {
      const length = p.request.length;
      if (p.buf === null) {
        if (!this.transient && this.queue.length >= length && this.queue.firstChunkHolds(length)) {
          this.pending = { what: 'header' };
          return { kind: 'request', request: p.request, payload: this.queue.take(length) };
        }
        if (this.queue.length === 0) return null;
        // length <= maxPayload was checked with the header
        p.buf = this.pool.acquire(length);
      }
      p.filled += this.queue.takeInto(p.buf, p.filled, length - p.filled);
      if (p.filled < length) return null;
      this.pending = { what: 'header' };
      return { kind: 'request', request: p.request, payload: p.buf };
    }
    if (p.what === 'payload-skip') {
      p.remaining -= this.queue.skip(p.remaining);
      if (p.remaining > 0) return null;
      this.pending = { what: 'header' };
      return { kind: 'request-too-big', request: p.request };
    }
    throw ReplError.internal(`reader in state ${p.what} during transmission`);
  }
}
