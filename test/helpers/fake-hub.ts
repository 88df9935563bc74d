/**
 * FakeHub: a scripted hub for agent tests, speaking the real protocol
 * (proto/codec.ts) over a real WebSocket on 127.0.0.1:0. It keeps an image of
 * the replica (every Write applied in stream order), the recovery points it
 * would serve (Seals outside a resync group, and the resync-end Seal), and
 * every message of every session. Scripts: refuse the next Hellos, stop
 * acking, stall reading (TCP backpressure), drop connections, choose the
 * Welcome (sync mode, generation, durable numbers).
 */
import { AddressInfo } from 'node:net';
import WebSocket, { WebSocketServer } from 'ws';
import { crc32c } from '../../common/nvme-tcp/crc32c';
import {
  AgentMessage,
  decodeAgentMessage,
  encodeHubMessage,
  Hello,
  PROTOCOL_VERSION,
  RefuseCode,
  SyncMode,
} from '../../proto/codec';
import { waitFor } from './wait-for';

export interface FakeSession {
  id: number;
  ws: WebSocket;
  hello: Hello | null;
  messages: AgentMessage[];
  closed: boolean;
}

export interface WelcomeScript {
  syncMode?: SyncMode;
  generation?: number;
  durableEpoch?: number;
  durableSeq?: number;
  resyncOpen?: boolean;
}

export class FakeHub {
  readonly sessions: FakeSession[] = [];
  /** Replica image by volume name (applied in stream order). */
  readonly images = new Map<string, Buffer>();
  /** Snapshots at each recovery point: volume -> [{epoch, image}]. */
  readonly points = new Map<string, { epoch: number; image: Buffer }[]>();
  /** Per volume: generation the hub holds. */
  readonly generations = new Map<string, number>();
  ackEnabled = true;
  /** Keep an image snapshot at every recovery point (costly for big volumes). */
  snapshotPoints = true;
  private refusals: { code: RefuseCode; message: string }[] = [];
  private nextWelcome: WelcomeScript | null = null;
  private durable = new Map<string, { epoch: number; seq: number }>();
  private groupOpen = new Map<string, boolean>();
  private pendingAck: { session: FakeSession; epoch: number; seq: number }[] = [];
  crcErrors = 0;

  private constructor(private readonly wss: WebSocketServer) {
    wss.on('connection', (ws) => this.onConnection(ws));
  }

  static async start(): Promise<FakeHub> {
    const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, path: '/v1/replicate', maxPayload: 16 * 1024 * 1024 });
    await new Promise<void>((resolve) => wss.once('listening', () => resolve()));
    return new FakeHub(wss);
  }

  get port(): number {
    return (this.wss.address() as AddressInfo).port;
  }

  get url(): string {
    return `ws://127.0.0.1:${this.port}/v1/replicate`;
  }

  refuseNext(code: RefuseCode, message = 'scripted refusal', times = 1): void {
    for (let i = 0; i < times; i++) this.refusals.push({ code, message });
  }

  welcomeNext(script: WelcomeScript): void {
    this.nextWelcome = script;
  }

  /** Stops reading from every live session's socket (the agent's send buffer fills). */
  stall(): void {
    for (const s of this.live()) (s.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  }

  unstall(): void {
    for (const s of this.live()) (s.ws as unknown as { _socket: { resume(): void } })._socket.resume();
  }

  /** Cuts every live session without a close handshake. */
  dropAll(): void {
    for (const s of this.live()) s.ws.terminate();
  }

  setAcks(enabled: boolean): void {
    this.ackEnabled = enabled;
    if (enabled) {
      for (const p of this.pendingAck.splice(0)) this.ack(p.session, p.epoch, p.seq);
    }
  }

  live(): FakeSession[] {
    return this.sessions.filter((s) => !s.closed);
  }

  all(volume?: string): AgentMessage[] {
    return this.sessions.filter((s) => !volume || s.hello?.volumeName === volume).flatMap((s) => s.messages);
  }

  durableEpoch(volume: string): number {
    return this.durable.get(volume)?.epoch ?? 0;
  }

  latestPoint(volume: string): { epoch: number; image: Buffer } | null {
    const list = this.points.get(volume);
    return list && list.length > 0 ? list[list.length - 1]! : null;
  }

  waitForSessions(n: number, timeoutMs = 10_000): Promise<FakeSession> {
    return waitFor(() => (this.sessions.length >= n && this.sessions[n - 1]!.hello ? this.sessions[n - 1] : null), {
      timeoutMs,
      what: `${n} hub sessions`,
    });
  }

  /** Resolves when a resync-end Seal arrived in session n (1-based) or any session. */
  waitForResyncEnd(count = 1, timeoutMs = 15_000): Promise<boolean> {
    return waitFor(() => this.all().filter((m) => m.type === 'seal' && m.seal.reason === 'resync-end').length >= count, {
      timeoutMs,
      what: `${count} resync-end seals`,
    });
  }

  private onConnection(ws: WebSocket): void {
    const session: FakeSession = { id: this.sessions.length + 1, ws, hello: null, messages: [], closed: false };
    this.sessions.push(session);
    ws.on('message', (data) => this.onMessage(session, data as Buffer));
    ws.on('close', () => (session.closed = true));
    ws.on('error', () => undefined);
  }

  private send(session: FakeSession, body: Parameters<typeof encodeHubMessage>[0]): void {
    if (session.ws.readyState === WebSocket.OPEN) session.ws.send(encodeHubMessage(body));
  }

  private onMessage(session: FakeSession, data: Buffer): void {
    let msg: AgentMessage;
    try {
      msg = decodeAgentMessage(data);
    } catch {
      session.ws.close(4000, 'bad message');
      return;
    }
    session.messages.push(msg);
    switch (msg.type) {
      case 'hello':
        return this.onHello(session, msg.hello);
      case 'write':
        return this.onWrite(session, msg.write);
      case 'seal':
        return this.onSeal(session, msg.seal.epoch, msg.seal.lastSeq, msg.seal.reason);
      case 'resyncBegin':
        this.groupOpen.set(session.hello!.volumeName, true);
        return;
      case 'resyncEnd':
        this.groupOpen.set(session.hello!.volumeName, false);
        return;
      default:
        return;
    }
  }

  private onHello(session: FakeSession, hello: Hello): void {
    session.hello = hello;
    const refusal = this.refusals.shift();
    if (refusal) {
      this.send(session, { type: 'refuse', refuse: refusal });
      session.ws.close(4003, refusal.code);
      return;
    }
    const name = hello.volumeName;
    const known = this.images.has(name);
    if (!known) this.images.set(name, Buffer.alloc(hello.volumeSize));
    const script = this.nextWelcome ?? {};
    this.nextWelcome = null;
    const generation = script.generation ?? (known && hello.generation > 0 ? hello.generation : (this.generations.get(name) ?? 0) + 1);
    this.generations.set(name, generation);
    const syncMode = script.syncMode ?? (known && hello.generation === generation ? 'resume' : 'full');
    const d = this.durable.get(name) ?? { epoch: 0, seq: 0 };
    this.send(session, {
      type: 'welcome',
      welcome: {
        protocolVersion: PROTOCOL_VERSION,
        hubId: 'fake-hub',
        generation,
        syncMode,
        durableEpoch: script.durableEpoch ?? d.epoch,
        durableSeq: script.durableSeq ?? d.seq,
        resyncOpen: script.resyncOpen ?? this.groupOpen.get(name) ?? false,
      },
    });
  }

  private onWrite(session: FakeSession, w: Extract<AgentMessage, { type: 'write' }>['write']): void {
    const image = this.images.get(session.hello!.volumeName)!;
    if (w.kind === 'data') {
      if (crc32c(w.data) !== w.crc32c) {
        this.crcErrors++;
        session.ws.close(4000, 'crc mismatch');
        return;
      }
      w.data.copy(image, w.offset);
    } else {
      image.fill(0, w.offset, w.offset + w.length);
    }
  }

  private onSeal(session: FakeSession, epoch: number, lastSeq: number, reason: string): void {
    const name = session.hello!.volumeName;
    const open = this.groupOpen.get(name) ?? false;
    if ((!open || reason === 'resync-end') && this.snapshotPoints) {
      const list = this.points.get(name) ?? [];
      list.push({ epoch, image: Buffer.from(this.images.get(name)!) });
      this.points.set(name, list);
    }
    if (this.ackEnabled) this.ack(session, epoch, lastSeq);
    else this.pendingAck.push({ session, epoch, seq: lastSeq });
  }

  private ack(session: FakeSession, epoch: number, seq: number): void {
    const name = session.hello!.volumeName;
    this.durable.set(name, { epoch, seq });
    this.send(session, { type: 'ack', ack: { durableEpoch: epoch, durableSeq: seq } });
  }

  async close(): Promise<void> {
    for (const s of this.sessions) s.ws.terminate();
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
  }
}
