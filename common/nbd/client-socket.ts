/**
 * ExactReader: "give me exactly n bytes" over a socket, for the NBD client's
 * handshake and reply loop (one reader at a time; the client reads strictly
 * sequentially). When the socket ends or fails, the pending and every later
 * read reject with E_CLOSED.
 */
import * as net from 'node:net';
import { ReplError } from '../errors';
import { ByteQueue } from './byte-queue';

export class ExactReader {
  private readonly queue = new ByteQueue();
  private waiter: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private failure: ReplError | null = null;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.wake();
    });
    socket.on('error', (err) => this.fail(new ReplError('E_CLOSED', `NBD connection failed: ${err.message}`)));
    socket.on('close', () => this.fail(ReplError.closed('NBD connection')));
  }

  read(n: number): Promise<Buffer> {
    if (this.waiter) return Promise.reject(ReplError.internal('concurrent reads on one NBD socket'));
    if (this.queue.length >= n) return Promise.resolve(this.queue.take(n));
    if (this.failure) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { n, resolve, reject };
    });
  }

  private wake(): void {
    const w = this.waiter;
    if (w && this.queue.length >= w.n) {
      this.waiter = null;
      w.resolve(this.queue.take(w.n));
    }
  }

  private fail(err: ReplError): void {
    if (!this.failure) this.failure = err;
    const w = this.waiter;
    if (w && this.queue.length < w.n) {
      this.waiter = null;
      w.reject(this.failure);
    }
  }
}
