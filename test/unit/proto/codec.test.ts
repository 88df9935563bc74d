import fc from 'fast-check';
import {
  AgentMessage,
  decodeAgentMessage,
  decodeHubMessage,
  encodeAgentMessage,
  encodeHubMessage,
  HubMessage,
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
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 256 }), fc.array(fc.tuple(fc.nat(), fc.nat(255)), { maxLength: 8 }), (rand, muts) => {
        for (const input of [Buffer.from(rand), mutate(seed, muts)]) {
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
