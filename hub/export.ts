/**
 * Serves volumes' "latest" recovery views over NBD with the shared NbdServer
 * (export name = volume name, read-only). The NbdServer never closes devices;
 * the VolumeRegistry owns them.
 */
import { NbdServer } from '../common/nbd/server';
import { RecoveryVolume } from './recovery-volume';
import { VolumeExporter } from './volumes';

export class NbdExporter implements VolumeExporter {
  constructor(private readonly nbd: NbdServer) {}

  add(name: string, device: RecoveryVolume): void {
    this.nbd.addExport({ name, device, readOnly: true, description: `${name}: newest recovery point (read-only)` });
  }

  remove(name: string): Promise<void> {
    return this.nbd.removeExport(name);
  }
}
