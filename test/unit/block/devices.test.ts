import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { FileDevice } from '../../../common/block/file-device';
import { MemoryDevice } from '../../../common/block/memory-device';
import { BlockDevice } from '../../../common/block/device';
import { WriteOrder } from '../../../common/block/write-order';

function pattern(len: number, seed: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) b[i] = (i * 31 + seed) & 0xff;
  return b;
}

async function exercise(dev: BlockDevice): Promise<void> {
  const a = pattern(8192, 1);
  await dev.write(4096, a);
  expect((await dev.read(4096, 8192)).equals(a)).toBe(true);
  await dev.writeZeroes(6144, 1024);
  const z = await dev.read(6144, 1024);
  expect(z.equals(Buffer.alloc(1024))).toBe(true);
  await dev.trim(4096, 512);
  expect((await dev.read(4096, 512)).equals(Buffer.alloc(512))).toBe(true);
  expect((await dev.read(4608, 512)).equals(a.subarray(512, 1024))).toBe(true);
  await dev.flush();
  await expect(dev.read(dev.info.size - 512, 1024)).rejects.toMatchObject({ code: 'E_RANGE' });
  await expect(dev.write(-1, a)).rejects.toMatchObject({ code: 'E_RANGE' });
}

describe('block devices', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blk-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('MemoryDevice read/write/zeroes/trim/range', async () => {
    const dev = new MemoryDevice(1024 * 1024);
    await exercise(dev);
    const ext = await dev.extents(0, 1024 * 1024);
    expect(ext[0]).toMatchObject({ offset: 0, hole: false });
    expect(ext[1]).toMatchObject({ offset: 65536, hole: true });
  });

  test('FileDevice creates a sparse file and keeps data across reopen', async () => {
    const file = path.join(dir, 'vol.img');
    const dev = await FileDevice.open(file, { createSize: 1024 * 1024 });
    expect(dev.info.size).toBe(1024 * 1024);
    expect(fs.statSync(file).blocks * 512).toBeLessThan(1024 * 1024);
    await exercise(dev);
    await dev.close();
    const again = await FileDevice.open(file, { createSize: 1024 * 1024 });
    expect((await again.read(5120, 1024)).equals(pattern(8192, 1).subarray(1024, 2048))).toBe(true);
    await again.close();
    await expect(FileDevice.open(file, { createSize: 2 * 1024 * 1024 })).rejects.toMatchObject({ code: 'E_INVALID' });
    await expect(FileDevice.open(path.join(dir, 'missing.img'))).rejects.toMatchObject({ code: 'E_NOT_FOUND' });
  });

  test('FileDevice: overlapping writes complete in submission order', async () => {
    const dev = await FileDevice.open(path.join(dir, 'o.img'), { createSize: 4 * 1024 * 1024 });
    const writes: Promise<void>[] = [];
    for (let i = 0; i < 64; i++) writes.push(dev.write(0, Buffer.alloc(1024 * 1024, i)));
    await Promise.all(writes);
    const got = await dev.read(0, 1024 * 1024);
    expect(got.equals(Buffer.alloc(1024 * 1024, 63))).toBe(true);
    await dev.close();
  });

  test('WriteOrder serialises overlapping and runs disjoint ops concurrently', async () => {
    const order = new WriteOrder();
    const log: string[] = [];
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const p1 = order.run(0, 100, async () => {
      log.push('a-start');
      await gate;
      log.push('a-end');
    });
    const p2 = order.run(50, 100, async () => log.push('b'));
    const p3 = order.run(200, 10, async () => log.push('c'));
    await p3;
    expect(log).toEqual(['a-start', 'c']);
    release();
    await Promise.all([p1, p2]);
    expect(log).toEqual(['a-start', 'c', 'a-end', 'b']);
    expect(order.size).toBe(0);
  });
});
