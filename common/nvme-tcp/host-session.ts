/**
 * Association set-up for the host library: admin queue, Fabrics Connect,
 * property access, CC enable / shutdown, and the parsers of the Identify pages
 * the host needs. NvmeTcpHost (initiator.ts) composes these.
 */
import { ReplError } from '../errors';
import type { Logger } from '../log';
import { HostQueue } from './host-queue';
import { Cns, IDENTIFY_LEN, getString } from './identify';
import { AdminOpcode, FABRICS_OPCODE, FabricsType, encodeConnectData } from './sqe';

export interface ControllerInfo {
  cntlid: number;
  serial: string;
  model: string;
  firmware: string;
  subnqn: string;
  version: number;
  mdts: number;
  /** Bytes per command (from MDTS; 1 MiB when MDTS is 0). */
  maxTransfer: number;
  nn: number;
  oncs: number;
  volatileWriteCache: boolean;
  ioccsz: number;
  maxcmd: number;
  kas: number;
  sgls: number;
  controllerType: number;
  oaes: number;
}

export interface NamespaceInfo {
  nsid: number;
  nsze: bigint;
  ncap: bigint;
  lbaSize: number;
  nguid: Buffer;
  eui64: Buffer;
  readOnly: boolean;
  shared: boolean;
  dlfeat: number;
}

export const CC_ENABLE = 0x00460001;
export const CC_SHUTDOWN = 0x00464001;
export const ADMIN_DEPTH = 32;

export function parseController(b: Buffer): ControllerInfo {
  const mdts = b[77]!;
  return {
    cntlid: b.readUInt16LE(78),
    serial: b.toString('ascii', 4, 24).trimEnd(),
    model: b.toString('ascii', 24, 64).trimEnd(),
    firmware: b.toString('ascii', 64, 72).trimEnd(),
    subnqn: getString(b, 768, 256),
    version: b.readUInt32LE(80),
    mdts,
    maxTransfer: mdts === 0 ? 1024 * 1024 : Math.min(4096 * 2 ** mdts, 4 * 1024 * 1024),
    nn: b.readUInt32LE(516),
    oncs: b.readUInt16LE(520),
    volatileWriteCache: (b[525]! & 1) === 1,
    ioccsz: b.readUInt32LE(1792),
    maxcmd: b.readUInt16LE(514),
    kas: b.readUInt16LE(320),
    sgls: b.readUInt32LE(536),
    controllerType: b[111]!,
    oaes: b.readUInt32LE(92),
  };
}

export function parseNamespace(nsid: number, b: Buffer): NamespaceInfo {
  const lbads = b[128 + (b[26]! & 0xf) * 4 + 2]!;
  return {
    nsid,
    nsze: b.readBigUInt64LE(0),
    ncap: b.readBigUInt64LE(8),
    lbaSize: 2 ** lbads,
    nguid: Buffer.from(b.subarray(104, 120)),
    eui64: Buffer.from(b.subarray(120, 128)),
    readOnly: (b[99]! & 1) === 1,
    shared: (b[30]! & 1) === 1,
    dlfeat: b[33]!,
  };
}

export function defaultHostNqn(hostid: string): string {
  return `nqn.2014-08.org.nvmexpress:uuid:${hostid}`;
}

export interface AssociationParams {
  host: string;
  port: number;
  subnqn: string;
  hostnqn: string;
  hostid: string;
  kato: number;
  headerDigest: boolean;
  dataDigest: boolean;
  /** Connect with CATTR b2 (SQ flow control disabled): the target may end reads with a SUCCESS C2HData. */
  disableSqFlow?: boolean;
  logger: Logger;
}

/** Admin queue, Connect, CC enable, Identify Controller. */
export async function associate(p: AssociationParams): Promise<{ admin: HostQueue; cntlid: number; controller: ControllerInfo }> {
  const admin = await HostQueue.open({
    host: p.host,
    port: p.port,
    qid: 0,
    depth: ADMIN_DEPTH,
    digests: { hdgst: p.headerDigest, ddgst: p.dataDigest },
    logger: p.logger,
  });
  try {
    const cntlid = await connectQueue(admin, p, 0, ADMIN_DEPTH - 1, 0xffff);
    const cap = await propertyGet(admin, 0x00, true);
    await propertySet(admin, 0x14, CC_ENABLE);
    const timeoutMs = (Number((cap >> 24n) & 0xffn) + 1) * 500;
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const csts = Number(await propertyGet(admin, 0x1c, false));
      if (csts & 2) throw new ReplError('E_HANDSHAKE', 'controller fatal status (CSTS.CFS) on enable');
      if (csts & 1) break;
      if (Date.now() > deadline) throw new ReplError('E_TIMEOUT', 'controller did not become ready');
      await new Promise((r) => setTimeout(r, 5));
    }
    const id = Buffer.alloc(IDENTIFY_LEN);
    await admin.submit({ opcode: AdminOpcode.IDENTIFY, cdw10: Cns.CONTROLLER }, { readInto: id, what: 'identify controller' });
    const controller = parseController(id);
    if (controller.cntlid !== cntlid) throw new ReplError('E_HANDSHAKE', `identify CNTLID ${controller.cntlid} != connect CNTLID ${cntlid}`);
    return { admin, cntlid, controller };
  } catch (err) {
    admin.close();
    throw err;
  }
}

export async function connectQueue(q: HostQueue, p: AssociationParams, qid: number, sqsize: number, cntlid: number): Promise<number> {
  const data = encodeConnectData({ hostid: Buffer.from(p.hostid.replace(/-/g, ''), 'hex'), cntlid, subnqn: p.subnqn, hostnqn: p.hostnqn });
  const cqe = await q.submit(
    { opcode: FABRICS_OPCODE, fctype: FabricsType.CONNECT, cdw10: qid << 16, cdw11: (sqsize | (p.disableSqFlow ? 0x04 << 16 : 0)) >>> 0, cdw12: qid === 0 ? p.kato : 0 },
    { data, what: `connect qid ${qid}` },
  );
  return cqe.dw0 & 0xffff;
}

export async function propertyGet(q: HostQueue, offset: number, size8: boolean): Promise<bigint> {
  const cqe = await q.submit(
    { opcode: FABRICS_OPCODE, fctype: FabricsType.PROPERTY_GET, cdw10: size8 ? 1 : 0, cdw11: offset },
    { what: `property get 0x${offset.toString(16)}` },
  );
  return BigInt(cqe.dw0 >>> 0) | (size8 ? BigInt(cqe.dw1 >>> 0) << 32n : 0n);
}

export async function propertySet(q: HostQueue, offset: number, value: number): Promise<void> {
  await q.submit(
    { opcode: FABRICS_OPCODE, fctype: FabricsType.PROPERTY_SET, cdw10: 0, cdw11: offset, cdw12: value },
    { what: `property set 0x${offset.toString(16)}` },
  );
}

/** CC.SHN normal shutdown, then a bounded wait for SHST = complete. */
export async function shutdownController(admin: HostQueue, timeoutMs = 2000): Promise<void> {
  await propertySet(admin, 0x14, CC_SHUTDOWN);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const csts = Number(await propertyGet(admin, 0x1c, false));
    if ((csts & 0xc) === 0x8) return;
    await new Promise((r) => setTimeout(r, 5));
  }
}
