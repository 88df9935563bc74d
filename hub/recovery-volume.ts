/**
 * RecoveryVolume: a read-only BlockDevice showing a replicated volume as of a
 * recovery point (RecoverPoint's virtual access), served from the base image
 * plus the journal without copying anything.
 *
 * Modes:
 *  - point: fixed at one RecoveryPoint, which stays pinned (the applier never
 *    folds newer records into the base image past it) until close();
 *  - latest: each read resolves against the newest recovery point at the time
 *    of the read (an NBD export that follows replication).
 * Writes are refused with E_READ_ONLY; writable views stack an Overlay
 * (hub/overlay.ts) on top of this device, which never writes to its base.
 */
import { BlockDevice, DeviceInfo, checkRange } from '../common/block/device';
import { ReplError } from '../common/errors';
import { RecoveryPoint, ReplicaStore } from './replica-store';

export type RecoveryMode = { kind: 'point'; point: RecoveryPoint } | { kind: 'latest' };

export class RecoveryVolume implements BlockDevice {
  readonly info: DeviceInfo;
  private readonly unpin: () => void;
  private closed = false;

  private constructor(
    private readonly store: ReplicaStore,
    readonly mode: RecoveryMode,
  ) {
    const meta = store.meta;
    this.info = {
      size: meta.size,
      blockSize: meta.blockSize,
      readOnly: true,
      canTrim: false,
      canWriteZeroes: false,
      trimReadsZeroes: true,
    };
    this.unpin = mode.kind === 'point' ? store.pin(mode.point.position) : () => undefined;
  }

  /** A view fixed at `point` (one of store.points()). */
  static atPoint(store: ReplicaStore, point: RecoveryPoint): RecoveryVolume {
    if (!store.points().some((p) => p.position === point.position)) {
      throw new ReplError('E_RANGE', `recovery point epoch ${point.epoch} of ${store.meta.name} is outside retention`);
    }
    return new RecoveryVolume(store, { kind: 'point', point });
  }

  /** A view that follows the newest recovery point; E_NOT_FOUND before the first one exists. */
  static latest(store: ReplicaStore): RecoveryVolume {
    if (!store.latestPoint()) {
      throw new ReplError('E_NOT_FOUND', `volume ${store.meta.name} has no recovery point yet (initial sync running)`);
    }
    return new RecoveryVolume(store, { kind: 'latest' });
  }

  /** The point reads currently resolve against. */
  get point(): RecoveryPoint {
    if (this.mode.kind === 'point') return this.mode.point;
    const latest = this.store.latestPoint();
    if (!latest) throw ReplError.internal('latest view without a recovery point');
    return latest;
  }

  async read(offset: number, length: number): Promise<Buffer> {
    if (this.closed) throw ReplError.closed(`recovery view of ${this.store.meta.name}`);
    checkRange(this.info, offset, length);
    if (length === 0) return Buffer.alloc(0);
    return this.store.read(this.point.position, offset, length);
  }

  async write(_offset: number, _data: Buffer): Promise<void> {
    throw ReplError.readOnly(`recovery view of ${this.store.meta.name}`);
  }

  async writeZeroes(_offset: number, _length: number): Promise<void> {
    throw ReplError.readOnly(`recovery view of ${this.store.meta.name}`);
  }

  async trim(_offset: number, _length: number): Promise<void> {
    throw ReplError.readOnly(`recovery view of ${this.store.meta.name}`);
  }

  async flush(): Promise<void> {
    if (this.closed) throw ReplError.closed(`recovery view of ${this.store.meta.name}`);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.unpin();
  }
}
