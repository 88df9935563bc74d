/**
 * Option haggling: one function per option, each turning (connection state,
 * option data) into the option replies to send and what happens next. No
 * sockets here; the connection writes the replies and switches phase.
 *
 * Per-connection state kept across options: the client flags (NO_ZEROES),
 * whether structured replies were agreed, and the meta-context selection of
 * the last SET_META_CONTEXT together with the export it was made for (block
 * status is only allowed if that is the export finally opened).
 * Options we do not implement (STARTTLS, EXTENDED_HEADERS, PEEK_EXPORT and
 * anything unknown) get NBD_REP_ERR_UNSUP; their data has already been read
 * by the ServerReader, so the stream stays in sync.
 */
import { BlockDevice } from '../block/device';
import {
  BASE_ALLOCATION,
  ClientFlag,
  Info,
  InfoItem,
  Opt,
  Rep,
  TxFlag,
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeExportNameReply,
  encodeInfoItem,
  encodeMetaContextReply,
  encodeOptionError,
  encodeOptionReply,
  encodeServerReply,
} from './protocol';

/** An export as the server serves it (config normalised). */
export interface ServedExport {
  readonly name: string;
  readonly device: BlockDevice;
  readonly description: string;
  readonly readOnly: boolean;
}

export interface ExportLookup {
  /** Exact name, or "" when exactly one export exists. */
  resolve(name: string): ServedExport | null;
  list(): ServedExport[];
}

export interface HandshakeState {
  clientFlags: number;
  structured: boolean;
  /** Canonical export name of the last SET_META_CONTEXT with base:allocation selected, else null. */
  metaExport: string | null;
}

export type OptionOutcome =
  | { action: 'reply'; replies: Buffer[] }
  | { action: 'abort'; replies: Buffer[] }
  | { action: 'transmission'; replies: Buffer[]; export: ServedExport }
  | { action: 'close'; reason: string };

/** Context id we hand out for base:allocation in SET_META_CONTEXT. */
export const BASE_ALLOCATION_ID = 1;

export interface HandshakeLimits {
  maxPayload: number;
}

export function newHandshakeState(clientFlags: number): HandshakeState {
  return { clientFlags, structured: false, metaExport: null };
}

export function transmissionFlags(exp: ServedExport, structured: boolean): number {
  const info = exp.device.info;
  let flags = TxFlag.HAS_FLAGS | TxFlag.SEND_FLUSH | TxFlag.SEND_CACHE | TxFlag.CAN_MULTI_CONN;
  if (exp.readOnly) {
    flags |= TxFlag.READ_ONLY;
  } else {
    flags |= TxFlag.SEND_FUA;
    if (info.canTrim) flags |= TxFlag.SEND_TRIM;
    if (info.canWriteZeroes) flags |= TxFlag.SEND_WRITE_ZEROES | TxFlag.SEND_FAST_ZERO;
  }
  if (structured) flags |= TxFlag.SEND_DF;
  return flags;
}

function reply(option: number, type: number, payload?: Buffer): OptionOutcome {
  return { action: 'reply', replies: [encodeOptionReply(option, type, payload)] };
}

function error(option: number, type: number, message: string): OptionOutcome {
  return { action: 'reply', replies: [encodeOptionError(option, type, message)] };
}

export function handleOption(
  state: HandshakeState,
  table: ExportLookup,
  option: number,
  data: Buffer,
  limits: HandshakeLimits,
): OptionOutcome {
  switch (option) {
    case Opt.EXPORT_NAME:
      return onExportName(state, table, data);
    case Opt.ABORT:
      return { action: 'abort', replies: [encodeOptionReply(option, Rep.ACK)] };
    case Opt.LIST:
      return onList(table, data);
    case Opt.INFO:
    case Opt.GO:
      return onInfoOrGo(state, table, option, data, limits);
    case Opt.STRUCTURED_REPLY:
      if (data.length !== 0) return error(option, Rep.ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
      if (state.structured) return error(option, Rep.ERR_INVALID, 'structured replies already negotiated');
      state.structured = true;
      return reply(option, Rep.ACK);
    case Opt.LIST_META_CONTEXT:
    case Opt.SET_META_CONTEXT:
      return onMetaContext(state, table, option, data);
    default:
      return error(option, Rep.ERR_UNSUP, `option ${option} is not supported`);
  }
}

function onExportName(state: HandshakeState, table: ExportLookup, data: Buffer): OptionOutcome {
  const name = data.toString('utf8');
  const exp = table.resolve(name);
  if (!exp) return { action: 'close', reason: `NBD_OPT_EXPORT_NAME for unknown export '${name}'` };
  const noZeroes = (state.clientFlags & ClientFlag.NO_ZEROES) !== 0;
  const flags = transmissionFlags(exp, state.structured);
  return {
    action: 'transmission',
    replies: [encodeExportNameReply(exp.device.info.size, flags, noZeroes)],
    export: exp,
  };
}

function onList(table: ExportLookup, data: Buffer): OptionOutcome {
  if (data.length !== 0) return error(Opt.LIST, Rep.ERR_INVALID, 'NBD_OPT_LIST takes no data');
  const replies = table
    .list()
    .map((e) => encodeOptionReply(Opt.LIST, Rep.SERVER, encodeServerReply(e.name, e.description)));
  replies.push(encodeOptionReply(Opt.LIST, Rep.ACK));
  return { action: 'reply', replies };
}

function onInfoOrGo(
  state: HandshakeState,
  table: ExportLookup,
  option: number,
  data: Buffer,
  limits: HandshakeLimits,
): OptionOutcome {
  let req;
  try {
    req = decodeInfoRequest(data);
  } catch (err) {
    return error(option, Rep.ERR_INVALID, (err as Error).message);
  }
  const exp = table.resolve(req.name);
  if (!exp) return error(option, Rep.ERR_UNKNOWN, `export '${req.name}' not present`);
  const items: InfoItem[] = [
    { type: 'export', size: exp.device.info.size, flags: transmissionFlags(exp, state.structured) },
  ];
  const asked = new Set(req.requests);
  if (asked.has(Info.NAME)) items.push({ type: 'name', name: exp.name });
  if (asked.has(Info.DESCRIPTION) && exp.description) {
    items.push({ type: 'description', description: exp.description });
  }
  if (asked.has(Info.BLOCK_SIZE)) {
    // any byte alignment works (BlockDevice takes byte ranges); prefer whole blocks
    const preferred = Math.max(4096, exp.device.info.blockSize);
    items.push({ type: 'block-size', minimum: 1, preferred, maximum: Math.max(limits.maxPayload, preferred) });
  }
  const replies = items.map((item) => encodeOptionReply(option, Rep.INFO, encodeInfoItem(item)));
  replies.push(encodeOptionReply(option, Rep.ACK));
  if (option === Opt.INFO) return { action: 'reply', replies };
  return { action: 'transmission', replies, export: exp };
}

function onMetaContext(state: HandshakeState, table: ExportLookup, option: number, data: Buffer): OptionOutcome {
  const isSet = option === Opt.SET_META_CONTEXT;
  // SET replaces the selection even when it fails
  if (isSet) state.metaExport = null;
  if (!state.structured) return error(option, Rep.ERR_INVALID, 'structured replies must be negotiated first');
  let req;
  try {
    req = decodeMetaContextRequest(data);
  } catch (err) {
    return error(option, Rep.ERR_INVALID, (err as Error).message);
  }
  const exp = table.resolve(req.name);
  if (!exp) return error(option, Rep.ERR_UNKNOWN, `export '${req.name}' not present`);
  const matches = isSet
    ? req.queries.some((q) => q === BASE_ALLOCATION)
    : req.queries.length === 0 || req.queries.some((q) => q === BASE_ALLOCATION || q === 'base:');
  const replies: Buffer[] = [];
  if (matches) {
    replies.push(
      encodeOptionReply(option, Rep.META_CONTEXT, encodeMetaContextReply(isSet ? BASE_ALLOCATION_ID : 0, BASE_ALLOCATION)),
    );
    if (isSet) state.metaExport = exp.name;
  }
  replies.push(encodeOptionReply(option, Rep.ACK));
  return { action: 'reply', replies };
}
