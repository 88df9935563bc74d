import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { alignedBuffer } from '../../../common/block/direct-reader';
import { AlignedAppender, DIRECT_BLOCK, MAX_STAGING_BYTES, StagingBuffer } from '../../../hub/aligned-appender';
import { useTmpDir } from '../../helpers/tmpdir';

const tmp = useTmpDir('aligned-appender-');
const SIZE = 4 * 1024 * 1024;

interface Opened {
  file: string;
  fd: number;
  direct: number | null;
  close(): void;
}

function openFile(name: string, size = SIZE): Opened {
  const file = path.join(tmp.path, name);
  const fd = fs.openSync(file, 'w+');
  fs.ftruncateSync(fd, size);
  let direct: number | null = null;
  try {
    direct = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_DIRECT);
  } catch {
    direct = null;
  }
  return {
    file,
    fd,
    direct,
    close() {
      if (direct !== null) fs.closeSync(direct);
      fs.closeSync(fd);
    },
  };
}

/** Splits `data` into 1..3 buffers at the given cut points (writev-style input). */
function pieces(data: Buffer, cuts: number[]): Buffer[] {
  const points = [...new Set(cuts.map((c) => c % (data.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const p of points) {
    out.push(data.subarray(from, p));
    from = p;
  }
  out.push(data.subarray(from));
  return out;
}

describe('AlignedAppender', () => {
  test('the file system under test accepts O_DIRECT (otherwise the direct path is not exercised)', () => {
    const f = openFile('probe.img');
    try {
      expect(f.direct).not.toBeNull();
    } finally {
      f.close();
    }
  });

  test('random appends (mostly continuing, some after a gap; rewrites handed back) leave exactly the bytes a plain file would', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            length: fc.oneof(fc.integer({ min: 0, max: 200 }), fc.integer({ min: 1, max: 70_000 })),
            gap: fc.oneof(fc.constant(0), fc.constant(0), fc.constant(0), fc.integer({ min: -5000, max: 9000 })),
            cuts: fc.array(fc.nat(), { maxLength: 2 }),
            fill: fc.integer({ min: 1, max: 255 }),
          }),
          { minLength: 1, maxLength: 25 },
        ),
        async (ops) => {
          const f = openFile('prop.img');
          const model = Buffer.alloc(SIZE);
          const appender = new AlignedAppender(f.direct!, SIZE, new StagingBuffer());
          try {
            let pos = DIRECT_BLOCK + 17;
            let rewrites = 0;
            let end = 0;
            for (const op of ops) {
              pos = Math.max(0, pos + op.gap);
              if (pos + op.length > SIZE - DIRECT_BLOCK) break;
              const rewrite = pos < end && op.length > 0;
              const data = Buffer.alloc(op.length, op.fill);
              if (op.length >= 4) data.writeUInt32LE(pos, 0); // no two appends alike
              const ok = await appender.append(pieces(data, op.cuts), pos);
              if (!ok) {
                fs.writeSync(f.fd, data, 0, data.length, pos);
                appender.wroteElsewhere(pos, data.length);
                rewrites++;
              }
              expect(ok).toBe(!rewrite || op.length === 0);
              data.copy(model, pos);
              pos += op.length;
              end = Math.max(end, pos);
            }
            const onDisk = fs.readFileSync(f.file);
            expect(onDisk.length).toBe(SIZE); // never grows the preallocated file
            expect(onDisk.equals(model)).toBe(true);
            expect(appender.stats.fallback).toBe(rewrites);
          } finally {
            f.close();
            fs.unlinkSync(f.file);
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  test('an append larger than the staging buffer is written in pieces', async () => {
    const size = MAX_STAGING_BYTES * 2 + 4 * DIRECT_BLOCK;
    const f = openFile('big.img', size);
    try {
      const data = Buffer.alloc(MAX_STAGING_BYTES + 12_344);
      for (let i = 0; i < data.length; i += 4) data.writeUInt32LE(i, i);
      const at = DIRECT_BLOCK + 100;
      expect(await new AlignedAppender(f.direct!, size, new StagingBuffer()).append([data.subarray(0, 999), data.subarray(999)], at)).toBe(true);
      const back = Buffer.alloc(data.length + 200);
      fs.readSync(f.fd, back, 0, back.length, at - 100);
      expect(back.subarray(0, 100).equals(Buffer.alloc(100))).toBe(true);
      expect(back.subarray(100, 100 + data.length).equals(data)).toBe(true);
      expect(back.subarray(100 + data.length).equals(Buffer.alloc(100))).toBe(true);
    } finally {
      f.close();
    }
  });

  test('hands the write back (false) when the staging buffer is busy, for a rewrite, or when the padded block would pass the end; rereads a block written elsewhere', async () => {
    const f = openFile('fallback.img', 16 * DIRECT_BLOCK);
    try {
      const staging = new StagingBuffer();
      const a = new AlignedAppender(f.direct!, 16 * DIRECT_BLOCK, staging);
      const one = Buffer.alloc(100, 1);
      expect(await a.append([one], DIRECT_BLOCK)).toBe(true); // caches the partial block [4096, 8192)
      staging.busy = true;
      const two = Buffer.alloc(100, 2);
      expect(await a.append([two], DIRECT_BLOCK + 100)).toBe(false);
      fs.writeSync(f.fd, two, 0, two.length, DIRECT_BLOCK + 100); // the caller writes it buffered
      a.wroteElsewhere(DIRECT_BLOCK + 100, two.length);
      staging.busy = false;
      const three = Buffer.alloc(100, 3);
      // must not rewrite the block from its stale cached copy (which lacks `two`)
      expect(await a.append([three], DIRECT_BLOCK + 200)).toBe(true);
      const back = Buffer.alloc(300);
      fs.readSync(f.fd, back, 0, 300, DIRECT_BLOCK);
      expect(back.equals(Buffer.concat([one, two, three]))).toBe(true);
      expect(await a.append([Buffer.alloc(10)], 16 * DIRECT_BLOCK - 5)).toBe(false);
      expect(await a.append([Buffer.alloc(10)], DIRECT_BLOCK)).toBe(false); // a rewrite
      expect(a.stats).toEqual({ direct: 2, fallback: 3 });
    } finally {
      f.close();
    }
  });

  test('a write the kernel refuses (EINVAL: here, staging memory off alignment) is handed back, and so is every later one', async () => {
    const f = openFile('einval.img', 16 * DIRECT_BLOCK);
    try {
      let skew = 0;
      class Skewed extends StagingBuffer {
        override take(bytes: number): Buffer {
          const b = alignedBuffer(Math.max(bytes, 256 * 1024) + DIRECT_BLOCK);
          return b.subarray(skew, skew + Math.max(bytes, 256 * 1024));
        }
      }
      const a = new AlignedAppender(f.direct!, 16 * DIRECT_BLOCK, new Skewed());
      expect(await a.append([Buffer.alloc(100, 1)], DIRECT_BLOCK)).toBe(true);
      skew = 1;
      expect(await a.append([Buffer.alloc(100, 2)], DIRECT_BLOCK + 100)).toBe(false);
      fs.writeSync(f.fd, Buffer.alloc(100, 2), 0, 100, DIRECT_BLOCK + 100);
      a.wroteElsewhere(DIRECT_BLOCK + 100, 100);
      expect(a.enabled).toBe(false);
      skew = 0;
      expect(await a.append([Buffer.alloc(100, 3)], DIRECT_BLOCK + 200)).toBe(false);
      expect(a.stats).toEqual({ direct: 1, fallback: 2 });
      const back = Buffer.alloc(200);
      fs.readSync(f.fd, back, 0, 200, DIRECT_BLOCK);
      expect(back.equals(Buffer.concat([Buffer.alloc(100, 1), Buffer.alloc(100, 2)]))).toBe(true);
    } finally {
      f.close();
    }
  });
});
