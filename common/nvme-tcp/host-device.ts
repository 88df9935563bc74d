/**
 * NvmeTcpBlockDevice: a BlockDevice over one namespace of an NvmeTcpHost, so
 * remote NVMe/TCP namespaces plug into everything that takes a BlockDevice.
 * Geometry is read once at open (Identify Namespace + ONCS). The host
 * connection belongs to the caller: close() only stops this adapter.
 */
import { BlockDevice, DeviceInfo, WriteOptions, checkRange } from '../block/device';
import { ReplError } from '../errors';
import type { NvmeTcpHost } from './initiator';

export class NvmeTcpBlockDevice implements BlockDevice {
  private closed = false;

  private constructor(
    private readonly host: NvmeTcpHost,
    readonly nsid: number,
    readonly info: DeviceInfo,
  ) {}

  static async open(host: NvmeTcpHost, nsid: number): Promise<NvmeTcpBlockDevice> {
    const ns = await host.identifyNamespace(nsid);
    if (ns.ncap === 0n) throw new ReplError('E_NOT_FOUND', `namespace ${nsid} is not active`);
    const size = Number(ns.nsze) * ns.lbaSize;
    if (!Number.isSafeInteger(size)) throw ReplError.invalid(`namespace ${nsid} is too large`);
    const oncs = host.controller.oncs;
    const info: DeviceInfo = {
      size,
      blockSize: ns.lbaSize,
      readOnly: ns.readOnly,
      canTrim: !ns.readOnly && (oncs & 0x04) !== 0,
      canWriteZeroes: !ns.readOnly && (oncs & 0x08) !== 0,
      trimReadsZeroes: (ns.dlfeat & 0x7) === 1,
    };
    return new NvmeTcpBlockDevice(host, nsid, info);
  }

  private check(offset: number, length: number, mutating: boolean): void {
    if (this.closed) throw ReplError.closed('NVMe/TCP device');
    if (mutating && this.info.readOnly) throw ReplError.readOnly('NVMe/TCP namespace');
    checkRange(this.info, offset, length);
  }

  async read(offset: number, length: number): Promise<Buffer> {
    this.check(offset, length, false);
    if (length === 0) return Buffer.alloc(0);
    return this.host.read(this.nsid, offset, length);
  }

  async write(offset: number, data: Buffer, options?: WriteOptions): Promise<void> {
    this.check(offset, data.length, true);
    if (data.length === 0) return;
    await this.host.write(this.nsid, offset, data, options);
  }

  async writeZeroes(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    if (length === 0) return;
    await this.host.writeZeroes(this.nsid, offset, length, options);
  }

  async trim(offset: number, length: number, options?: WriteOptions): Promise<void> {
    this.check(offset, length, true);
    if (length === 0) return;
    if (this.info.canTrim) await this.host.deallocate(this.nsid, offset, length);
    if (options?.fua) await this.host.flush(this.nsid);
  }

  async flush(): Promise<void> {
    if (this.closed) throw ReplError.closed('NVMe/TCP device');
    await this.host.flush(this.nsid);
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}
