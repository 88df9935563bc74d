/**
 * Subsystem: one exported NQN with its namespaces and the controllers
 * (associations) currently connected to it. Controller ids are allocated here
 * (1..0xFFEF, unique within the subsystem, not reused until the id space
 * wraps). The discovery subsystem is a Subsystem without namespaces.
 */
import type { BlockDevice } from '../block/device';
import { ReplError } from '../errors';
import type { Controller } from './controller';
import { DISCOVERY_NQN, uuidToBytes } from './identify';

export interface NamespaceState {
  nsid: number;
  device: BlockDevice;
  nguid: Buffer;
  uuid: Buffer;
  blockSize: number;
  /** Size in logical blocks. */
  blocks: number;
  readOnly: boolean;
}

export interface SubsystemIdentity {
  nqn: string;
  serial: string;
  model: string;
  firmware: string;
  readOnly: boolean;
}

const MAX_CNTLID = 0xffef;

export class Subsystem {
  readonly namespaces = new Map<number, NamespaceState>();
  readonly controllers = new Map<number, Controller>();
  /** Last CNTLID handed out. */
  private lastCntlid = 0;
  /** Set once removeSubsystem() started; no new Connect is accepted. */
  removed = false;

  constructor(
    readonly identity: SubsystemIdentity,
    readonly discovery: boolean,
  ) {}

  static discoveryService(): Subsystem {
    return new Subsystem(
      { nqn: DISCOVERY_NQN, serial: 'discovery', model: 'blockrep discovery', firmware: '0.1', readOnly: true },
      true,
    );
  }

  addNamespace(nsid: number, device: BlockDevice, nguid: Buffer, uuid: string): void {
    if (!Number.isInteger(nsid) || nsid < 1 || nsid >= 0xfffffff0) throw ReplError.invalid(`invalid nsid ${nsid}`);
    if (this.namespaces.has(nsid)) throw ReplError.invalid(`duplicate nsid ${nsid} in ${this.identity.nqn}`);
    if (nguid.length !== 16) throw ReplError.invalid(`nguid of nsid ${nsid} must be 16 bytes`);
    const { size, blockSize } = device.info;
    if (![512, 1024, 2048, 4096].includes(blockSize) || size % blockSize !== 0 || size <= 0) {
      throw ReplError.invalid(`namespace ${nsid}: unsupported geometry size=${size} blockSize=${blockSize}`);
    }
    this.namespaces.set(nsid, {
      nsid,
      device,
      nguid: Buffer.from(nguid),
      uuid: uuidToBytes(uuid),
      blockSize,
      blocks: size / blockSize,
      readOnly: this.identity.readOnly || device.info.readOnly,
    });
  }

  /** Highest namespace id (Identify NN). */
  get nn(): number {
    let max = 0;
    for (const n of this.namespaces.keys()) max = Math.max(max, n);
    return max;
  }

  allocateCntlid(): number | null {
    for (let i = 0; i < MAX_CNTLID; i++) {
      this.lastCntlid = (this.lastCntlid % MAX_CNTLID) + 1;
      if (!this.controllers.has(this.lastCntlid)) return this.lastCntlid;
    }
    return null;
  }
}
