import {
  buildActiveNsList,
  buildChangedNsLog,
  buildDiscoveryLog,
  buildIdentifyController,
  buildIdentifyNamespace,
  buildNsDescriptors,
  buildSmartLog,
  bytesToUuid,
  parseDiscoveryLog,
  sliceLog,
  uuidToBytes,
} from '../../../common/nvme-tcp/identify';
import { CAP } from '../../../common/nvme-tcp/controller';

const base = {
  cntlid: 0x21,
  serial: 'SN-42',
  model: 'blockrep test',
  firmware: '1.2',
  subnqn: 'nqn.2024-01.io.blockrep:disk',
  type: 'io' as const,
  nn: 3,
  mdts: 8,
  ioccsz: 516,
  maxcmd: 128,
  oaes: 0x100,
  kas: 10,
  oncs: 0x0c,
  volatileWriteCache: true,
};

describe('Identify Controller', () => {
  const b = buildIdentifyController(base);

  it('places the fields the Linux host checks at their offsets', () => {
    expect(b.length).toBe(4096);
    expect(b.toString('ascii', 4, 24)).toBe('SN-42'.padEnd(20, ' ')); // space padded, no NUL
    expect(b.toString('ascii', 24, 64)).toBe('blockrep test'.padEnd(40, ' '));
    expect(b.toString('ascii', 64, 72)).toBe('1.2     ');
    expect(b[76]).toBe(0x02); // CMIC
    expect(b[77]).toBe(8); // MDTS
    expect(b.readUInt16LE(78)).toBe(0x21); // CNTLID
    expect(b.readUInt32LE(80)).toBe(0x00010300); // VER 1.3
    expect(b.readUInt32LE(92)).toBe(0x100); // OAES
    expect(b[111]).toBe(1); // CNTRLTYPE I/O
    expect(b[259]).toBe(3); // AERL
    expect(b[261]).toBe(0x04); // LPA
    expect(b.readUInt16LE(320)).toBe(10); // KAS
    expect(b[512]).toBe(0x66);
    expect(b[513]).toBe(0x44);
    expect(b.readUInt16LE(514)).toBe(128); // MAXCMD
    expect(b.readUInt32LE(516)).toBe(3); // NN
    expect(b.readUInt16LE(520)).toBe(0x0c); // ONCS
    expect(b[525]).toBe(1); // VWC
    expect(b.readUInt16LE(528)).toBe(0); // AWUPF
    expect(b.readUInt32LE(536)).toBe(0x00300001); // SGLS
    expect(b.toString('utf8', 768, 768 + base.subnqn.length)).toBe(base.subnqn);
    expect(b[768 + base.subnqn.length]).toBe(0);
    expect(b.readUInt32LE(1792)).toBe(516); // IOCCSZ
    expect(b.readUInt32LE(1796)).toBe(1); // IORCSZ
    expect(b.readUInt16LE(1800)).toBe(0); // ICDOFF
    expect(b[1803]).toBe(1); // MSDBD
  });

  it('marks discovery controllers', () => {
    const d = buildIdentifyController({ ...base, type: 'discovery', oaes: 0x80000000 });
    expect(d[111]).toBe(2);
    expect(d[76]).toBe(0);
    expect(d.readUInt32LE(92)).toBe(0x80000000);
  });

  it('CAP has MQES 127, CQR, TO 15, CSS NVM and MPSMIN 0', () => {
    expect(CAP).toBe(0x000000200f01007fn);
  });
});

describe('Identify Namespace and lists', () => {
  const nguid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');

  it('namespace page', () => {
    const b = buildIdentifyNamespace({ blocks: 131072, blockSize: 4096, nguid, readOnly: true, deallocReadsZeroes: true, shared: true });
    expect(b.readBigUInt64LE(0)).toBe(131072n); // NSZE
    expect(b.readBigUInt64LE(8)).toBe(131072n); // NCAP
    expect(b.readBigUInt64LE(16)).toBe(131072n); // NUSE
    expect(b[26]).toBe(0); // FLBAS
    expect(b[30]).toBe(1); // NMIC
    expect(b[33]).toBe(0x09); // DLFEAT
    expect(b.readBigUInt64LE(48)).toBe(131072n * 4096n); // NVMCAP
    expect(b[99]).toBe(1); // NSATTR write protected
    expect(b.subarray(104, 120).equals(nguid)).toBe(true);
    expect(b.readUInt16LE(128)).toBe(0); // LBAF0.MS
    expect(b[130]).toBe(12); // LBADS
  });

  it('active namespace list is ascending, greater than the given NSID, zero filled', () => {
    const b = buildActiveNsList([7, 1, 3], 1);
    expect([b.readUInt32LE(0), b.readUInt32LE(4), b.readUInt32LE(8)]).toEqual([3, 7, 0]);
  });

  it('namespace descriptors: NGUID, UUID, CSI, then a zero terminator', () => {
    const uuid = uuidToBytes('6a1f3c52-9b7e-4d0a-8c11-2f5e7a9b0c3d');
    const b = buildNsDescriptors(nguid, uuid);
    expect([b[0], b[1]]).toEqual([2, 16]);
    expect(b.subarray(4, 20).equals(nguid)).toBe(true);
    expect([b[20], b[21]]).toEqual([3, 16]);
    expect(bytesToUuid(b.subarray(24, 40))).toBe('6a1f3c52-9b7e-4d0a-8c11-2f5e7a9b0c3d');
    expect([b[40], b[41], b[44]]).toEqual([4, 1, 0]);
    expect(b[45]).toBe(0);
    expect(() => uuidToBytes('not-a-uuid')).toThrow();
  });
});

describe('log pages', () => {
  it('SMART counters in thousands of 512-byte units', () => {
    const b = buildSmartLog({ bytesRead: 512 * 1000, bytesWritten: 512 * 1001, readCommands: 5, writeCommands: 6, powerOnHours: 2 });
    expect(b.length).toBe(512);
    expect(b.readUInt16LE(1)).toBe(0x139);
    expect(b[3]).toBe(100);
    expect(b.readBigUInt64LE(32)).toBe(1n);
    expect(b.readBigUInt64LE(48)).toBe(2n);
    expect(b.readBigUInt64LE(64)).toBe(5n);
    expect(b.readBigUInt64LE(80)).toBe(6n);
    expect(b.readBigUInt64LE(128)).toBe(2n);
  });

  it('changed namespace list overflows to 0xFFFFFFFF', () => {
    expect(buildChangedNsLog([4, 9]).readUInt32LE(4)).toBe(9);
    expect(buildChangedNsLog(Array.from({ length: 1025 }, (_, i) => i + 1)).readUInt32LE(0)).toBe(0xffffffff);
  });

  it('discovery log header and entries, readable at any offset', () => {
    const page = buildDiscoveryLog(7n, [
      { subnqn: 'nqn.a:1', traddr: '10.0.2.2', trsvcid: '4420', adrfam: 'ipv4', portid: 1, subtype: 2 },
      { subnqn: 'nqn.a:2', traddr: 'fe80::1', trsvcid: '4420', adrfam: 'ipv6', portid: 1, subtype: 2 },
    ]);
    expect(page.length).toBe(3 * 1024);
    expect(page.readBigUInt64LE(0)).toBe(7n);
    expect(page.readBigUInt64LE(8)).toBe(2n);
    const e = page.subarray(1024);
    expect([e[0], e[1], e[2], e[3]]).toEqual([3, 1, 2, 0]);
    expect(e.readUInt16LE(6)).toBe(0xffff);
    expect(e.readUInt16LE(8)).toBe(32);
    expect(e.toString('ascii', 32, 36)).toBe('4420');
    expect(e.toString('ascii', 512, 520)).toBe('10.0.2.2');
    expect(e[768]).toBe(0);
    expect(parseDiscoveryLog(page).entries.map((x) => [x.subnqn, x.traddr, x.adrfam])).toEqual([
      ['nqn.a:1', '10.0.2.2', 'ipv4'],
      ['nqn.a:2', 'fe80::1', 'ipv6'],
    ]);
    const tail = sliceLog(page, 2048, 2048);
    expect(tail.subarray(0, 1024).equals(page.subarray(2048))).toBe(true);
    expect(tail.subarray(1024).equals(Buffer.alloc(1024))).toBe(true);
    expect(sliceLog(page, 1 << 20, 16).equals(Buffer.alloc(16))).toBe(true);
  });
});
