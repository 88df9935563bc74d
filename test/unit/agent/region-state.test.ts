import { DirtyBitmap } from '../../../agent/dirty-bitmap';
import { RegionState } from '../../../agent/region-state';

function make(regions = 16): RegionState {
  return new RegionState(new DirtyBitmap(4096, 4096 * regions));
}

describe('RegionState', () => {
  test('a queued write is cleared by the ack of its epoch, not earlier', () => {
    const s = make();
    s.beginWrite(2, 4);
    expect(s.bitmap.countSet()).toBe(2);
    s.completeWrite(2, 4, 7);
    s.onAck(6);
    expect(s.bitmap.countSet()).toBe(2);
    s.onAck(7);
    expect(s.bitmap.countSet()).toBe(0);
  });

  test('a region rewritten in a later epoch stays until that epoch is acked', () => {
    const s = make();
    s.beginWrite(1, 2);
    s.completeWrite(1, 2, 1);
    s.beginWrite(1, 2);
    s.completeWrite(1, 2, 3);
    s.onAck(2);
    expect(s.bitmap.isSet(1)).toBe(true);
    s.onAck(3);
    expect(s.bitmap.isSet(1)).toBe(false);
  });

  test('a write still in flight keeps the bit through an ack', () => {
    const s = make();
    s.beginWrite(1, 2);
    s.completeWrite(1, 2, 1);
    s.beginWrite(1, 2); // second write in flight
    s.onAck(1);
    expect(s.bitmap.isSet(1)).toBe(true);
    s.completeWrite(1, 2, 2);
    s.onAck(2);
    expect(s.bitmap.isSet(1)).toBe(false);
  });

  test('dropped payloads, failures and disconnects go to resend and survive acks', () => {
    const s = make();
    s.beginWrite(0, 1);
    s.completeWrite(0, 1, null); // dropped (ahead)
    s.beginWrite(1, 2);
    s.failWrite(1, 2);
    s.beginWrite(2, 3);
    s.completeWrite(2, 3, 5);
    s.onDisconnect();
    s.onAck(100);
    expect(s.resendRuns()).toEqual([{ start: 0, count: 3 }]);
    expect(s.bitmap.countSet()).toBe(3);
    // a later live write to a resend region does not make it clean
    s.beginWrite(0, 1);
    s.completeWrite(0, 1, 101);
    s.onAck(101);
    expect(s.bitmap.isSet(0)).toBe(true);
  });

  test('bits present at construction (recovered) must be resent', () => {
    const bm = new DirtyBitmap(4096, 4096 * 8);
    bm.setRange(3, 5);
    const s = new RegionState(bm);
    expect(s.resendRuns()).toEqual([{ start: 3, count: 2 }]);
    s.resyncQueued(3, 5, 9);
    expect(s.resendBytes).toBe(0);
    s.onAck(9);
    expect(bm.countSet()).toBe(0);
  });

  test('resync lock waits for writes in flight and blocks new ones', async () => {
    const s = make();
    s.beginWrite(4, 6);
    let locked = false;
    const lock = s.lockForResync(5, 8).then(() => (locked = true));
    await Promise.resolve();
    expect(locked).toBe(false);
    expect(s.waitUnlocked(7, 9)).not.toBeNull();
    expect(s.waitUnlocked(0, 5)).toBeNull();
    s.completeWrite(4, 6, 1);
    await lock;
    expect(locked).toBe(true);
    const waiter = s.waitUnlocked(6, 7)!;
    let released = false;
    void waiter.then(() => (released = true));
    s.unlock();
    await waiter;
    expect(released).toBe(true);
    expect(s.waitUnlocked(6, 7)).toBeNull();
  });
});
