import { MemoryDevice } from '../../../common/block/memory-device';
import {
  BASE_ALLOCATION_ID,
  ExportLookup,
  HandshakeState,
  OptionOutcome,
  ServedExport,
  handleOption,
  newHandshakeState,
  transmissionFlags,
} from '../../../common/nbd/handshake';
import {
  Info,
  Opt,
  Rep,
  TxFlag,
  decodeInfoItem,
  decodeMetaContextReply,
  decodeOptionReplyHeader,
  decodeServerReply,
  encodeInfoRequest,
  encodeMetaContextRequest,
} from '../../../common/nbd/protocol';

function lookup(exps: ServedExport[]): ExportLookup {
  return {
    resolve: (name) => exps.find((e) => e.name === name) ?? (name === '' && exps.length === 1 ? exps[0]! : null),
    list: () => exps,
  };
}

const disk: ServedExport = { name: 'disk', device: new MemoryDevice(1 << 20), description: 'main', readOnly: false };
const ro: ServedExport = { name: 'ro', device: new MemoryDevice(1 << 20), description: '', readOnly: true };
const limits = { maxPayload: 32 << 20 };

function replies(out: OptionOutcome): Array<{ type: number; payload: Buffer }> {
  if (out.action === 'close') throw new Error('expected replies');
  return out.replies.map((b) => ({ type: decodeOptionReplyHeader(b).type, payload: b.subarray(20) }));
}

function run(state: HandshakeState, option: number, data: Buffer = Buffer.alloc(0), exps = [disk, ro]): OptionOutcome {
  return handleOption(state, lookup(exps), option, data, limits);
}

describe('nbd option haggling', () => {
  it('computes transmission flags from the device and the structured-reply outcome', () => {
    expect(transmissionFlags(disk, true)).toBe(0x0ded);
    expect(transmissionFlags(disk, false)).toBe(0x0d6d);
    const f = transmissionFlags(ro, false);
    expect(f & TxFlag.READ_ONLY).toBeTruthy();
    expect(f & (TxFlag.SEND_TRIM | TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FUA)).toBe(0);
  });

  it('answers GO with NBD_INFO_EXPORT (always) and requested items, then ACK', () => {
    const st = newHandshakeState(3);
    const out = run(st, Opt.GO, encodeInfoRequest({ name: 'disk', requests: [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE] }));
    expect(out.action).toBe('transmission');
    const r = replies(out);
    expect(r.map((x) => x.type)).toEqual([Rep.INFO, Rep.INFO, Rep.INFO, Rep.INFO, Rep.ACK]);
    expect(r.slice(0, 4).map((x) => decodeInfoItem(x.payload))).toEqual([
      { type: 'export', size: 1 << 20, flags: 0x0d6d },
      { type: 'name', name: 'disk' },
      { type: 'description', description: 'main' },
      { type: 'block-size', minimum: 1, preferred: 4096, maximum: 32 << 20 },
    ]);
  });

  it('INFO keeps haggling; unknown export gets ERR_UNKNOWN; bad data gets ERR_INVALID', () => {
    const st = newHandshakeState(3);
    expect(run(st, Opt.INFO, encodeInfoRequest({ name: 'disk', requests: [] })).action).toBe('reply');
    expect(replies(run(st, Opt.GO, encodeInfoRequest({ name: 'nope', requests: [] })))[0]!.type).toBe(Rep.ERR_UNKNOWN);
    expect(replies(run(st, Opt.GO, Buffer.from([0, 0, 0, 9])))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('resolves the empty name only when exactly one export exists', () => {
    const st = newHandshakeState(3);
    const go = encodeInfoRequest({ name: '', requests: [] });
    expect(replies(run(st, Opt.GO, go))[0]!.type).toBe(Rep.ERR_UNKNOWN);
    const out = run(st, Opt.GO, go, [disk]);
    expect(out.action === 'transmission' && out.export).toBe(disk);
  });

  it('EXPORT_NAME answers size+flags (no zeroes when agreed) or closes', () => {
    const noZeroes = run(newHandshakeState(3), Opt.EXPORT_NAME, Buffer.from('disk'));
    expect(noZeroes.action === 'transmission' && noZeroes.replies[0]!.length).toBe(10);
    const zeroes = run(newHandshakeState(1), Opt.EXPORT_NAME, Buffer.from('disk'));
    expect(zeroes.action === 'transmission' && zeroes.replies[0]!.length).toBe(134);
    expect(run(newHandshakeState(3), Opt.EXPORT_NAME, Buffer.from('x')).action).toBe('close');
  });

  it('LIST returns one SERVER reply per export', () => {
    const r = replies(run(newHandshakeState(3), Opt.LIST));
    expect(r.map((x) => x.type)).toEqual([Rep.SERVER, Rep.SERVER, Rep.ACK]);
    expect(decodeServerReply(r[0]!.payload)).toEqual({ name: 'disk', description: 'main' });
    expect(replies(run(newHandshakeState(3), Opt.LIST, Buffer.from('x')))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('STRUCTURED_REPLY once; repeats and data are invalid', () => {
    const st = newHandshakeState(3);
    expect(replies(run(st, Opt.STRUCTURED_REPLY, Buffer.from('x')))[0]!.type).toBe(Rep.ERR_INVALID);
    expect(replies(run(st, Opt.STRUCTURED_REPLY))[0]!.type).toBe(Rep.ACK);
    expect(st.structured).toBe(true);
    expect(replies(run(st, Opt.STRUCTURED_REPLY))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('meta contexts: need structured replies; SET selects base:allocation for an export; LIST wildcards', () => {
    const st = newHandshakeState(3);
    const set = encodeMetaContextRequest({ name: 'disk', queries: ['base:allocation', 'qemu:dirty-bitmap:x'] });
    expect(replies(run(st, Opt.SET_META_CONTEXT, set))[0]!.type).toBe(Rep.ERR_INVALID);
    run(st, Opt.STRUCTURED_REPLY);
    const r = replies(run(st, Opt.SET_META_CONTEXT, set));
    expect(r.map((x) => x.type)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    expect(decodeMetaContextReply(r[0]!.payload)).toEqual({ id: BASE_ALLOCATION_ID, name: 'base:allocation' });
    expect(st.metaExport).toBe('disk');
    // SET replaces the selection: nothing matching -> nothing selected
    const none = replies(run(st, Opt.SET_META_CONTEXT, encodeMetaContextRequest({ name: 'disk', queries: ['base:'] })));
    expect(none.map((x) => x.type)).toEqual([Rep.ACK]);
    expect(st.metaExport).toBeNull();
    for (const queries of [[], ['base:'], ['base:allocation']]) {
      const l = replies(run(st, Opt.LIST_META_CONTEXT, encodeMetaContextRequest({ name: 'disk', queries })));
      expect(l.map((x) => x.type)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    }
    const other = replies(run(st, Opt.LIST_META_CONTEXT, encodeMetaContextRequest({ name: 'disk', queries: ['qemu:'] })));
    expect(other.map((x) => x.type)).toEqual([Rep.ACK]);
    expect(replies(run(st, Opt.SET_META_CONTEXT, Buffer.from([1, 2, 3])))[0]!.type).toBe(Rep.ERR_INVALID);
  });

  it('answers ERR_UNSUP to STARTTLS, EXTENDED_HEADERS, PEEK_EXPORT and unknown options', () => {
    for (const opt of [Opt.STARTTLS, Opt.EXTENDED_HEADERS, Opt.PEEK_EXPORT, 12, 0, 0xffffffff]) {
      expect(replies(run(newHandshakeState(3), opt, Buffer.from('data')))[0]!.type).toBe(Rep.ERR_UNSUP);
    }
  });

  it('ABORT acknowledges and ends', () => {
    const out = run(newHandshakeState(3), Opt.ABORT, Buffer.from('ignored'));
    expect(out.action).toBe('abort');
    expect(replies(out)[0]!.type).toBe(Rep.ACK);
  });
});
