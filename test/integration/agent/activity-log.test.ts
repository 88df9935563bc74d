import * as fs from 'node:fs';
import * as path from 'node:path';
import { ACTIVITY_LOG_FILE, ActivityLog, decodeLogHeader, READ_AHEAD_EXTENTS } from '../../../agent/activity-log';
import { BITMAP_FILE, decodeBitmapFile, encodeBitmapFile } from '../../../agent/bitmap-store';
import { DirtyBitmap } from '../../../agent/dirty-bitmap';
import { silentLogger } from '../../../common/log';
import { useTmpDir } from '../../helpers/tmpdir';

const MiB = 1024 * 1024;
const REGION = 64 * 1024;
const EXTENT = MiB;
const SIZE = 64 * MiB;

describe('ActivityLog on disk', () => {
  const tmp = useTmpDir('actlog-');
  const open = (hotExtents = 8) =>
    ActivityLog.open({ dir: tmp.path, regionSize: REGION, deviceSize: SIZE, extentSize: EXTENT, hotExtents, slots: 8, generation: () => 3, logger: silentLogger });

  /** What the filter does: set bits, then ensure hot. */
  async function write(log: ActivityLog, offset: number, length: number): Promise<void> {
    const r = log.bitmap.regionsOf(offset, length);
    log.bitmap.setRange(r.start, r.end);
    await log.ensureHot(offset, length);
  }

  test('fresh open creates a preallocated log; hot extents cost no I/O', async () => {
    const { log, recovery } = await open();
    expect(recovery).toMatchObject({ created: true, clean: true, hotExtents: [] });
    const st = fs.statSync(path.join(tmp.path, ACTIVITY_LOG_FILE));
    const g = decodeLogHeader(fs.readFileSync(path.join(tmp.path, ACTIVITY_LOG_FILE)))!;
    expect(st.size).toBe(4096 + g.slotCount * g.recordSize);
    const p = log.ensureHot(0, 4096);
    expect(p).not.toBeNull();
    await p;
    expect(log.ensureHot(4096, 8192)).toBeNull();
    await log.close();
    expect(fs.statSync(path.join(tmp.path, ACTIVITY_LOG_FILE)).size).toBe(st.size);
  });

  test('group commit: concurrent writers to cold extents share one record', async () => {
    const { log } = await open(16);
    const before = log.stats.records;
    // not adjacent, so no sequential read-ahead joins in
    await Promise.all([0, 2, 4, 6, 8].map((x) => write(log, x * EXTENT + 512, 4096)));
    expect(log.stats.records - before).toBe(1);
    expect(log.hotExtents().sort((a, b) => a - b)).toEqual([0, 2, 4, 6, 8]);
    await log.close();
  });

  test('sequential read-ahead: a stream crossing extents pays one commit per READ_AHEAD_EXTENTS', async () => {
    const { log } = await open(64);
    const before = log.stats.records;
    // a sequential writer over 40 extents, 4 writes per extent, one at a time
    for (let x = 0; x < 40; x++) for (let k = 0; k < 4; k++) await write(log, x * EXTENT + k * (EXTENT / 4), EXTENT / 4);
    const commits = log.stats.records - before;
    // the first extent has no hot predecessor; then one commit per READ_AHEAD_EXTENTS
    expect(commits).toBeLessThanOrEqual(1 + Math.ceil(39 / READ_AHEAD_EXTENTS));
    expect(commits).toBeGreaterThan(1);
    const hot = new Set(log.hotExtents());
    for (let x = 0; x < 40; x++) expect(hot.has(x)).toBe(true);
    await log.close();
  });

  test('read-ahead never evicts and never passes the end of the device', async () => {
    const { log } = await open(10);
    for (let x = 0; x < 10; x++) await write(log, x * EXTENT, 4096);
    expect(log.hotCount).toBeLessThanOrEqual(10);
    expect(log.stats.evictions).toBe(0);
    const { log: tail } = await (async () => {
      await log.close();
      return open(64);
    })();
    const last = SIZE / EXTENT - 1;
    await write(tail, (last - 1) * EXTENT, 4096);
    await write(tail, last * EXTENT, 4096);
    expect(Math.max(...tail.hotExtents())).toBe(last);
    await tail.close();
  });

  test('unclean stop: reopen marks every region of every hot extent dirty', async () => {
    const { log } = await open();
    await write(log, 0, 4096); // extent 0
    await write(log, 5 * EXTENT + 3 * REGION, 100); // extent 5
    log.bitmap.clearRange(0, log.bitmap.regionCount); // pretend the hub acked everything
    log.abandon(); // kill -9: no clean close
    const { log: again, recovery } = await open();
    expect(recovery.clean).toBe(false);
    expect(recovery.hotExtents.sort()).toEqual([0, 5]);
    const per = EXTENT / REGION;
    expect([...again.bitmap.extents()]).toEqual([
      { start: 0, count: per },
      { start: 5 * per, count: per },
    ]);
    // the recovered set was persisted at open: a second crash keeps it
    again.abandon();
    const { log: third } = await open();
    expect(third.bitmap.countSet()).toBe(2 * per);
    await third.close();
  });

  test('clean close: reopen has exactly the persisted bits', async () => {
    const { log } = await open();
    await write(log, 2 * EXTENT, REGION * 2);
    await log.close();
    const { log: again, recovery } = await open();
    expect(recovery.clean).toBe(true);
    expect([...again.bitmap.extents()]).toEqual([{ start: (2 * EXTENT) / REGION, count: 2 }]);
    await again.close();
  });

  test('evicting dirty extents persists the bitmap first; a crash loses nothing', async () => {
    const { log } = await open(4);
    for (let x = 0; x < 10; x++) await write(log, x * EXTENT + REGION, 10);
    expect(log.hotCount).toBeLessThanOrEqual(4);
    expect(log.stats.bitmapSaves).toBeGreaterThan(0);
    const saved = decodeBitmapFile(fs.readFileSync(path.join(tmp.path, BITMAP_FILE))).header.counter;
    expect(saved).toBeGreaterThan(0);
    log.abandon();
    const { log: again } = await open(4);
    for (let x = 0; x < 10; x++) expect(again.bitmap.isSet((x * EXTENT + REGION) / REGION)).toBe(true);
    await again.close();
  });

  test('evicting clean extents needs no bitmap save', async () => {
    const { log } = await open(4);
    const saves = log.stats.bitmapSaves;
    for (let x = 0; x < 10; x++) {
      await write(log, x * EXTENT, 10);
      log.bitmap.clearRange(0, log.bitmap.regionCount); // acked before the next one
    }
    expect(log.stats.bitmapSaves).toBe(saves);
    expect(log.stats.evictions).toBeGreaterThan(0);
    await log.close();
  });

  test('corrupt bitmap file or missing log next to a bitmap: everything dirty', async () => {
    const { log } = await open();
    await log.close();
    const bmFile = path.join(tmp.path, BITMAP_FILE);
    const buf = fs.readFileSync(bmFile);
    buf[buf.length - 1] = buf[buf.length - 1]! ^ 0xff;
    fs.writeFileSync(bmFile, buf);
    const { log: a, recovery } = await open();
    expect(recovery.bitmapStatus).toBe('corrupt');
    expect(a.bitmap.countSet()).toBe(a.bitmap.regionCount);
    await a.close();
    fs.rmSync(path.join(tmp.path, ACTIVITY_LOG_FILE));
    fs.writeFileSync(bmFile, encodeBitmapFile(new DirtyBitmap(REGION, SIZE), 3, 99));
    const { log: b } = await open();
    expect(b.bitmap.countSet()).toBe(b.bitmap.regionCount);
    await b.close();
  });
});
