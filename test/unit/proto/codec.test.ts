import fc from 'fast-check';
import {
  AgentMessage,
  decodeAgentMessage,
  decodeHubMessage,
  encodeAgentMessage,
  encodeHubMessage,
  HubMessage,
  MAX_FAILBACK_RANGES,
} from '../../../proto/codec';

const u64 = fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER });

describe('replication codec', () => {
  test('hello round trip', () => {
    const m: AgentMessage = {
      type: 'hello',
      hello: {
        protocolVersion: 1,
        agentId: 'a1',
        volumeName: 'vol',
        volumeUuid: '2b1c6a3e-0000-4000-8000-000000000001',
        volumeSize: 2 ** 40,
        blockSize: 512,
        regionSize: 65536,
        generation: 3,
        durableEpoch: 2 ** 50,
        token: 't',
        forceFullSync: true,
        nextSeq: 17,
        nextEpoch: 9,
      },
    };
    expect(decodeAgentMessage(encodeAgentMessage(m))).toEqual(m);
  });

  test('write round trip keeps data and enums', () => {
    fc.assert(
      fc.property(u64, u64, fc.uint8Array({ maxLength: 4096 }), fc.constantFrom('live', 'resync'), (seq, off, data, origin) => {
        const m: AgentMessage = {
          type: 'write',
          write: {
            seq,
            epoch: 5,
            offset: off,
            length: data.length,
            kind: 'data',
            origin: origin as 'live' | 'resync',
            data: Buffer.from(data),
            crc32c: 123,
            timeMs: 1700000000000,
          },
        };
        const got = decodeAgentMessage(encodeAgentMessage(m));
        expect(got).toEqual(m);
      }),
    );
  });

  test('hub messages round trip', () => {
    const msgs: HubMessage[] = [
      { type: 'ack', ack: { durableEpoch: 7, durableSeq: 99 } },
      { type: 'refuse', refuse: { code: 'uuid-mismatch', message: 'no' } },
      {
        type: 'welcome',
        welcome: { protocolVersion: 1, hubId: 'h', generation: 2, syncMode: 'full', durableEpoch: 0, durableSeq: 0, resyncOpen: false },
      },
    ];
    for (const m of msgs) expect(decodeHubMessage(encodeHubMessage(m))).toEqual(m);
  });

  test('failback messages round trip (both directions)', () => {
    const range = fc.record({ offset: u64, length: u64 });
    fc.assert(
      fc.property(fc.array(range, { maxLength: 50 }), fc.boolean(), u64, u64, (ranges, last, a, b) => {
        const agent: AgentMessage[] = [
          { type: 'failbackDirty', failbackDirty: { ranges, last } },
          { type: 'failbackAck', failbackAck: { appliedBytes: a } },
          { type: 'failbackApplied', failbackApplied: { generation: b, appliedBytes: a } },
        ];
        for (const m of agent) expect(decodeAgentMessage(encodeAgentMessage(m))).toEqual(m);
        const hub: HubMessage[] = [
          { type: 'failbackBegin', failbackBegin: { totalBytes: a } },
          { type: 'failbackEnd', failbackEnd: { generation: b, shippedBytes: a } },
          { type: 'failbackDone', failbackDone: { generation: b, durableEpoch: a, durableSeq: b } },
        ];
        for (const m of hub) expect(decodeHubMessage(encodeHubMessage(m))).toEqual(m);
      }),
      { numRuns: 200 },
    );
  });

  test('failback data round trip; zeroes carry no data', () => {
    fc.assert(
      fc.property(u64, fc.uint8Array({ maxLength: 4096 }), (off, data) => {
        const m: HubMessage = {
          type: 'failbackData',
          failbackData: { offset: off, length: data.length, kind: 'data', data: Buffer.from(data), crc32c: 7 },
        };
        expect(decodeHubMessage(encodeHubMessage(m))).toEqual(m);
      }),
    );
    const z: HubMessage = { type: 'failbackData', failbackData: { offset: 4096, length: 1 << 20, kind: 'zeroes', data: Buffer.alloc(0), crc32c: 0 } };
    expect(decodeHubMessage(encodeHubMessage(z))).toEqual(z);
    const w: HubMessage = {
      type: 'welcome',
      welcome: { protocolVersion: 1, hubId: 'h', generation: 4, syncMode: 'failback', durableEpoch: 3, durableSeq: 9, resyncOpen: false },
    };
    expect(decodeHubMessage(encodeHubMessage(w))).toEqual(w);
  });

  test('failback: bad data length, data on zeroes and oversized dirty lists are E_PROTOCOL', () => {
    const short = encodeHubMessage({
      type: 'failbackData',
      failbackData: { offset: 0, length: 10, kind: 'data', data: Buffer.alloc(3), crc32c: 0 },
    });
    expect(() => decodeHubMessage(short)).toThrow(expect.objectContaining({ code: 'E_PROTOCOL' }));
    const zeroWithData = encodeHubMessage({
      type: 'failbackData',
      failbackData: { offset: 0, length: 3, kind: 'zeroes', data: Buffer.alloc(3), crc32c: 0 },
    });
    expect(() => decodeHubMessage(zeroWithData)).toThrow(expect.objectContaining({ code: 'E_PROTOCOL' }));
    const ranges = Array.from({ length: MAX_FAILBACK_RANGES + 1 }, (_, i) => ({ offset: i * 2, length: 1 }));
    const many = encodeAgentMessage({ type: 'failbackDirty', failbackDirty: { ranges, last: true } });
    expect(() => decodeAgentMessage(many)).toThrow(expect.objectContaining({ code: 'E_PROTOCOL' }));
  });

  test('rejects empty envelope, bad data length and garbage with E_PROTOCOL', () => {
    expect(() => decodeAgentMessage(Buffer.alloc(0))).toThrow(expect.objectContaining({ code: 'E_PROTOCOL' }));
    const bad = encodeAgentMessage({
      type: 'write',
      write: { seq: 1, epoch: 1, offset: 0, length: 10, kind: 'data', origin: 'live', data: Buffer.alloc(3), crc32c: 0, timeMs: 0 },
    });
    expect(() => decodeAgentMessage(bad)).toThrow(expect.objectContaining({ code: 'E_PROTOCOL' }));
  });

  test('fuzz: random and mutated bytes either decode or throw E_PROTOCOL', () => {
    const seed = encodeAgentMessage({
      type: 'seal',
      seal: { epoch: 3, lastSeq: 10, timeMs: 5, reason: 'flush' },
    });
    const dirtySeed = encodeAgentMessage({
      type: 'failbackDirty',
      failbackDirty: { ranges: [{ offset: 0, length: 65536 }, { offset: 1 << 20, length: 131072 }], last: true },
    });
    const dataSeed = encodeHubMessage({
      type: 'failbackData',
      failbackData: { offset: 8192, length: 8, kind: 'data', data: Buffer.from('abcdefgh'), crc32c: 1 },
    });
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 8 }), (rand, muts) => {
        for (const input of [Buffer.from(rand), mutate(seed, muts), mutate(dirtySeed, muts), mutate(dataSeed, muts)]) {
          for (const dec of [decodeAgentMessage, decodeHubMessage]) {
            try {
              dec(input);
            } catch (err) {
              expect((err as { code?: string }).code).toBe('E_PROTOCOL');
            }
          }
        }
      }),
      { numRuns: 2000 },
    );
  });
});

function mutate(buf: Buffer, muts: [number, number][]): Buffer {
  const b = Buffer.from(buf);
  for (const [i, v] of muts) b[i % b.length] = v;
  return b;
}
