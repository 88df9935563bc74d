import * as fs from 'node:fs';
import * as path from 'node:path';
import fc from 'fast-check';
import { silentLogger } from '../../../common/log';
import { AppendInput, Journal, JournalEntry, ordinalOf, POSITION_SCALE } from '../../../hub/journal';
import { LocalJournalStorage } from '../../../hub/journal-storage';
import { SEGMENT_HEADER_BYTES } from '../../../hub/journal-record';
import { makeTmpDir, removeTmpDir, useTmpDir } from '../../helpers/tmpdir';

const tmp = useTmpDir('hub-journal-');
const SEG = 64 * 1024;
const opts = { segmentBytes: SEG, maxRecordBytes: 8192, owner: 'test', logger: silentLogger };

function rec(seq: number, size: number, epoch = 1): AppendInput {
  const data = Buffer.alloc(size, seq & 0xff);
  return {
    type: size > 0 ? 'data' : 'zeroes',
    resync: false,
    full: false,
    sealReason: 'timer',
    seq,
    epoch,
    offset: seq * 512,
    length: size > 0 ? size : 4096,
    timeMs: 1000 + seq,
    data: size > 0 ? data : undefined,
  };
}

/** Every case runs with O_DIRECT appends (the default) and with page-cache appends. */
describe.each([
  ['O_DIRECT', true],
  ['buffered', false],
])('Journal (%s appends)', (_mode, directIo) => {
  async function openJournal(dir: string, o = opts): Promise<{ journal: Journal; replayed: JournalEntry[] }> {
    const replayed: JournalEntry[] = [];
    const journal = await Journal.open(new LocalJournalStorage(dir, { directIo }), o, (e) => replayed.push(e));
    return { journal, replayed };
  }

  it('group-commits: one fdatasync covers every record appended meanwhile', async () => {
    const { journal } = await openJournal(tmp.path);
    const n = 200;
    const promises = Array.from({ length: n }, (_, i) => journal.append(rec(i + 1, 100)));
    const entries = await Promise.all(promises);
    expect(journal.stats.records).toBe(n);
    expect(journal.stats.fsyncs).toBeLessThan(10);
    for (let i = 1; i < n; i++) expect(entries[i]!.position).toBeGreaterThan(entries[i - 1]!.position);
    expect(journal.durableSeq).toBe(n);
    // the appends took the path this suite names (the test directory's file system allows O_DIRECT)
    const files = [...(journal as unknown as { files: Map<number, { directStats: { direct: number } }> }).files.values()];
    const direct = files.reduce((sum, f) => sum + f.directStats.direct, 0);
    if (directIo) expect(direct).toBeGreaterThan(0);
    else expect(direct).toBe(0);
    await journal.close();
    const again = await openJournal(tmp.path);
    expect(again.replayed.map((e) => e.header.seq)).toEqual(entries.map((e) => e.header.seq));
    expect(again.replayed.map((e) => e.position)).toEqual(entries.map((e) => e.position));
    expect(again.journal.durableSeq).toBe(n);
    await again.journal.close();
  });

  it('rolls over preallocated segments without growing them and replays across them', async () => {
    const { journal } = await openJournal(tmp.path);
    const entries: JournalEntry[] = [];
    for (let i = 1; i <= 60; i++) entries.push(await journal.append(rec(i, 4000)));
    const seals = await journal.append({ ...rec(61, 0), type: 'seal', length: 0, epoch: 9 });
    expect(new Set(entries.map((e) => ordinalOf(e.position))).size).toBeGreaterThan(3);
    const data = await journal.readData(entries[10]!, 0, 4000);
    expect(data.equals(Buffer.alloc(4000, 11))).toBe(true);
    await journal.close();
    for (const f of fs.readdirSync(tmp.path).filter((n) => n.endsWith('.rjl'))) {
      expect(fs.statSync(path.join(tmp.path, f)).size).toBe(SEG);
    }
    const again = await openJournal(tmp.path);
    expect(again.replayed.length).toBe(61);
    expect(again.replayed[60]!.position).toBe(seals.position);
    expect(again.journal.durableEpoch).toBe(9);
    await again.journal.close();
  });

  it('recovers the longest valid prefix after corruption or truncation at a random byte', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 3000 }), { minLength: 1, maxLength: 12 }),
        fc.nat(),
        fc.boolean(),
        async (sizes, where, truncate) => {
          const dir = makeTmpDir('hub-journal-prop-');
          try {
            const { journal } = await openJournal(dir);
            const entries = await Promise.all(sizes.map((s, i) => journal.append(rec(i + 1, s))));
            await journal.close();
            const last = entries[entries.length - 1]!;
            const end = (last.position % POSITION_SCALE) + 64 + last.header.dataLength;
            const seg = fs.readdirSync(dir).find((n) => n.endsWith('.rjl'))!;
            const file = path.join(dir, seg);
            const at = SEGMENT_HEADER_BYTES + (where % (end - SEGMENT_HEADER_BYTES));
            const fd = fs.openSync(file, 'r+');
            if (truncate) fs.writeSync(fd, Buffer.alloc(end - at), 0, end - at, at);
            else {
              const b = Buffer.alloc(1);
              fs.readSync(fd, b, 0, 1, at);
              b[0] = b[0]! ^ 0x5a;
              fs.writeSync(fd, b, 0, 1, at);
            }
            fs.closeSync(fd);
            const expected = entries.filter((e) => (e.position % POSITION_SCALE) + 64 + e.header.dataLength <= at);
            const again = await openJournal(dir);
            expect(again.replayed.map((e) => e.header.seq)).toEqual(expected.map((e) => e.header.seq));
            // new records after recovery go to a fresh segment; the torn bytes are never read again
            await again.journal.append(rec(100, 10));
            await again.journal.close();
            const third = await openJournal(dir);
            expect(third.replayed.map((e) => e.header.seq)).toEqual([...expected.map((e) => e.header.seq), 100]);
            await third.journal.close();
          } finally {
            removeTmpDir(dir);
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  it('refuses to open when a sealed segment is damaged', async () => {
    const { journal } = await openJournal(tmp.path);
    for (let i = 1; i <= 40; i++) await journal.append(rec(i, 4000));
    await journal.close();
    const manifest = JSON.parse(fs.readFileSync(path.join(tmp.path, 'manifest.json'), 'utf8'));
    const sealed = manifest.segments[0].name as string;
    const fd = fs.openSync(path.join(tmp.path, sealed), 'r+');
    fs.writeSync(fd, Buffer.from([0xff]), 0, 1, SEGMENT_HEADER_BYTES + 100);
    fs.closeSync(fd);
    await expect(openJournal(tmp.path)).rejects.toMatchObject({ code: 'E_IO' });
  });

  it('reclaims applied segments and deletes orphan files', async () => {
    const { journal } = await openJournal(tmp.path);
    const entries: JournalEntry[] = [];
    for (let i = 1; i <= 40; i++) entries.push(await journal.append(rec(i, 4000)));
    const cut = entries[30]!;
    const removed = await journal.reclaim(cut.position, { base: 'x' });
    expect(removed).toBeGreaterThan(0);
    await expect(journal.readData(entries[0]!, 0, 10)).rejects.toMatchObject({ code: 'E_IO' });
    await journal.close();
    fs.writeFileSync(path.join(tmp.path, 'seg-orphan.rjl'), 'x');
    const again = await openJournal(tmp.path);
    expect(fs.existsSync(path.join(tmp.path, 'seg-orphan.rjl'))).toBe(false);
    expect(again.journal.meta).toEqual({ base: 'x' });
    expect(again.replayed[0]!.header.seq).toBeLessThanOrEqual(31);
    expect(again.replayed[again.replayed.length - 1]!.header.seq).toBe(40);
    await again.journal.close();
  });

  it.each(['write', 'sync'] as const)('fails every queued append after a failed %s and refuses later ones (fail-stop)', async (op) => {
    const { journal } = await openJournal(tmp.path);
    await journal.append(rec(1, 10));
    // simulate a dead disk: the segment files' writes (or fdatasyncs) fail
    const files = (journal as unknown as { files: Map<number, Record<typeof op, () => Promise<void>>> }).files;
    for (const f of files.values()) f[op] = () => Promise.reject(Object.assign(new Error('EIO'), { code: 'EIO' }));
    const a = journal.append(rec(2, 10));
    const b = journal.append(rec(3, 10));
    await expect(a).rejects.toMatchObject({ code: 'E_IO' });
    await expect(b).rejects.toMatchObject({ code: 'E_IO' });
    await expect(journal.append(rec(4, 10))).rejects.toMatchObject({ code: 'E_IO' });
    expect(journal.failed).not.toBeNull();
    expect(journal.durableSeq).toBe(1);
    await journal.close();
  });

  it('a crash that tears the next batch at any sectors leaves every acknowledged record intact (fast-check)', async () => {
    // The next append rewrites the partial block holding the end of the acknowledged records (O_DIRECT) or
    // dirties it in the page cache (buffered). A crash may persist any subset of the 512-byte sectors the
    // batch changed; whichever subset, recovery must find every acknowledged record with its data, and
    // from the torn batch only a prefix of whole records.
    const big = { ...opts, segmentBytes: 1024 * 1024 };
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.integer({ min: 0, max: 6000 }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.integer({ min: 0, max: 6000 }), { minLength: 1, maxLength: 12 }),
        fc.array(fc.boolean(), { minLength: 64, maxLength: 64 }),
        async (acked, torn, picks) => {
          const dir = makeTmpDir('journal-torn-');
          try {
            const { journal } = await openJournal(dir, big);
            const sizes = [...acked, ...torn];
            const first = await Promise.all(acked.map((n, i) => journal.append(rec(i + 1, n))));
            const seg = (await fs.promises.readdir(dir)).filter((n) => n.endsWith('.rjl')).sort()[0]!;
            const segPath = path.join(dir, seg);
            const before = fs.readFileSync(segPath);
            await Promise.all(torn.map((n, i) => journal.append(rec(acked.length + i + 1, n))));
            const after = fs.readFileSync(segPath);
            await journal.close();
            // the acknowledged bytes never change, torn or not
            const end = first[first.length - 1]!.dataOffset + acked[acked.length - 1]!;
            expect(after.subarray(0, end).equals(before.subarray(0, end))).toBe(true);
            const image = Buffer.from(before);
            let changed = 0;
            for (let at = 0; at < after.length; at += 512) {
              if (after.subarray(at, at + 512).equals(before.subarray(at, at + 512))) continue;
              if (picks[changed++ % picks.length]) after.copy(image, at, at, at + 512);
            }
            fs.writeFileSync(segPath, image);
            const again = await openJournal(dir, big);
            const seqs = again.replayed.map((e) => e.header.seq);
            expect(seqs).toEqual(sizes.slice(0, seqs.length).map((_, i) => i + 1)); // a prefix, in order
            expect(seqs.length).toBeGreaterThanOrEqual(acked.length);
            for (const e of again.replayed) {
              const n = e.header.dataLength;
              if (n > 0) expect((await again.journal.readData(e, 0, n)).equals(Buffer.alloc(n, e.header.seq & 0xff))).toBe(true);
            }
            await again.journal.close();
          } finally {
            removeTmpDir(dir);
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  it('writes the next batch while a sync runs, but resolves a record only after a sync that started after its write', async () => {
    const { journal } = await openJournal(tmp.path);
    await journal.append(rec(1, 10));
    type File = { write: (b: readonly Buffer[], p: number) => Promise<void>; sync: () => Promise<void> };
    const files = (journal as unknown as { files: Map<number, File> }).files;
    const file = [...files.values()].pop()!;
    const events: string[] = [];
    const releases: (() => void)[] = [];
    const realWrite = file.write.bind(file);
    const realSync = file.sync.bind(file);
    let writes = 0;
    let syncs = 0;
    file.write = async (b, pos) => {
      await realWrite(b, pos); // the journal writes one batch at a time: completions come in order
      events.push(`write${++writes}`);
    };
    file.sync = async () => {
      const n = ++syncs;
      events.push(`sync${n}-start`);
      await realSync();
      await new Promise<void>((r) => releases.push(r)); // held until the test lets it go
      events.push(`sync${n}-end`);
    };
    const a = journal.append(rec(2, 10)).then(() => events.push('a-durable'));
    await waitUntil(() => releases.length === 1); // sync 1 (covering a) is running
    const b = journal.append(rec(3, 10)).then(() => events.push('b-durable'));
    await waitUntil(() => writes === 2); // b's write completed while sync 1 still runs
    expect(events).toEqual(['write1', 'sync1-start', 'write2']);
    expect(journal.durableSeq).toBe(1);
    releases.shift()!();
    await a;
    await waitUntil(() => releases.length === 1);
    expect(events).toEqual(['write1', 'sync1-start', 'write2', 'sync1-end', 'a-durable', 'sync2-start']);
    expect(journal.durableSeq).toBe(2);
    releases.shift()!();
    await b;
    expect(journal.durableSeq).toBe(3);
    expect(events.slice(-2)).toEqual(['sync2-end', 'b-durable']);
    await journal.close();
  });
});

async function waitUntil(cond: () => boolean): Promise<void> {
  for (let i = 0; i < 2500 && !cond(); i++) await new Promise((r) => setTimeout(r, 2)); // ~5 s: a loaded CI box
  if (!cond()) throw new Error('condition not reached');
}
