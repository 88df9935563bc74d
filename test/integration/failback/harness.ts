/**
 * Shared setup of the failback integration tests: an in-process hub (HTTP +
 * NBD on 127.0.0.1:0) over a temp data dir, a real agent whose link runs
 * through a FlakyProxy (so it can be cut), JSON requests keeping the HTTP
 * status, NBD helpers. Everything started here is stopped by `stop()`.
 */
import * as path from 'node:path';
import { Agent, AgentConfig, createAgent } from '../../../agent';
import { testLogger } from '../../../common/log';
import { NbdClient } from '../../../common/nbd/client';
import { createHub, Hub, HubPorts } from '../../../hub';
import { FlakyProxy } from '../../helpers/flaky-proxy';
import { waitFor } from '../../helpers/wait-for';

export const KiB = 1024;
export const MiB = 1024 * KiB;
export const REGION = 64 * KiB;

export function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed * 17 + 3) & 0xff;
  return b;
}

import { api, ApiResult as Api } from '../../helpers/http-api';

export { api };
export type { Api };

export class FailbackRig {
  hub: Hub | null = null;
  ports!: HubPorts;
  proxy: FlakyProxy | null = null;
  agent: Agent | null = null;
  private readonly clients: NbdClient[] = [];

  constructor(
    readonly dir: string,
    readonly size: number,
  ) {}

  async startHub(): Promise<void> {
    this.hub = createHub({
      listen: { host: '127.0.0.1', port: 0 },
      dataDir: path.join(this.dir, 'hub'),
      nbdListen: { host: '127.0.0.1', port: 0 },
      logger: testLogger('hub'),
      segmentBytes: 17 * MiB,
    });
    this.ports = await this.hub.start();
    if (this.proxy) await this.proxy.close();
    this.proxy = await FlakyProxy.start({ port: this.ports.httpPort });
  }

  async stopHub(): Promise<void> {
    await this.hub?.stop();
    this.hub = null;
  }

  agentConfig(): AgentConfig {
    return {
      stateDir: path.join(this.dir, 'agent'),
      volumes: [{ name: 'vol1', path: path.join(this.dir, 'vol1.img'), size: this.size }],
      nvmeListen: null,
      nbdListen: null,
      hub: {
        url: this.proxy!.url(),
        ackMode: 'async',
        queueBytes: 16 * MiB,
        resyncRate: 0,
        regionSize: REGION,
        extentSize: MiB,
        epochIntervalMs: 5,
        statusIntervalMs: 50,
        reconnectBaseMs: 50,
        reconnectMaxMs: 200,
      },
      logger: testLogger('agent'),
    };
  }

  async startAgent(): Promise<Agent> {
    this.agent = createAgent(this.agentConfig());
    await this.agent.start();
    return this.agent;
  }

  async stopAgent(): Promise<void> {
    await this.agent?.stop();
    this.agent = null;
  }

  async stop(): Promise<void> {
    for (const c of this.clients.splice(0)) await c.close().catch(() => undefined);
    await this.agent?.stop().catch(() => undefined);
    await this.proxy?.close();
    await this.hub?.stop();
    this.agent = null;
    this.proxy = null;
    this.hub = null;
  }

  api(method: string, p: string, body?: unknown): Promise<Api> {
    return api(this.ports.httpPort, method, p, body);
  }

  repl() {
    return this.agent!.status().volumes[0]!.replication!;
  }

  async synced(): Promise<void> {
    await waitFor(
      async () => {
        const r = this.repl();
        return r.state === 'streaming' && r.dirtyBytes === 0 && !r.resync?.active && (await this.api('GET', '/v1/volumes/vol1')).body.synced;
      },
      { timeoutMs: 20_000, what: 'agent in sync with the hub' },
    );
  }

  async nbd(exportName: string): Promise<NbdClient> {
    const c = await NbdClient.connect({ host: '127.0.0.1', port: this.ports.nbdPort!, exportName });
    this.clients.push(c);
    return c;
  }

  async readExport(exportName: string): Promise<Buffer> {
    const c = await this.nbd(exportName);
    const out = Buffer.alloc(this.size);
    for (let off = 0; off < this.size; off += 4 * MiB) (await c.read(off, Math.min(4 * MiB, this.size - off))).copy(out, off);
    await c.close();
    this.clients.splice(this.clients.indexOf(c), 1);
    return out;
  }

  /** Writes pieces through NBD into `exportName` and into `expected`. */
  async writeExport(exportName: string, pieces: { offset: number; data: Buffer }[], expected: Buffer): Promise<void> {
    const c = await this.nbd(exportName);
    for (const w of pieces) {
      await c.write(w.offset, w.data);
      w.data.copy(expected, w.offset);
    }
    await c.flush();
  }

  readAgent(): Promise<Buffer> {
    return this.agent!.device('vol1').read(0, this.size);
  }

  async failbackDone(timeoutMs = 30_000): Promise<any> { // eslint-disable-line @typescript-eslint/no-explicit-any
    return waitFor(
      async () => {
        const f = (await this.api('GET', '/v1/volumes/vol1/failback')).body;
        if (f.state === 'failed') throw new Error(`failback failed: ${f.error}`);
        return f.state === 'done' ? f : null;
      },
      { timeoutMs, what: 'failback done' },
    );
  }
}
