/**
 * Minimal cpio "newc" writer for the per-boot initramfs overlay (pure: entries
 * in, Buffer out). The kernel unpacks concatenated archives in order, so the
 * overlay is appended to the cached base image; parent directories are
 * emitted before their files because the kernel's unpacker does not create
 * them on its own.
 */
export interface CpioEntry {
  /** Absolute guest path, e.g. "/etc/rep/lib.sh". */
  path: string;
  data: Buffer;
  /** Permission bits, default 0o644. */
  mode?: number;
}

const S_IFREG = 0o100000;
const S_IFDIR = 0o040000;

function header(ino: number, mode: number, size: number, name: string): Buffer {
  const fields = [ino, mode, 0, 0, 1, 0, size, 0, 0, 0, 0, Buffer.byteLength(name) + 1, 0];
  const text = '070701' + fields.map((v) => v.toString(16).padStart(8, '0')).join('');
  return Buffer.from(text, 'ascii');
}

function pad4(length: number): Buffer {
  return Buffer.alloc((4 - (length % 4)) % 4);
}

function record(ino: number, mode: number, name: string, data: Buffer): Buffer[] {
  const head = header(ino, mode, data.length, name);
  const nameBuf = Buffer.from(name + '\0', 'utf8');
  return [head, nameBuf, pad4(head.length + nameBuf.length), data, pad4(data.length)];
}

export function buildCpio(entries: readonly CpioEntry[]): Buffer {
  const parts: Buffer[] = [];
  const dirs = new Set<string>();
  let ino = 1;
  for (const entry of entries) {
    if (!entry.path.startsWith('/') || entry.path.endsWith('/') || entry.path.includes('//')) {
      throw new Error(`cpio: bad guest path ${JSON.stringify(entry.path)}`);
    }
    const segments = entry.path.slice(1).split('/');
    if (segments.some((s) => s === '.' || s === '..')) throw new Error(`cpio: bad guest path ${entry.path}`);
    for (let i = 1; i < segments.length; i++) {
      const dir = segments.slice(0, i).join('/');
      if (dirs.has(dir)) continue;
      dirs.add(dir);
      parts.push(...record(ino++, S_IFDIR | 0o755, dir, Buffer.alloc(0)));
    }
    parts.push(...record(ino++, S_IFREG | (entry.mode ?? 0o644), segments.join('/'), entry.data));
  }
  parts.push(...record(ino, 0, 'TRAILER!!!', Buffer.alloc(0)));
  return Buffer.concat(parts);
}
