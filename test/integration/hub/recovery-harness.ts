/**
 * Shared setup of the recovery API tests: an in-process hub (HTTP, NBD and
 * NVMe/TCP on 127.0.0.1:0) over a temp data dir, JSON requests that keep the
 * HTTP status, and fake agents that pair and write through the real protocol.
 * Every hub and agent made here is stopped by stopAll() (afterEach).
 */
import { testLogger } from '../../../common/log';
import { NbdClient } from '../../../common/nbd/client';
import { createHub, Hub, HubConfig, HubPorts } from '../../../hub';
import { Hello } from '../../../proto/codec';
import { FakeAgent, makeHello } from '../../helpers/fake-agent';

export const KiB = 1024;
export const MiB = 1024 * 1024;

export interface Running {
  hub: Hub;
  ports: HubPorts;
}

const hubs: Hub[] = [];
const agents: FakeAgent[] = [];
const clients: NbdClient[] = [];

export async function startHub(dataDir: string, over: Partial<HubConfig> = {}): Promise<Running> {
  const hub = createHub({
    listen: { host: '127.0.0.1', port: 0 },
    dataDir,
    nbdListen: { host: '127.0.0.1', port: 0 },
    nvmeListen: { host: '127.0.0.1', port: 0 },
    logger: testLogger('hub'),
    segmentBytes: 17 * MiB,
    ...over,
  });
  hubs.push(hub);
  return { hub, ports: await hub.start() };
}

export async function stopHub(r: Running): Promise<void> {
  await r.hub.stop();
  hubs.splice(hubs.indexOf(r.hub), 1);
}

export async function stopAll(): Promise<void> {
  for (const c of clients.splice(0)) await c.close().catch(() => undefined);
  for (const a of agents.splice(0)) a.terminate();
  for (const h of hubs.splice(0)) await h.stop();
}

export type { ApiResult } from '../../helpers/http-api';
export { api } from '../../helpers/http-api';

export async function connectAgent(r: Running): Promise<FakeAgent> {
  const a = await FakeAgent.connect(`ws://127.0.0.1:${r.ports.httpPort}/v1/replicate`);
  agents.push(a);
  return a;
}

/** A fresh agent's FULL sync of an all-zero volume (nothing shipped but the group); returns the agent. */
export async function pairAgent(r: Running, hello: Partial<Hello> = {}): Promise<FakeAgent> {
  const a = await connectAgent(r);
  const { welcome } = await a.hello(makeHello(hello));
  if (!welcome) throw new Error('agent was refused');
  a.resyncBegin(true, hello.volumeSize ?? 1024 * 1024);
  await a.ack(a.resyncEnd());
  return a;
}

/** Writes each piece, seals, waits for the ack; returns the sealed epoch. */
export async function writeAndSeal(a: FakeAgent, pieces: { offset: number; data: Buffer }[]): Promise<number> {
  for (const p of pieces) a.write(p.offset, p.data);
  const epoch = a.seal('flush');
  await a.ack(epoch);
  return epoch;
}

export async function nbd(port: number, exportName: string): Promise<NbdClient> {
  const c = await NbdClient.connect({ host: '127.0.0.1', port, exportName });
  clients.push(c);
  return c;
}

export async function closeNbd(c: NbdClient): Promise<void> {
  clients.splice(clients.indexOf(c), 1);
  await c.close();
}

export function fill(length: number, byte: number): Buffer {
  return Buffer.alloc(length, byte);
}
