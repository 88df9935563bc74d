/**
 * Pure builders of the data pages the admin commands return: Identify
 * controller / namespace / active NS list / NS descriptors, and the log pages
 * (error, SMART, changed namespaces, discovery). Byte offsets follow the NVMe
 * base and fabrics specifications (crib §4, §6.1). Every page is a fresh
 * zero-filled Buffer.
 */
import { ReplError } from '../errors';

export const IDENTIFY_LEN = 4096;
export const DISCOVERY_NQN = 'nqn.2014-08.org.nvmexpress.discovery';
/** NVMe 1.3: the host then requires CNS 3 but does not ask for CSI support. */
export const NVME_VERSION = 0x00010300;

/** Cns values of Identify. */
export const Cns = { NAMESPACE: 0x00, CONTROLLER: 0x01, ACTIVE_NS_LIST: 0x02, NS_DESCRIPTORS: 0x03, NVM_CONTROLLER: 0x06 } as const;

/** Log page identifiers. */
export const LogId = { ERROR: 0x01, SMART: 0x02, FIRMWARE_SLOT: 0x03, CHANGED_NS: 0x04, DISCOVERY: 0x70 } as const;

export const ControllerType = { IO: 1, DISCOVERY: 2 } as const;

/** Writes an ASCII string space-padded (SN/MN/FR) or NUL-padded (NQNs) into a fixed field. */
export function putString(buf: Buffer, offset: number, size: number, text: string, pad: 'space' | 'nul'): void {
  buf.fill(pad === 'space' ? 0x20 : 0, offset, offset + size);
  const bytes = Buffer.from(text, pad === 'space' ? 'ascii' : 'utf8');
  // NUL-padded fields keep room for the terminating NUL
  const max = pad === 'nul' ? size - 1 : size;
  bytes.copy(buf, offset, 0, Math.min(bytes.length, max));
}

/** Reads a NUL-terminated / NUL-padded string field. */
export function getString(buf: Buffer, offset: number, size: number): string {
  const field = buf.subarray(offset, offset + size);
  const end = field.indexOf(0);
  return field.subarray(0, end < 0 ? field.length : end).toString('utf8');
}

/** Canonical UUID text -> 16 bytes. */
export function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replace(/-/g, '');
  if (!/^[0-9a-fA-F]{32}$/.test(hex)) throw ReplError.invalid(`invalid uuid '${uuid}'`);
  return Buffer.from(hex, 'hex');
}

export function bytesToUuid(b: Buffer): string {
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20, 32)}`;
}

export interface ControllerIdentity {
  cntlid: number;
  serial: string;
  model: string;
  firmware: string;
  subnqn: string;
  type: 'io' | 'discovery';
  /** Highest namespace id. */
  nn: number;
  /** log2(max transfer / 4 KiB). */
  mdts: number;
  /** I/O queue command capsule size in 16-byte units (SQE included). */
  ioccsz: number;
  maxcmd: number;
  /** Async events the controller can report (OAES). */
  oaes: number;
  /** Keep Alive granularity in 100 ms units. */
  kas: number;
  /** ONCS: b2 DSM, b3 Write Zeroes. */
  oncs: number;
  volatileWriteCache: boolean;
}

/** Identify Controller (CNS 1), 4096 bytes. */
export function buildIdentifyController(c: ControllerIdentity): Buffer {
  const b = Buffer.alloc(IDENTIFY_LEN);
  putString(b, 4, 20, c.serial, 'space');
  putString(b, 24, 40, c.model, 'space');
  putString(b, 64, 8, c.firmware, 'space');
  b[72] = 6; // RAB
  b[76] = c.type === 'io' ? 0x02 : 0; // CMIC b1: several controllers may share the namespaces
  b[77] = c.mdts;
  b.writeUInt16LE(c.cntlid, 78);
  b.writeUInt32LE(NVME_VERSION, 80);
  b.writeUInt32LE(c.oaes >>> 0, 92);
  b.writeUInt32LE(0x1, 96); // CTRATT: 128-bit host identifier
  b[111] = c.type === 'io' ? ControllerType.IO : ControllerType.DISCOVERY;
  b[258] = 3; // ACL
  b[259] = 3; // AERL: four outstanding AERs
  b[261] = 0x04; // LPA: extended Get Log Page (LPO, NUMDU)
  b[262] = 0; // ELPE: one error log entry
  b.writeUInt16LE(0x157, 266); // WCTEMP
  b.writeUInt16LE(0x157, 268); // CCTEMP
  b.writeUInt16LE(c.kas, 320);
  b[512] = 0x66; // SQES
  b[513] = 0x44; // CQES
  b.writeUInt16LE(c.maxcmd, 514);
  b.writeUInt32LE(c.nn >>> 0, 516);
  b.writeUInt16LE(c.oncs, 520);
  b[525] = c.volatileWriteCache ? 0x01 : 0;
  b.writeUInt32LE(0x00300001, 536); // SGLS: keyed-less data blocks, offsets, transport data block
  putString(b, 768, 256, c.subnqn, 'nul');
  b.writeUInt32LE(c.ioccsz, 1792);
  b.writeUInt32LE(1, 1796); // IORCSZ
  b.writeUInt16LE(0, 1800); // ICDOFF
  b[1802] = 0; // CTRATTR: dynamic controller model
  b[1803] = 1; // MSDBD
  return b;
}

export interface NamespaceIdentity {
  /** Size in logical blocks. */
  blocks: number;
  blockSize: number;
  nguid: Buffer;
  readOnly: boolean;
  /** Deallocated blocks read as zeroes and Write Zeroes may deallocate (DLFEAT 0x09). */
  deallocReadsZeroes: boolean;
  shared: boolean;
}

/** Identify Namespace (CNS 0), 4096 bytes. */
export function buildIdentifyNamespace(ns: NamespaceIdentity): Buffer {
  const b = Buffer.alloc(IDENTIFY_LEN);
  const blocks = BigInt(ns.blocks);
  b.writeBigUInt64LE(blocks, 0); // NSZE
  b.writeBigUInt64LE(blocks, 8); // NCAP
  b.writeBigUInt64LE(blocks, 16); // NUSE
  b[25] = 0; // NLBAF: one format
  b[26] = 0; // FLBAS: format 0, no metadata
  b[30] = ns.shared ? 1 : 0; // NMIC
  b[33] = ns.deallocReadsZeroes ? 0x09 : 0; // DLFEAT
  b.writeBigUInt64LE(blocks * BigInt(ns.blockSize), 48); // NVMCAP (low 64 bits)
  b[99] = ns.readOnly ? 1 : 0; // NSATTR write protected
  ns.nguid.copy(b, 104, 0, 16);
  b[128 + 2] = Math.log2(ns.blockSize); // LBAF0.LBADS
  return b;
}

/** Identify CNS 2: active NSIDs greater than `after`, ascending, at most 1024. */
export function buildActiveNsList(nsids: readonly number[], after: number): Buffer {
  const b = Buffer.alloc(IDENTIFY_LEN);
  const list = nsids.filter((n) => n > after).sort((x, y) => x - y).slice(0, IDENTIFY_LEN / 4);
  list.forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
  return b;
}

/** Identify CNS 3: NGUID, UUID and CSI (NVM) descriptors. */
export function buildNsDescriptors(nguid: Buffer, uuid: Buffer): Buffer {
  const b = Buffer.alloc(IDENTIFY_LEN);
  let off = 0;
  const put = (nidt: number, id: Buffer): void => {
    b[off] = nidt;
    b[off + 1] = id.length;
    id.copy(b, off + 4);
    off += 4 + id.length;
  };
  put(0x02, nguid.subarray(0, 16));
  put(0x03, uuid.subarray(0, 16));
  put(0x04, Buffer.from([0]));
  return b;
}

/** Returns `length` bytes of `page` from byte offset `lpo`, zero-filled past its end. */
export function sliceLog(page: Buffer, lpo: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  if (lpo < page.length) page.copy(out, 0, lpo, Math.min(page.length, lpo + length));
  return out;
}

export interface SmartCounters {
  bytesRead: number;
  bytesWritten: number;
  readCommands: number;
  writeCommands: number;
  powerOnHours: number;
}

/** SMART / Health log (LID 2), 512 bytes. Data units are thousands of 512-byte units, rounded up. */
export function buildSmartLog(c: SmartCounters): Buffer {
  const b = Buffer.alloc(512);
  b[0] = 0; // critical warning
  b.writeUInt16LE(0x0139, 1); // composite temperature, 313 K
  b[3] = 100; // available spare
  b[4] = 10; // spare threshold
  b[5] = 0; // percentage used
  const units = (bytes: number): bigint => BigInt(Math.ceil(bytes / 512 / 1000));
  b.writeBigUInt64LE(units(c.bytesRead), 32);
  b.writeBigUInt64LE(units(c.bytesWritten), 48);
  b.writeBigUInt64LE(BigInt(c.readCommands), 64);
  b.writeBigUInt64LE(BigInt(c.writeCommands), 80);
  b.writeBigUInt64LE(BigInt(c.powerOnHours), 128);
  return b;
}

/** Changed Namespace List (LID 4), 4096 bytes; more than 1024 entries -> 0xFFFFFFFF. */
export function buildChangedNsLog(nsids: readonly number[]): Buffer {
  const b = Buffer.alloc(IDENTIFY_LEN);
  if (nsids.length > 1024) b.writeUInt32LE(0xffffffff, 0);
  else nsids.forEach((n, i) => b.writeUInt32LE(n >>> 0, i * 4));
  return b;
}

export interface DiscoveryEntry {
  subnqn: string;
  traddr: string;
  trsvcid: string;
  adrfam: 'ipv4' | 'ipv6';
  portid: number;
  /** 2 NVM subsystem, 3 current discovery subsystem. */
  subtype: number;
}

export const DISCOVERY_HEADER_LEN = 1024;
export const DISCOVERY_ENTRY_LEN = 1024;

/** Discovery log page (LID 0x70): header plus one 1024-byte entry per subsystem. */
export function buildDiscoveryLog(genctr: bigint, entries: readonly DiscoveryEntry[]): Buffer {
  const b = Buffer.alloc(DISCOVERY_HEADER_LEN + DISCOVERY_ENTRY_LEN * entries.length);
  b.writeBigUInt64LE(genctr, 0);
  b.writeBigUInt64LE(BigInt(entries.length), 8);
  b.writeUInt16LE(0, 16); // RECFMT
  entries.forEach((e, i) => {
    const o = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
    b[o] = 3; // TRTYPE TCP
    b[o + 1] = e.adrfam === 'ipv4' ? 1 : 2;
    b[o + 2] = e.subtype;
    b[o + 3] = 0; // TREQ: secure channel unspecified, SQ flow control required
    b.writeUInt16LE(e.portid, o + 4);
    b.writeUInt16LE(0xffff, o + 6); // dynamic controller
    b.writeUInt16LE(32, o + 8); // ASQSZ
    putString(b, o + 32, 32, e.trsvcid, 'nul');
    putString(b, o + 256, 256, e.subnqn, 'nul');
    putString(b, o + 512, 256, e.traddr, 'nul');
    b[o + 768] = 0; // SECTYPE none
  });
  return b;
}

export function parseDiscoveryLog(page: Buffer): { genctr: bigint; entries: DiscoveryEntry[] } {
  if (page.length < DISCOVERY_HEADER_LEN) throw ReplError.protocol('discovery log shorter than its header');
  const genctr = page.readBigUInt64LE(0);
  const numrec = Number(page.readBigUInt64LE(8));
  const entries: DiscoveryEntry[] = [];
  for (let i = 0; i < numrec && DISCOVERY_HEADER_LEN + (i + 1) * DISCOVERY_ENTRY_LEN <= page.length; i++) {
    const o = DISCOVERY_HEADER_LEN + i * DISCOVERY_ENTRY_LEN;
    entries.push({
      adrfam: page[o + 1] === 2 ? 'ipv6' : 'ipv4',
      subtype: page[o + 2]!,
      portid: page.readUInt16LE(o + 4),
      trsvcid: getString(page, o + 32, 32),
      subnqn: getString(page, o + 256, 256),
      traddr: getString(page, o + 512, 256),
    });
  }
  return { genctr, entries };
}
