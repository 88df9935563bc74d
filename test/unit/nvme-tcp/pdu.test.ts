import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { crc32c } from '../../../common/nvme-tcp/crc32c';
import {
  Fes,
  HeaderCheck,
  PduFlag,
  PduType,
  checkCommonHeader,
  decodeCapsuleResp,
  decodeCommonHeader,
  decodeDataPduHeader,
  decodeIcReq,
  decodeIcResp,
  decodeR2t,
  decodeTermReq,
  encodeCapsuleCmd,
  encodeCapsuleResp,
  encodeDataPdu,
  encodeIcReq,
  encodeIcResp,
  encodeR2t,
  encodeTermReq,
} from '../../../common/nvme-tcp/pdu';
import { PduReader } from '../../../common/nvme-tcp/pdu-reader';
import { decodeConnectData, decodeDsmRanges, decodeSqe, encodeConnectData, encodeDsmRanges, encodeSqe } from '../../../common/nvme-tcp/sqe';
import { fromHex } from '../../helpers/pdu-builders';

const fixture = (name: string): Buffer => fromHex(fs.readFileSync(path.join(__dirname, '../../fixtures', name), 'utf8'));
const cat = (parts: Buffer[]): Buffer => Buffer.concat(parts);

describe('PDU codec golden bytes', () => {
  it('encodes the ICReq / ICResp fixtures and decodes them back', () => {
    expect(encodeIcReq({ pfv: 0, hpda: 0, dgst: 3, maxr2t: 0 }).equals(fixture('nvme-tcp-icreq.hex'))).toBe(true);
    expect(encodeIcResp({ pfv: 0, cpda: 0, dgst: 3, maxh2cdata: 0x100000 }).equals(fixture('nvme-tcp-icresp.hex'))).toBe(true);
    expect(decodeIcResp(fixture('nvme-tcp-icresp.hex'))).toEqual({ pfv: 0, cpda: 0, dgst: 3, maxh2cdata: 1048576 });
  });

  it('encodes a digested in-capsule command exactly like the fixture', () => {
    const golden = fixture('nvme-tcp-capsule-dsm.hex');
    const ranges = encodeDsmRanges([{ attributes: 0, blocks: 8, slba: 0x1000n }]).subarray(0, 16);
    const sqe = encodeSqe({ opcode: 0x09, cid: 0x1003, nsid: 1, dataLength: 16, inCapsule: true, cdw11: 4 });
    expect(cat(encodeCapsuleCmd(sqe, ranges, { hdgst: true, ddgst: true })).equals(golden)).toBe(true);
    // independent checks of the digests in the fixture
    expect(golden.readUInt32LE(72)).toBe(crc32c(golden.subarray(0, 72)));
    expect(golden.readUInt32LE(92)).toBe(crc32c(golden.subarray(76, 92)));
    const [pdu] = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 }).push(Buffer.alloc(0));
    expect(pdu).toBeUndefined();
    const reader = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 });
    reader.setDigests(true, true);
    const got = reader.push(golden);
    expect(got).toHaveLength(1);
    expect(got[0]!.dataDigestOk).toBe(true);
    const s = decodeSqe(got[0]!.header.subarray(8, 72));
    expect(s).toMatchObject({ opcode: 9, cid: 0x1003, nsid: 1, sglLength: 16, sglId: 1, cdw11: 4 });
    expect(decodeDsmRanges(got[0]!.data!, 1)).toEqual([{ attributes: 0, blocks: 8, slba: 0x1000n }]);
  });
});

describe('PDU codec round trips', () => {
  const dg = [
    { hdgst: false, ddgst: false },
    { hdgst: true, ddgst: false },
    { hdgst: true, ddgst: true },
  ];

  it.each(dg)('CapsuleResp, R2T and data PDUs with digests %o', (d) => {
    const cqe = { dw0: 0xdeadbeef, dw1: 7, sqhd: 5, sqid: 2, cid: 0x3001, status: 0x8100 };
    const resp = encodeCapsuleResp(cqe, d);
    expect(decodeCommonHeader(resp)).toEqual({ type: PduType.CAPSULE_RESP, flags: d.hdgst ? 1 : 0, hlen: 24, pdo: 0, plen: d.hdgst ? 28 : 24 });
    expect(decodeCapsuleResp(resp)).toEqual(cqe);

    const r2t = { cccid: 9, ttag: 0x1234, r2to: 65536, r2tl: 131072 };
    expect(decodeR2t(encodeR2t(r2t, d))).toEqual(r2t);

    const data = Buffer.from('hello nvme/tcp!!');
    const parts = encodeDataPdu(PduType.C2H_DATA, { cccid: 9, ttag: 0, datao: 4096 }, data, PduFlag.LAST_PDU, d);
    const whole = cat(parts);
    const ch = decodeCommonHeader(whole);
    expect(ch.pdo).toBe(d.hdgst ? 28 : 24);
    expect(ch.plen).toBe(ch.pdo + data.length + (d.ddgst ? 4 : 0));
    expect(ch.flags & PduFlag.LAST_PDU).toBe(PduFlag.LAST_PDU);
    expect(decodeDataPduHeader(whole)).toEqual({ cccid: 9, ttag: 0, datao: 4096, datal: data.length });
    expect(parts[1]).toBe(data); // data is never copied
  });

  it('honours the receiver alignment (HPDA) with zero padding', () => {
    const whole = cat(encodeDataPdu(PduType.C2H_DATA, { cccid: 1, ttag: 0, datao: 0 }, Buffer.alloc(8, 1), 0, { hdgst: true, ddgst: false }, 32));
    expect(decodeCommonHeader(whole).pdo).toBe(32);
    expect(whole.subarray(28, 32).equals(Buffer.alloc(4))).toBe(true);
  });

  it('TermReq carries FES, the unaligned FEI and at most 128 header bytes', () => {
    const t = encodeTermReq(PduType.C2H_TERM_REQ, { fes: Fes.HEADER_DIGEST, fei: 0xa1b2c3d4, header: Buffer.alloc(200, 0xee) });
    expect(t.length).toBe(24 + 128);
    expect(decodeCommonHeader(t)).toEqual({ type: 3, flags: 0, hlen: 24, pdo: 0, plen: 152 });
    expect(decodeTermReq(t, t.subarray(24))).toMatchObject({ fes: 3, fei: 0xa1b2c3d4 });
  });

  it('SQE, connect data and DSM ranges round-trip', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 0xffff }), fc.nat(), fc.nat(), fc.nat(), (cid, nsid, a, b) => {
        const s = decodeSqe(encodeSqe({ opcode: 2, cid, nsid: nsid >>> 0, cdw10: a >>> 0, cdw11: b >>> 0, cdw12: 7, dataLength: 4096 }));
        expect(s).toMatchObject({ opcode: 2, flags: 0x40, cid, nsid: nsid >>> 0, cdw10: a >>> 0, cdw11: b >>> 0, cdw12: 7, sglLength: 4096, sglId: 0x5a });
      }),
    );
    const cd = { hostid: Buffer.alloc(16, 3), cntlid: 0xffff, subnqn: 'nqn.2024-01.x:y', hostnqn: 'nqn.2014-08.org.nvmexpress:uuid:z' };
    expect(decodeConnectData(encodeConnectData(cd))).toEqual(cd);
    expect(decodeIcReq(encodeIcReq({ pfv: 0, hpda: 3, dgst: 2, maxr2t: 5 }))).toEqual({ pfv: 0, hpda: 3, dgst: 2, maxr2t: 5 });
  });
});

describe('checkCommonHeader', () => {
  const ctx = (over: Partial<HeaderCheck> = {}): HeaderCheck => ({
    hdgst: false,
    ddgst: false,
    pdoAlign: 4,
    accept: (t) => t % 2 === 0,
    maxData: () => ({ limit: 8192, fes: Fes.DATA_LIMIT_EXCEEDED }),
    ...over,
  });
  const cmd = { type: PduType.CAPSULE_CMD, flags: 0, hlen: 72, pdo: 0, plen: 72 };

  it.each([
    ['valid command', cmd, ctx(), null],
    ['C2H type at the target', { ...cmd, type: PduType.C2H_DATA }, ctx(), { fes: 1, fei: 0 }],
    ['unknown type', { ...cmd, type: 0x08 }, ctx(), { fes: 1, fei: 0 }],
    ['wrong HLEN', { ...cmd, hlen: 64 }, ctx(), { fes: 1, fei: 2 }],
    ['HDGSTF without negotiation', { ...cmd, flags: 1, plen: 76 }, ctx(), { fes: 1, fei: 1 }],
    ['missing HDGSTF', cmd, ctx({ hdgst: true }), { fes: 1, fei: 1 }],
    ['DDGSTF on a PDU without data', { ...cmd, flags: 2 }, ctx({ ddgst: true }), { fes: 1, fei: 1 }],
    ['PLEN mismatch without data', { ...cmd, plen: 80 }, ctx(), { fes: 1, fei: 4 }],
    ['PDO inside the header', { ...cmd, pdo: 40, plen: 100 }, ctx(), { fes: 1, fei: 3 }],
    ['PDO past PLEN', { ...cmd, pdo: 76, plen: 74 }, ctx(), { fes: 1, fei: 3 }],
    ['in-capsule data too large', { ...cmd, pdo: 72, plen: 72 + 9000 }, ctx(), { fes: 5, fei: 0 }],
    ['H2CData without data', { type: PduType.H2C_DATA, flags: 4, hlen: 24, pdo: 0, plen: 24 }, ctx(), { fes: 1, fei: 3 }],
    ['TermReq too long', { type: PduType.H2C_TERM_REQ, flags: 0, hlen: 24, pdo: 0, plen: 200 }, ctx(), { fes: 1, fei: 4 }],
    ['ICReq with flags', { type: 0, flags: 1, hlen: 128, pdo: 0, plen: 128 }, ctx(), { fes: 1, fei: 1 }],
  ])('%s', (_name, ch, c, expected) => {
    expect(checkCommonHeader(ch, c)).toEqual(expected);
  });
});
