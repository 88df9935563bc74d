import { EventEmitter } from 'node:events';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FailbackClient, FAILBACK_MARKER_FILE, readFailbackMarker } from '../../../agent/failback';
import { DirtyBitmap } from '../../../agent/dirty-bitmap';
import { IdentityStore } from '../../../agent/identity';
import { RegionState } from '../../../agent/region-state';
import { MemoryDevice } from '../../../common/block/memory-device';
import { silentLogger } from '../../../common/log';
import { crc32c } from '../../../common/nvme-tcp/crc32c';
import { AgentMessage, HubFailbackMessage, Welcome } from '../../../proto/codec';
import { useTmpDir } from '../../helpers/tmpdir';

const KiB = 1024;
const SIZE = 1024 * KiB;
const REGION = 64 * KiB;

class FakeLink extends EventEmitter<{ failback: [HubFailbackMessage] }> {
  readonly sent: AgentMessage[] = [];
  send(m: AgentMessage): boolean {
    this.sent.push(m);
    return true;
  }
}

const welcome = (over: Partial<Welcome> = {}): Welcome => ({
  protocolVersion: 1, hubId: 'h', generation: 3, syncMode: 'failback', durableEpoch: 10, durableSeq: 20, resyncOpen: false, ...over,
});

describe('FailbackClient', () => {
  const tmp = useTmpDir('agent-failback-');

  function setup() {
    const ids = IdentityStore.open(tmp.path);
    const identity = ids.volume('vol1', SIZE);
    identity.generation = 3;
    const dir = ids.volumeDir('vol1');
    const device = new MemoryDevice(SIZE);
    const bitmap = new DirtyBitmap(REGION, SIZE);
    const regions = new RegionState(bitmap);
    const gate = { paused: 0, resumed: 0, pause: async () => void gate.paused++, resume: () => void gate.resumed++ };
    const link = new FakeLink();
    let persisted = 0;
    const make = () =>
      new FailbackClient({ dir, device, regions, identity, identityStore: ids, persistBitmap: async () => void persisted++, gate, link, logger: silentLogger });
    return { ids, identity, dir, device, bitmap, regions, gate, link, make, persisted: () => persisted };
  }

  const hub = (link: FakeLink, m: HubFailbackMessage): void => void link.emit('failback', m);
  const data = (offset: number, buf: Buffer): HubFailbackMessage => ({
    type: 'failbackData', failbackData: { offset, length: buf.length, kind: 'data', data: buf, crc32c: crc32c(buf) },
  });
  const settle = () => new Promise((r) => setTimeout(r, 20));

  test('ships the dirty set, applies the delta below tracking, adopts the generation, then clears bits and resumes', async () => {
    const s = setup();
    await s.device.write(0, Buffer.alloc(REGION, 7)); // local, unreplicated write
    s.bitmap.setRange(0, 1);
    s.bitmap.setRange(5, 7);
    const client = s.make();
    const run = client.run(welcome(), new AbortController().signal);
    await settle();
    expect(s.gate.paused).toBe(1);
    expect(readFailbackMarker(s.dir)).toMatchObject({ state: 'receiving', generation: 3 });
    expect(s.link.sent).toEqual([{ type: 'failbackDirty', failbackDirty: { ranges: [{ offset: 0, length: REGION }, { offset: 5 * REGION, length: 2 * REGION }], last: true } }]);

    hub(s.link, { type: 'failbackBegin', failbackBegin: { totalBytes: 2 * REGION } });
    hub(s.link, data(5 * REGION, Buffer.alloc(REGION, 9)));
    hub(s.link, { type: 'failbackData', failbackData: { offset: 0, length: REGION, kind: 'zeroes', data: Buffer.alloc(0), crc32c: 0 } });
    hub(s.link, { type: 'failbackEnd', failbackEnd: { generation: 4, shippedBytes: 2 * REGION } });
    await settle();
    expect(s.link.sent.slice(1)).toEqual([
      { type: 'failbackAck', failbackAck: { appliedBytes: REGION } },
      { type: 'failbackAck', failbackAck: { appliedBytes: 2 * REGION } },
      { type: 'failbackApplied', failbackApplied: { generation: 4, appliedBytes: 2 * REGION } },
    ]);
    expect(readFailbackMarker(s.dir)).toMatchObject({ state: 'applied', generation: 4 });
    expect(s.ids.volume('vol1', SIZE).generation).toBe(4); // persisted: the next Hello presents it
    expect(s.gate.resumed).toBe(0);
    expect(s.bitmap.dirtyBytes()).toBe(3 * REGION); // bits stay until the hub committed

    hub(s.link, { type: 'failbackDone', failbackDone: { generation: 4, durableEpoch: 12, durableSeq: 30 } });
    await expect(run).resolves.toEqual({ generation: 4, durableEpoch: 12, durableSeq: 30, appliedBytes: 2 * REGION });
    expect(s.bitmap.dirtyBytes()).toBe(0);
    expect(s.regions.resendBytes).toBe(0);
    expect(s.persisted()).toBe(1);
    expect(fs.existsSync(path.join(s.dir, FAILBACK_MARKER_FILE))).toBe(false);
    expect(s.gate.resumed).toBe(1);
    expect((await s.device.read(0, REGION)).equals(Buffer.alloc(REGION))).toBe(true);
    expect((await s.device.read(5 * REGION, REGION)).equals(Buffer.alloc(REGION, 9))).toBe(true);
  });

  test.each([
    ['data before FailbackBegin', [data(0, Buffer.alloc(512, 1))]],
    ['a CRC32C mismatch', [{ type: 'failbackBegin', failbackBegin: { totalBytes: 512 } }, { type: 'failbackData', failbackData: { offset: 0, length: 512, kind: 'data', data: Buffer.alloc(512, 1), crc32c: 5 } }]],
    ['data beyond the volume', [{ type: 'failbackBegin', failbackBegin: { totalBytes: 512 } }, data(SIZE, Buffer.alloc(512, 1))]],
    ['a shipped-bytes mismatch', [{ type: 'failbackBegin', failbackBegin: { totalBytes: 0 } }, { type: 'failbackEnd', failbackEnd: { generation: 4, shippedBytes: 512 } }]],
    ['Done for another generation', [{ type: 'failbackBegin', failbackBegin: { totalBytes: 0 } }, { type: 'failbackEnd', failbackEnd: { generation: 4, shippedBytes: 0 } }, { type: 'failbackDone', failbackDone: { generation: 5, durableEpoch: 1, durableSeq: 1 } }]],
  ] as [string, HubFailbackMessage[]][])('rejects %s with E_PROTOCOL; I/O stays held, the marker stays', async (_name, msgs) => {
    const s = setup();
    const run = s.make().run(welcome(), new AbortController().signal);
    await settle();
    for (const m of msgs) hub(s.link, m);
    await expect(run).rejects.toMatchObject({ code: 'E_PROTOCOL' });
    expect(s.gate.resumed).toBe(0);
    expect(readFailbackMarker(s.dir)).not.toBeNull();
  });

  test('the session ending rejects the run (E_CLOSED)', async () => {
    const s = setup();
    const abort = new AbortController();
    const run = s.make().run(welcome(), abort.signal);
    await settle();
    abort.abort();
    await expect(run).rejects.toMatchObject({ code: 'E_CLOSED' });
  });

  test('a marker found at start holds I/O; a RESUME at the applied generation releases it without touching the bits', async () => {
    const s = setup();
    fs.writeFileSync(path.join(s.dir, FAILBACK_MARKER_FILE), JSON.stringify({ version: 1, state: 'applied', generation: 4, startedMs: 1 }));
    s.bitmap.setRange(2, 3);
    const client = s.make();
    expect(s.gate.paused).toBe(1);
    expect(client.pending).toBe('applied');
    await client.onNormalWelcome(welcome({ syncMode: 'resume', generation: 4 }));
    expect(s.gate.resumed).toBe(1);
    expect(client.pending).toBeNull();
    expect(s.bitmap.dirtyBytes()).toBe(REGION);
  });

  test('a half-applied failback the hub gave up on marks every region for resend', async () => {
    const s = setup();
    fs.writeFileSync(path.join(s.dir, FAILBACK_MARKER_FILE), 'garbage'); // unreadable reads as 'receiving'
    const client = s.make();
    expect(client.pending).toBe('receiving');
    await client.onNormalWelcome(welcome({ syncMode: 'resume', generation: 3 }));
    expect(s.bitmap.dirtyBytes()).toBe(SIZE);
    expect(s.regions.resendBytes).toBe(SIZE);
    expect(s.persisted()).toBe(1);
    expect(s.gate.resumed).toBe(1);
    expect(fs.existsSync(path.join(s.dir, FAILBACK_MARKER_FILE))).toBe(false);
  });
});
