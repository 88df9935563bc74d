import { PduFlag, PduType, R2t, encodeDataPdu } from '../../../common/nvme-tcp/pdu';
import { Pdu, PduReader } from '../../../common/nvme-tcp/pdu-reader';
import { PendingCommand, SolicitedWrites } from '../../../common/nvme-tcp/solicited-writes';
import { decodeSqe, encodeSqe } from '../../../common/nvme-tcp/sqe';

function command(cid: number, length: number): PendingCommand {
  const sqe = decodeSqe(encodeSqe({ opcode: 0x01, cid, nsid: 1, dataLength: length }));
  return { sqe, data: null, dir: 'h2c', received: 0, r2t: null, failStatus: 0, budget: 0 };
}

/** An H2CData PDU as the reader would deliver it. */
function h2c(r: R2t, datao: number, data: Buffer, sink?: SolicitedWrites): Pdu {
  const reader = new PduReader({ role: 'target', maxDataPdu: 1 << 20, sink: sink ? (h, _t, n) => sink.sink(h, n) : undefined });
  reader.push(Buffer.from([0, 0, 128, 0, 128, 0, 0, 0, ...Buffer.alloc(120)]));
  reader.setDigests(false, false);
  return reader.push(Buffer.concat(encodeDataPdu(PduType.H2C_DATA, { cccid: r.cccid, ttag: r.ttag, datao }, data, PduFlag.LAST_PDU, { hdgst: false, ddgst: false })))[0]!;
}

function setup(maxH2CData: number, maxBuffer: number) {
  const r2ts: R2t[] = [];
  const ready: PendingCommand[] = [];
  const w = new SolicitedWrites(maxH2CData, maxBuffer, { sendR2T: (r) => r2ts.push(r), ready: (c) => ready.push(c) });
  return { w, r2ts, ready };
}

describe('SolicitedWrites', () => {
  it('solicits in R2Ts of at most MAXH2CDATA, one at a time, and assembles the data', () => {
    const { w, r2ts, ready } = setup(4096, 1 << 20);
    const cmd = command(7, 10000);
    w.start(cmd);
    expect(r2ts).toEqual([{ cccid: 7, ttag: 0, r2to: 0, r2tl: 4096 }]);
    expect(w.onData(h2c(r2ts[0]!, 0, Buffer.alloc(4096, 1), w))).toBeNull();
    expect(r2ts[1]).toEqual({ cccid: 7, ttag: 1, r2to: 4096, r2tl: 4096 });
    expect(w.onData(h2c(r2ts[1]!, 4096, Buffer.alloc(4096, 2)))).toBeNull();
    expect(r2ts[2]).toMatchObject({ r2to: 8192, r2tl: 1808 });
    expect(w.onData(h2c(r2ts[2]!, 8192, Buffer.alloc(1808, 3), w))).toBeNull();
    expect(ready).toEqual([cmd]);
    expect(cmd.data!.subarray(0, 4096).equals(Buffer.alloc(4096, 1))).toBe(true);
    expect(cmd.data!.subarray(4096, 8192).equals(Buffer.alloc(4096, 2))).toBe(true);
    expect(cmd.data!.subarray(8192).equals(Buffer.alloc(1808, 3))).toBe(true);
  });

  it('rejects unknown tags, wrong CIDs and out-of-window data with the right FES/FEI', () => {
    const { w, r2ts } = setup(4096, 1 << 20);
    w.start(command(1, 8192));
    const r = r2ts[0]!;
    expect(w.onData(h2c({ ...r, ttag: 99 }, 0, Buffer.alloc(16)))).toMatchObject({ fes: 1, fei: 10 });
    expect(w.onData(h2c({ ...r, cccid: 2 }, 0, Buffer.alloc(16)))).toMatchObject({ fes: 1, fei: 8 });
    expect(w.onData(h2c(r, 512, Buffer.alloc(16)))).toMatchObject({ fes: 4, fei: 0 });
    expect(w.onData(h2c(r, 0, Buffer.alloc(4100)))).toMatchObject({ fes: 4, fei: 0 });
  });

  it('bounds buffered data per connection and solicits waiting commands on release', () => {
    const { w, r2ts } = setup(65536, 100_000);
    const a = command(1, 65536);
    const b = command(2, 65536);
    const c = command(3, 16384);
    w.start(a);
    w.start(b);
    w.start(c);
    expect(r2ts.map((r) => r.cccid)).toEqual([1]);
    w.release(a);
    expect(r2ts.map((r) => r.cccid)).toEqual([1, 2, 3]);
  });

  it('marks a command whose data digest failed', () => {
    const { w, r2ts, ready } = setup(4096, 1 << 20);
    const cmd = command(5, 512);
    w.start(cmd);
    const pdu = h2c(r2ts[0]!, 0, Buffer.alloc(512));
    w.onData({ ...pdu, dataDigestOk: false });
    expect(ready[0]!.failStatus).toBe(0x0044);
  });
});
