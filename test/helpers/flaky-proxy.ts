/**
 * FlakyProxy: a TCP relay on 127.0.0.1:0 for fault tests. Every accepted
 * connection is paired with one to the target; bytes are relayed both ways
 * unless a fault says otherwise:
 *   cut()           destroy every open pair now (RST-like, no FIN handshake)
 *   cutAfter(n)     destroy a pair once n bytes went client->target in it
 *   setDelay(ms)    hold every chunk ms before forwarding; each direction is a
 *                   FIFO, so a chunk never overtakes an earlier one even when
 *                   the delay shrinks (TCP does not reorder)
 *   stall(true)     stop forwarding (chunks buffer; sockets paused), stall(false) resumes
 *   refuse(true)    accept and immediately destroy new connections
 *   flap(upMs, downMs)  alternate: connections allowed for upMs, then cut +
 *                   refused for downMs; flap(0) stops
 * Stats: connections accepted, bytes each way. close() stops everything.
 */
import * as net from 'node:net';

/** Chunks held for one direction of a pair, in arrival order. */
interface Held {
  chunks: { due: number; chunk: Buffer }[];
  timer: NodeJS.Timeout | null;
}

interface Pair {
  client: net.Socket;
  upstream: net.Socket;
  sentUp: number;
  heldUp: Held;
  heldDown: Held;
}

export class FlakyProxy {
  private readonly server: net.Server;
  private readonly pairs = new Set<Pair>();
  private delayMs = 0;
  private stalled = false;
  private refusing = false;
  private cutAfterBytes: number | null = null;
  private flapTimer: NodeJS.Timeout | null = null;
  readonly stats = { connections: 0, bytesUp: 0, bytesDown: 0, cuts: 0 };

  private constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {
    this.server = net.createServer((client) => this.onClient(client));
  }

  static async start(target: { host?: string; port: number }): Promise<FlakyProxy> {
    const proxy = new FlakyProxy(target.host ?? '127.0.0.1', target.port);
    await new Promise<void>((resolve) => proxy.server.listen(0, '127.0.0.1', () => resolve()));
    return proxy;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  /** ws:// URL through the proxy for a path on the target. */
  url(path = '/v1/replicate', scheme = 'ws'): string {
    return `${scheme}://127.0.0.1:${this.port}${path}`;
  }

  get openConnections(): number {
    return this.pairs.size;
  }

  private onClient(client: net.Socket): void {
    this.stats.connections++;
    if (this.refusing) {
      client.destroy();
      return;
    }
    client.setNoDelay(true);
    const upstream = net.connect(this.targetPort, this.targetHost);
    upstream.setNoDelay(true);
    const pair: Pair = { client, upstream, sentUp: 0, heldUp: { chunks: [], timer: null }, heldDown: { chunks: [], timer: null } };
    this.pairs.add(pair);
    const end = (): void => this.destroyPair(pair);
    client.on('error', end);
    upstream.on('error', end);
    client.on('close', end);
    upstream.on('close', end);
    client.on('data', (chunk) => this.relay(pair, chunk, true));
    upstream.on('data', (chunk) => this.relay(pair, chunk, false));
    if (this.stalled) {
      client.pause();
      upstream.pause();
    }
  }

  private relay(pair: Pair, chunk: Buffer, up: boolean): void {
    const to = up ? pair.upstream : pair.client;
    if (up) {
      pair.sentUp += chunk.length;
      this.stats.bytesUp += chunk.length;
      if (this.cutAfterBytes !== null && pair.sentUp >= this.cutAfterBytes) {
        const keep = chunk.length - (pair.sentUp - this.cutAfterBytes);
        // held (delayed) chunks die with the pair: never let this piece overtake them
        if (keep > 0 && pair.heldUp.chunks.length === 0) to.write(chunk.subarray(0, keep));
        this.stats.cuts++;
        this.destroyPair(pair);
        return;
      }
    } else {
      this.stats.bytesDown += chunk.length;
    }
    const held = up ? pair.heldUp : pair.heldDown;
    if (this.delayMs <= 0 && held.chunks.length === 0) {
      to.write(chunk);
      return;
    }
    held.chunks.push({ due: Date.now() + this.delayMs, chunk });
    if (!held.timer) this.release(held, to);
  }

  /** Forwards the held chunks that are due, in order; waits for the next one. */
  private release(held: Held, to: net.Socket): void {
    held.timer = null;
    const now = Date.now();
    while (held.chunks.length > 0 && held.chunks[0]!.due <= now) {
      const { chunk } = held.chunks.shift()!;
      if (!to.destroyed) to.write(chunk);
    }
    const next = held.chunks[0];
    if (next) held.timer = setTimeout(() => this.release(held, to), next.due - now);
  }

  private destroyPair(pair: Pair): void {
    if (!this.pairs.delete(pair)) return;
    for (const held of [pair.heldUp, pair.heldDown]) {
      if (held.timer) clearTimeout(held.timer);
      held.timer = null;
      held.chunks = [];
    }
    pair.client.destroy();
    pair.upstream.destroy();
  }

  cut(): void {
    if (this.pairs.size > 0) this.stats.cuts++;
    for (const p of [...this.pairs]) this.destroyPair(p);
  }

  cutAfter(bytes: number | null): void {
    this.cutAfterBytes = bytes;
  }

  setDelay(ms: number): void {
    this.delayMs = ms;
  }

  stall(on: boolean): void {
    this.stalled = on;
    for (const p of this.pairs) {
      if (on) {
        p.client.pause();
        p.upstream.pause();
      } else {
        p.client.resume();
        p.upstream.resume();
      }
    }
  }

  refuse(on: boolean): void {
    this.refusing = on;
  }

  flap(upMs: number, downMs = upMs): void {
    if (this.flapTimer) clearTimeout(this.flapTimer);
    this.flapTimer = null;
    if (upMs <= 0) {
      this.refusing = false;
      return;
    }
    const up = (): void => {
      this.refusing = false;
      this.flapTimer = setTimeout(down, upMs);
    };
    const down = (): void => {
      this.refusing = true;
      this.cut();
      this.flapTimer = setTimeout(up, downMs);
    };
    up();
  }

  async close(): Promise<void> {
    this.flap(0);
    this.cut();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}
