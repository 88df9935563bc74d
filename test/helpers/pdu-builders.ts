/**
 * Test helpers for NVMe/TCP: PDUs built from readable arguments, and a raw
 * client that speaks PDUs over a real socket so tests can misbehave on
 * purpose (wrong lengths, truncation, missing ICReq, ...).
 */
import * as net from 'node:net';
import { Digests, PduType, encodeCapsuleCmd, encodeDataPdu, encodeIcReq } from '../../common/nvme-tcp/pdu';
import { Pdu, PduReader } from '../../common/nvme-tcp/pdu-reader';
import { FABRICS_OPCODE, FabricsType, SqeFields, encodeConnectData, encodeSqe } from '../../common/nvme-tcp/sqe';

export const HOSTNQN = 'nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001';
export const HOSTID = Buffer.from('00000000000040008000000000000001', 'hex');
export const NO_DIGESTS: Digests = { hdgst: false, ddgst: false };

export function icReq(opts: { hdgst?: boolean; ddgst?: boolean; pfv?: number; hpda?: number } = {}): Buffer {
  const dgst = (opts.hdgst ? 1 : 0) | (opts.ddgst ? 2 : 0);
  return encodeIcReq({ pfv: opts.pfv ?? 0, hpda: opts.hpda ?? 0, dgst, maxr2t: 0 });
}

export function capsule(fields: SqeFields, data: Buffer | null = null, dg: Digests = NO_DIGESTS): Buffer {
  const inCapsule = data !== null && fields.inCapsule !== false;
  const sqe = encodeSqe({ ...fields, dataLength: fields.dataLength ?? data?.length ?? 0, inCapsule });
  return Buffer.concat(encodeCapsuleCmd(sqe, inCapsule ? data : null, dg));
}

export interface ConnectArgs {
  cid?: number;
  qid?: number;
  sqsize?: number;
  kato?: number;
  cntlid?: number;
  subnqn: string;
  hostnqn?: string;
}

export function connectCmd(a: ConnectArgs, dg: Digests = NO_DIGESTS): Buffer {
  const data = encodeConnectData({ hostid: HOSTID, cntlid: a.cntlid ?? 0xffff, subnqn: a.subnqn, hostnqn: a.hostnqn ?? HOSTNQN });
  const qid = a.qid ?? 0;
  return capsule(
    { opcode: FABRICS_OPCODE, fctype: FabricsType.CONNECT, cid: a.cid ?? 1, cdw10: qid << 16, cdw11: a.sqsize ?? (qid === 0 ? 31 : 127), cdw12: a.kato ?? 0 },
    data,
    dg,
  );
}

export function propertySetCmd(cid: number, offset: number, value: number, dg: Digests = NO_DIGESTS): Buffer {
  return capsule({ opcode: FABRICS_OPCODE, fctype: FabricsType.PROPERTY_SET, cid, cdw11: offset, cdw12: value }, null, dg);
}

export function h2cData(f: { cccid: number; ttag: number; datao: number }, data: Buffer, last = true, dg: Digests = NO_DIGESTS): Buffer {
  return Buffer.concat(encodeDataPdu(PduType.H2C_DATA, f, data, last ? 0x04 : 0, dg));
}

export function hex(buf: Buffer): string {
  return buf.toString('hex').replace(/(.{32})/g, '$1\n').trim();
}

export function fromHex(text: string): Buffer {
  return Buffer.from(text.replace(/#.*$/gm, '').replace(/\s+/g, ''), 'hex');
}

/** A socket that collects the target's PDUs; misbehaves only when told to. */
export class RawClient {
  readonly pdus: Pdu[] = [];
  closed = false;
  private readonly reader = new PduReader({ role: 'host', maxDataPdu: 4 * 1024 * 1024 });
  private waiters: Array<() => void> = [];

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      try {
        for (const p of this.reader.push(chunk)) {
          this.pdus.push(p);
          if (p.type === PduType.IC_RESP) this.reader.setDigests(this.digests.hdgst, this.digests.ddgst);
        }
      } catch {
        socket.destroy();
      }
      this.wake();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  digests: Digests = NO_DIGESTS;

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port, noDelay: true }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  private wake(): void {
    for (const w of this.waiters.splice(0)) w();
  }

  send(buf: Buffer): void {
    this.socket.write(buf);
  }

  /** Waits until a PDU matching `pred` arrived (and returns it) or the socket closed (returns null). */
  async waitFor(pred: (p: Pdu) => boolean, timeoutMs = 5000): Promise<Pdu | null> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.pdus.find(pred);
      if (hit) return hit;
      if (this.closed) return null;
      if (Date.now() > deadline) throw new Error('timed out waiting for a PDU');
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('timed out waiting for the target to close the connection');
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.max(1, deadline - Date.now()));
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Sends ICReq and waits for ICResp. */
  async handshake(dg: Digests = NO_DIGESTS): Promise<Pdu> {
    this.digests = dg;
    this.send(icReq(dg));
    const p = await this.waitFor((x) => x.type === PduType.IC_RESP);
    if (!p) throw new Error('no ICResp');
    return p;
  }

  /** CapsuleResp for a CID, as { status, dw0 }. */
  async response(cid: number, timeoutMs = 5000): Promise<{ status: number; dw0: number } | null> {
    const p = await this.waitFor((x) => x.type === PduType.CAPSULE_RESP && x.header.readUInt16LE(20) === cid, timeoutMs);
    return p ? { status: p.header.readUInt16LE(22), dw0: p.header.readUInt32LE(8) } : null;
  }

  termReq(): Pdu | undefined {
    return this.pdus.find((p) => p.type === PduType.C2H_TERM_REQ);
  }

  destroy(): void {
    this.socket.destroy();
  }
}
