/**
 * A scripted agent-side replication stream for benchmarks that need a large
 * replica fast (a 10 GiB volume with 1 GiB of journal): it speaks the wire
 * protocol through proto/codec.ts, needs no volume file, and keeps a window
 * of unacknowledged epochs so the hub's journal, not this process's socket
 * buffer, sets the pace. The client uses an all-zero WebSocket mask (ws's
 * generateMask option): masking costs CPU and protects nothing on loopback.
 */
import * as crypto from 'node:crypto';
import { WebSocket } from 'ws';
import { crc32c } from '../common/nvme-tcp/crc32c';
import { AgentMessage, decodeHubMessage, encodeAgentMessage, HubMessage, PROTOCOL_VERSION, Welcome } from '../proto/codec';

export class FakeStream {
  private seq = 0;
  private epoch = 1;
  private acked = 0;
  private ackWaiters: { epoch: number; resolve: () => void }[] = [];
  private failure: Error | null = null;

  private constructor(private readonly ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const m: HubMessage = decodeHubMessage(data);
      if (m.type === 'ack') {
        this.acked = Math.max(this.acked, m.ack.durableEpoch);
        this.ackWaiters = this.ackWaiters.filter((w) => (w.epoch <= this.acked ? (w.resolve(), false) : true));
      }
    });
    ws.on('close', (code, reason) => {
      this.failure = new Error(`hub closed the stream (${code} ${reason.toString()})`);
      for (const w of this.ackWaiters.splice(0)) w.resolve();
    });
  }

  static connect(url: string): Promise<FakeStream> {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(url, { perMessageDeflate: false, generateMask: (m: Buffer) => void m.fill(0) });
      ws.once('open', () => resolve(new FakeStream(ws)));
      ws.once('error', reject);
    });
  }

  private send(m: AgentMessage): void {
    if (this.failure) throw this.failure;
    this.ws.send(encodeAgentMessage(m), { binary: true });
  }

  /** Hello for a never-paired volume; resolves with the Welcome (FULL). */
  hello(volume: string, size: number): Promise<Welcome> {
    this.seq = 0;
    this.epoch = 1;
    return new Promise((resolve, reject) => {
      this.ws.once('message', (data: Buffer) => {
        const m = decodeHubMessage(data);
        if (m.type === 'welcome') resolve(m.welcome);
        else reject(new Error(`hub answered ${m.type}`));
      });
      this.send({
        type: 'hello',
        hello: {
          protocolVersion: PROTOCOL_VERSION, agentId: 'bench-agent', volumeName: volume, volumeUuid: crypto.randomUUID(),
          volumeSize: size, blockSize: 512, regionSize: 64 * 1024, generation: 0, durableEpoch: 0, token: '',
          forceFullSync: false, nextSeq: 1, nextEpoch: 1,
        },
      });
    });
  }

  write(offset: number, data: Buffer | null, length = data?.length ?? 0, origin: 'live' | 'resync' = 'live'): void {
    const kind = data ? 'data' : 'zeroes';
    const payload = data ?? Buffer.alloc(0);
    this.send({
      type: 'write',
      write: { seq: ++this.seq, epoch: this.epoch, offset, length, kind, origin, data: payload, crc32c: data ? crc32c(payload) : 0, timeMs: Date.now() },
    });
  }

  seal(reason: 'timer' | 'resync-end' = 'timer'): number {
    const epoch = this.epoch++;
    this.send({ type: 'seal', seal: { epoch, lastSeq: this.seq, timeMs: Date.now(), reason } });
    return epoch;
  }

  /** A full initial sync of an all-zero volume: zero records only. */
  async zeroSync(size: number, piece = 8 * 1024 * 1024): Promise<void> {
    this.send({ type: 'resyncBegin', resyncBegin: { resyncId: 1, full: true, totalBytes: size } });
    for (let pos = 0; pos < size; pos += piece) this.write(pos, null, Math.min(piece, size - pos), 'resync');
    this.send({ type: 'resyncEnd', resyncEnd: { resyncId: 1, epoch: this.epoch } });
    await this.waitAck(this.seal('resync-end'));
  }

  /** Waits until the hub acknowledged `epoch` (the window keeps at most `ahead` epochs in flight). */
  waitAck(epoch: number): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    if (epoch <= this.acked) return Promise.resolve();
    return new Promise<void>((resolve) => this.ackWaiters.push({ epoch, resolve })).then(() => {
      if (this.failure && epoch > this.acked) throw this.failure;
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.ws.readyState === WebSocket.CLOSED) return resolve();
      this.ws.once('close', () => resolve());
      this.send({ type: 'goodbye', goodbye: { reason: 'bench done' } });
      this.ws.close(1000);
    });
  }
}
