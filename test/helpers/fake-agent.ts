/**
 * FakeAgent: a scripted WebSocket client speaking the agent side of the
 * replication protocol through proto/codec.ts, for hub tests. It records every
 * hub message, lets a test await the next one of a type, and exposes the close
 * code. It has no dirty bitmap: the test decides exactly what to send.
 */
import { WebSocket } from 'ws';
import { crc32c } from '../../common/nvme-tcp/crc32c';
import {
  Ack,
  AgentMessage,
  Hello,
  HubMessage,
  PROTOCOL_VERSION,
  Refuse,
  Welcome,
  WriteKind,
  decodeHubMessage,
  encodeAgentMessage,
} from '../../proto/codec';

export function makeHello(overrides: Partial<Hello> = {}): Hello {
  return {
    protocolVersion: PROTOCOL_VERSION,
    agentId: 'agent-1',
    volumeName: 'vol1',
    volumeUuid: 'uuid-1',
    volumeSize: 1024 * 1024,
    blockSize: 512,
    regionSize: 64 * 1024,
    generation: 0,
    durableEpoch: 0,
    token: '',
    forceFullSync: false,
    nextSeq: 1,
    nextEpoch: 1,
    ...overrides,
  };
}

export class FakeAgent {
  readonly received: HubMessage[] = [];
  private waiters: { match: (m: HubMessage) => boolean; resolve: (m: HubMessage) => void }[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  seq = 0;
  epoch = 1;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const msg = decodeHubMessage(data);
      this.received.push(msg);
      const i = this.waiters.findIndex((w) => w.match(msg));
      if (i >= 0) this.waiters.splice(i, 1)[0]!.resolve(msg);
    });
    this.closed = new Promise((resolve) => ws.on('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  static connect(url: string, options: { ca?: Buffer | string } = {}): Promise<FakeAgent> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { ca: options.ca, perMessageDeflate: false });
      ws.once('open', () => resolve(new FakeAgent(ws)));
      ws.once('error', reject);
    });
  }

  send(m: AgentMessage): void {
    this.ws.send(encodeAgentMessage(m), { binary: true });
  }

  sendRaw(buf: Buffer): void {
    this.ws.send(buf, { binary: true });
  }

  /** Resolves with the first hub message (already received or future) that matches. */
  next(match: (m: HubMessage) => boolean, timeoutMs = 5000): Promise<HubMessage> {
    const found = this.received.find(match);
    if (found) {
      this.received.splice(this.received.indexOf(found), 1);
      return Promise.resolve(found);
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('FakeAgent: timed out waiting for a hub message')), timeoutMs);
      this.waiters.push({
        match,
        resolve: (m) => {
          clearTimeout(timer);
          this.received.splice(this.received.indexOf(m), 1);
          resolve(m);
        },
      });
    });
  }

  /** Sends Hello and returns Welcome or Refuse; seq/epoch continue from the hello. */
  async hello(h: Hello): Promise<{ welcome?: Welcome; refuse?: Refuse }> {
    this.seq = h.nextSeq - 1;
    this.epoch = h.nextEpoch;
    this.send({ type: 'hello', hello: h });
    const m = await this.next((x) => x.type === 'welcome' || x.type === 'refuse');
    return m.type === 'welcome' ? { welcome: m.welcome } : m.type === 'refuse' ? { refuse: m.refuse } : {};
  }

  write(offset: number, data: Buffer | number, kind: WriteKind = 'data', origin: 'live' | 'resync' = 'live'): number {
    const isData = kind === 'data';
    const payload = typeof data === 'number' ? Buffer.alloc(0) : data;
    const length = typeof data === 'number' ? data : data.length;
    this.send({
      type: 'write',
      write: {
        seq: ++this.seq,
        epoch: this.epoch,
        offset,
        length,
        kind,
        origin,
        data: isData ? payload : Buffer.alloc(0),
        crc32c: isData ? crc32c(payload) : 0,
        timeMs: Date.now(),
      },
    });
    return this.seq;
  }

  /** Seals the current epoch; returns its number. */
  seal(reason: 'timer' | 'flush' | 'resync-end' = 'timer'): number {
    const epoch = this.epoch++;
    this.send({ type: 'seal', seal: { epoch, lastSeq: this.seq, timeMs: Date.now(), reason } });
    return epoch;
  }

  resyncBegin(full: boolean, totalBytes = 0, resyncId = 1): void {
    this.send({ type: 'resyncBegin', resyncBegin: { resyncId, full, totalBytes } });
  }

  /** ResyncEnd{E} followed by Seal{E}; returns E. */
  resyncEnd(resyncId = 1): number {
    this.send({ type: 'resyncEnd', resyncEnd: { resyncId, epoch: this.epoch } });
    return this.seal('resync-end');
  }

  async ack(epoch: number, timeoutMs = 5000): Promise<Ack> {
    const m = await this.next((x) => x.type === 'ack' && x.ack.durableEpoch >= epoch, timeoutMs);
    return (m as Extract<HubMessage, { type: 'ack' }>).ack;
  }

  close(): Promise<{ code: number; reason: string }> {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(1000);
    return this.closed;
  }

  terminate(): void {
    this.ws.terminate();
  }
}
