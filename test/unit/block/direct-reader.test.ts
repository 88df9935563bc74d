import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { alignedBuffer, DirectReader } from '../../../common/block/direct-reader';
import { useTmpDir } from '../../helpers/tmpdir';

const MiB = 1024 * 1024;

describe('DirectReader', () => {
  const tmp = useTmpDir('direct-reader-');

  function makeFile(dir: string, size: number): { file: string; content: Buffer } {
    const file = path.join(dir, 'vol.img');
    const content = crypto.randomBytes(size);
    // buffered writes still dirty in the page cache: a direct read must see them
    const fd = fs.openSync(file, 'w');
    fs.writeSync(fd, content, 0, content.length, 0);
    fs.closeSync(fd);
    return { file, content };
  }

  test('alignedBuffer gives page-aligned, writable memory of the asked size', () => {
    const b = alignedBuffer(3 * MiB + 5);
    expect(b.length).toBe(3 * MiB + 5);
    b.fill(7);
    expect(b[b.length - 1]).toBe(7);
  });

  test('reads what buffered writes left in the page cache, direct where the file system allows it', async () => {
    const { file, content } = makeFile(tmp.path, 4 * MiB);
    const r = DirectReader.open(file);
    try {
      const buf = alignedBuffer(MiB);
      for (const offset of [0, MiB, 3 * MiB]) {
        await r.readInto(offset, buf);
        expect(buf.equals(content.subarray(offset, offset + MiB))).toBe(true);
      }
      // an unaligned request still reads correctly (ordinary read)
      const odd = alignedBuffer(8192).subarray(512, 512 + 4096);
      await r.readInto(4096, odd);
      expect(odd.equals(content.subarray(4096, 8192))).toBe(true);
      expect(r.stats.buffered).toBeGreaterThanOrEqual(1);
      if (r.isDirect) expect(r.stats.direct).toBe(3);
    } finally {
      await r.close();
    }
  });

  test('the volume file on a disk file system is read direct (ext4/xfs under os.tmpdir())', async () => {
    const { file } = makeFile(tmp.path, MiB);
    const r = DirectReader.open(file);
    try {
      const fsType = fs.statfsSync(tmp.path).type;
      const TMPFS_MAGIC = 0x01021994;
      if (os.platform() === 'linux' && fsType !== TMPFS_MAGIC) {
        await r.readInto(0, alignedBuffer(MiB));
        expect(r.isDirect).toBe(true);
        expect(r.stats.direct).toBe(1);
      }
    } finally {
      await r.close();
    }
  });

  test('zero-fills past the end of the file and refuses reads after close', async () => {
    const { file, content } = makeFile(tmp.path, 64 * 1024);
    const r = DirectReader.open(file);
    const buf = alignedBuffer(128 * 1024).fill(9);
    await r.readInto(0, buf);
    expect(buf.subarray(0, 64 * 1024).equals(content)).toBe(true);
    expect(buf.subarray(64 * 1024).every((b) => b === 0)).toBe(true);
    await r.close();
    await expect(r.readInto(0, buf)).rejects.toMatchObject({ code: 'E_CLOSED' });
  });

  test('reads correctly on tmpfs too (O_DIRECT there since Linux 6.6, ordinary reads before)', async () => {
    if (!fs.existsSync('/dev/shm')) return;
    const dir = fs.mkdtempSync('/dev/shm/direct-reader-');
    try {
      const { file, content } = makeFile(dir, MiB);
      const r = DirectReader.open(file);
      const buf = alignedBuffer(MiB);
      await r.readInto(0, buf);
      expect(buf.equals(content)).toBe(true);
      expect(r.stats.direct + r.stats.buffered).toBe(1);
      await r.close();
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
