import fc from 'fast-check';
import { Digests, PduFlag, PduType, encodeCapsuleCmd, encodeCapsuleResp, encodeDataPdu, encodeIcReq, encodeIcResp, encodeR2t } from '../../../common/nvme-tcp/pdu';
import { Pdu, PduError, PduReader } from '../../../common/nvme-tcp/pdu-reader';
import { encodeSqe } from '../../../common/nvme-tcp/sqe';

const cat = (parts: Buffer[]): Buffer => Buffer.concat(parts);

/** A host-to-target session: ICReq, a command without data, an in-capsule write, two H2CData PDUs. */
function hostStream(dg: Digests): { icreq: Buffer; rest: Buffer } {
  const noData = encodeSqe({ opcode: 0x18, cid: 1 });
  const write = encodeSqe({ opcode: 0x01, cid: 2, nsid: 1, dataLength: 1000, inCapsule: true });
  const payload = Buffer.from(Array.from({ length: 1000 }, (_, i) => i & 0xff));
  const rest = cat([
    ...encodeCapsuleCmd(noData, null, dg),
    ...encodeCapsuleCmd(write, payload, dg),
    ...encodeDataPdu(PduType.H2C_DATA, { cccid: 3, ttag: 1, datao: 0 }, Buffer.alloc(3000, 0xab), 0, dg),
    ...encodeDataPdu(PduType.H2C_DATA, { cccid: 3, ttag: 1, datao: 3000 }, Buffer.alloc(96, 0xcd), PduFlag.LAST_PDU, dg),
  ]);
  return { icreq: encodeIcReq({ pfv: 0, hpda: 0, dgst: (dg.hdgst ? 1 : 0) | (dg.ddgst ? 2 : 0), maxr2t: 0 }), rest };
}

function summary(p: Pdu): string {
  return `${p.type}/${p.flags}/${p.plen}/${p.data ? p.data.toString('hex') : '-'}/${p.dataDigestOk}`;
}

/** Feeds `stream` in the given pieces, applying digests after the ICReq like the target does. */
function feed(pieces: Buffer[], dg: Digests): Pdu[] {
  const reader = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 });
  const out: Pdu[] = [];
  for (const piece of pieces) {
    for (const p of reader.push(piece)) {
      out.push(p);
      if (p.type === PduType.IC_REQ) {
        reader.setDigests(dg.hdgst, dg.ddgst);
        out.push(...reader.push(Buffer.alloc(0)));
      }
    }
  }
  expect(reader.midPdu).toBe(false);
  return out;
}

describe.each([
  { hdgst: false, ddgst: false },
  { hdgst: true, ddgst: false },
  { hdgst: true, ddgst: true },
])('PduReader with digests %o', (dg) => {
  const { icreq, rest } = hostStream(dg);
  const stream = Buffer.concat([icreq, rest]);
  const expected = feed([stream], dg).map(summary);

  it('parses a whole stream', () => {
    expect(expected).toHaveLength(5);
    expect(expected.every((s) => s.endsWith('/true'))).toBe(true);
  });

  it('gives the same PDUs when split at every offset', () => {
    for (let cut = 0; cut <= stream.length; cut++) {
      expect(feed([stream.subarray(0, cut), stream.subarray(cut)], dg).map(summary)).toEqual(expected);
    }
  });

  it('gives the same PDUs byte at a time', () => {
    const bytes = Array.from(stream, (_, i) => stream.subarray(i, i + 1));
    expect(feed(bytes, dg).map(summary)).toEqual(expected);
  });

  it('gives the same PDUs for random chunkings', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 40 }), (sizes) => {
        const pieces: Buffer[] = [];
        let pos = 0;
        for (let i = 0; pos < stream.length; i++) {
          const n = sizes[i % sizes.length]!;
          pieces.push(stream.subarray(pos, pos + n));
          pos += n;
        }
        expect(feed(pieces, dg).map(summary)).toEqual(expected);
      }),
      { numRuns: 60 },
    );
  });
});

describe.each([
  { hdgst: false, ddgst: false },
  { hdgst: true, ddgst: true },
])('PduReader with transient chunks, digests %o', (dg) => {
  const { icreq, rest } = hostStream(dg);
  const stream = Buffer.concat([icreq, rest]);
  // with the header bytes: the consumer decodes the SQE from them
  const full = (p: Pdu): string => `${summary(p)}/${p.header.toString('hex')}`;
  const expected = feed([stream], dg).map(full);

  it('keeps nothing of a chunk that is overwritten after push (random chunkings)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 40 }), (sizes) => {
        const reader = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096, transientChunks: true });
        const scratch = Buffer.alloc(stream.length);
        const out: Pdu[] = [];
        const headers: string[] = [];
        const take = (pdus: Pdu[]): void => {
          for (const p of pdus) {
            // the consumer handles a PDU's header before the next push, as the target does
            headers.push(p.header.toString('hex'));
            out.push(p);
            if (p.type === PduType.IC_REQ) {
              reader.setDigests(dg.hdgst, dg.ddgst);
              take(reader.push(Buffer.alloc(0)));
            }
          }
        };
        let pos = 0;
        for (let i = 0; pos < stream.length; i++) {
          // one reused buffer, as a socket reading into a static buffer delivers it
          const n = stream.copy(scratch, 0, pos, pos + sizes[i % sizes.length]!);
          take(reader.push(scratch.subarray(0, n)));
          scratch.fill(0xee);
          pos += n;
        }
        expect(reader.midPdu).toBe(false);
        // data is checked only now, after every chunk was overwritten
        expect(out.map((p, i) => `${summary(p)}/${headers[i]}`)).toEqual(expected);
      }),
      { numRuns: 60 },
    );
  });
});

describe('PduReader limits and errors', () => {
  const target = (): PduReader => {
    const r = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 });
    r.push(encodeIcReq({ pfv: 0, hpda: 0, dgst: 0, maxr2t: 0 }));
    r.setDigests(false, false);
    return r;
  };

  it('rejects a huge PLEN from the common header alone, before buffering anything', () => {
    const r = target();
    const ch = Buffer.from([0x06, 0x04, 24, 24, 0xff, 0xff, 0xff, 0x7f]);
    expect(() => r.push(ch)).toThrow(PduError);
    try {
      target().push(ch);
    } catch (err) {
      expect(err).toMatchObject({ fes: 5, fei: 0, code: 'E_PROTOCOL' });
    }
  });

  it('reports header digest mismatches with the received digest as FEI', () => {
    const r = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 });
    r.push(encodeIcReq({ pfv: 0, hpda: 0, dgst: 1, maxr2t: 0 }));
    r.setDigests(true, false);
    const pdu = cat(encodeCapsuleCmd(encodeSqe({ opcode: 0x18, cid: 1 }), null, { hdgst: true, ddgst: false }));
    pdu[10] ^= 1;
    const err = (() => {
      try {
        r.push(pdu);
        return null;
      } catch (e) {
        return e as PduError;
      }
    })();
    expect(err).toMatchObject({ fes: 3, fei: pdu.readUInt32LE(72) });
    expect(() => r.push(Buffer.alloc(1))).toThrow(/after a fatal error/);
  });

  it('marks a bad data digest instead of throwing', () => {
    const r = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 });
    r.push(encodeIcReq({ pfv: 0, hpda: 0, dgst: 3, maxr2t: 0 }));
    r.setDigests(true, true);
    const pdu = cat(encodeDataPdu(PduType.H2C_DATA, { cccid: 1, ttag: 1, datao: 0 }, Buffer.alloc(64, 1), PduFlag.LAST_PDU, { hdgst: true, ddgst: true }));
    pdu[pdu.length - 1] ^= 0xff;
    const [p] = r.push(pdu);
    expect(p!.dataDigestOk).toBe(false);
  });

  it('pauses after an IC PDU until digests are known', () => {
    const r = new PduReader({ role: 'host', maxDataPdu: 4096 });
    const resp = encodeCapsuleResp({ dw0: 0, dw1: 0, sqhd: 0, sqid: 0, cid: 1, status: 0 }, { hdgst: true, ddgst: false });
    const out = r.push(Buffer.concat([encodeIcResp({ pfv: 0, cpda: 0, dgst: 1, maxh2cdata: 4096 }), resp]));
    expect(out.map((p) => p.type)).toEqual([PduType.IC_RESP]);
    r.setDigests(true, false);
    expect(r.push(Buffer.alloc(0)).map((p) => p.type)).toEqual([PduType.CAPSULE_RESP]);
  });

  it('host role refuses host-to-controller PDUs and accepts R2T', () => {
    const r = new PduReader({ role: 'host', maxDataPdu: 4096 });
    r.push(encodeIcResp({ pfv: 0, cpda: 0, dgst: 0, maxh2cdata: 4096 }));
    r.setDigests(false, false);
    expect(r.push(encodeR2t({ cccid: 1, ttag: 2, r2to: 0, r2tl: 10 }, { hdgst: false, ddgst: false }))[0]!.type).toBe(PduType.R2T);
    expect(() => r.push(cat(encodeCapsuleCmd(encodeSqe({ opcode: 0x18, cid: 1 }), null, { hdgst: false, ddgst: false })))).toThrow(PduError);
  });

  it('assembles data in a sink buffer with a single copy', () => {
    const dest = Buffer.alloc(3000);
    const r = new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096, sink: (_h, t, n) => (t === PduType.H2C_DATA && n === 3000 ? dest : null) });
    r.push(encodeIcReq({ pfv: 0, hpda: 0, dgst: 0, maxr2t: 0 }));
    r.setDigests(false, false);
    const pdu = cat(encodeDataPdu(PduType.H2C_DATA, { cccid: 1, ttag: 1, datao: 0 }, Buffer.alloc(3000, 0x42), PduFlag.LAST_PDU, { hdgst: false, ddgst: false }));
    const out = [...r.push(pdu.subarray(0, 100)), ...r.push(pdu.subarray(100))];
    expect(out[0]!.placed).toBe(true);
    expect(out[0]!.data!.buffer).toBe(dest.buffer);
    expect(out[0]!.data!.byteOffset).toBe(dest.byteOffset);
    expect(dest.equals(Buffer.alloc(3000, 0x42))).toBe(true);
  });

  it('never throws anything but PduError on random input, and stays bounded', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), fc.boolean(), (bytes, afterIc) => {
        const r = afterIc ? target() : new PduReader({ role: 'target', maxCapsuleData: 8192, maxDataPdu: 4096 });
        try {
          for (const p of r.push(Buffer.from(bytes))) {
            expect(p.plen).toBeLessThanOrEqual(72 + 4 + 8192 + 4);
          }
        } catch (err) {
          expect(err).toBeInstanceOf(PduError);
        }
      }),
      { numRuns: 500 },
    );
  });
});
