/**
 * Admin queue commands: Identify, Get Log Page, Set/Get Features,
 * Asynchronous Event Request, Keep Alive, Abort. Before CC.EN = 1 / CSTS.RDY
 * only Fabrics commands are legal (checked by the caller). Data pages come from
 * the pure builders in identify.ts.
 */
import { Command, Completion, OK, QueueContext, fail } from './command';
import { Controller, OAES_DISCOVERY, OAES_IO } from './controller';
import {
  Cns,
  IDENTIFY_LEN,
  LogId,
  buildActiveNsList,
  buildChangedNsLog,
  buildIdentifyController,
  buildIdentifyNamespace,
  buildNsDescriptors,
  buildSmartLog,
  sliceLog,
} from './identify';
import { AdminOpcode, FeatureId } from './sqe';
import { Status } from './status';

/**
 * Largest in-capsule data of an I/O command. 128 KiB (not the usual 8 KiB):
 * writes up to that size then travel in the CapsuleCmd, which saves the R2T
 * round trip and two small PDUs per command; the reader bounds the capsule
 * before allocating, and a connection holds at most 256 outstanding commands
 * (32 MiB, the same as its solicited-write budget). Linux hosts send any
 * write that fits IOCCSZ in-capsule.
 */
export const IN_CAPSULE_DATA = 128 * 1024;
/** I/O queue capsule: SQE + in-capsule data, in 16-byte units. */
export const IOCCSZ = (64 + IN_CAPSULE_DATA) / 16;
export const MAXCMD = 128;
/** Keep Alive granularity, 100 ms units. */
export const KAS = 10;

export function handleAdmin(q: QueueContext, cmd: Command): Completion | Promise<Completion> {
  const ctrl = q.controller!;
  switch (cmd.sqe.opcode) {
    case AdminOpcode.IDENTIFY:
      return identify(q, ctrl, cmd);
    case AdminOpcode.GET_LOG_PAGE:
      return getLogPage(q, ctrl, cmd);
    case AdminOpcode.SET_FEATURES:
      return setFeatures(ctrl, cmd);
    case AdminOpcode.GET_FEATURES:
      return getFeatures(ctrl, cmd);
    case AdminOpcode.ASYNC_EVENT_REQUEST: {
      const held = ctrl.addAer();
      if (!held) return fail(Status.AER_LIMIT_EXCEEDED);
      return held.then((dw0) => ({ status: 0, dw0 }));
    }
    case AdminOpcode.KEEP_ALIVE:
      ctrl.keepAlive();
      return OK;
    case AdminOpcode.ABORT:
      return { status: 0, dw0: 1 }; // not aborted
    default:
      return fail(Status.INVALID_OPCODE);
  }
}

export function identifyController(q: QueueContext, ctrl: Controller): Buffer {
  const sub = ctrl.subsystem;
  const discovery = ctrl.isDiscovery;
  const anyTrim = [...sub.namespaces.values()].some((ns) => ns.device.info.canTrim);
  return buildIdentifyController({
    cntlid: ctrl.cntlid,
    serial: sub.identity.serial,
    model: sub.identity.model,
    firmware: sub.identity.firmware,
    subnqn: sub.identity.nqn,
    type: discovery ? 'discovery' : 'io',
    nn: sub.nn,
    mdts: Math.log2(q.target.limits.maxTransfer / 4096),
    ioccsz: discovery ? 4 : IOCCSZ,
    maxcmd: MAXCMD,
    oaes: discovery ? OAES_DISCOVERY : OAES_IO,
    kas: KAS,
    // Write Zeroes always (emulated when the device cannot); DSM only when some namespace can trim
    oncs: discovery ? 0 : 0x08 | (anyTrim ? 0x04 : 0),
    volatileWriteCache: !discovery,
  });
}

function identify(q: QueueContext, ctrl: Controller, cmd: Command): Completion {
  const cns = cmd.sqe.cdw10 & 0xff;
  const nsid = cmd.sqe.nsid;
  const sub = ctrl.subsystem;
  if (cns === Cns.CONTROLLER) return { status: 0, data: identifyController(q, ctrl) };
  if (ctrl.isDiscovery) return fail(Status.INVALID_FIELD);
  switch (cns) {
    case Cns.NAMESPACE: {
      const ns = sub.namespaces.get(nsid);
      if (ns) {
        return {
          status: 0,
          data: buildIdentifyNamespace({
            blocks: ns.blocks,
            blockSize: ns.blockSize,
            nguid: ns.nguid,
            readOnly: ns.readOnly,
            deallocReadsZeroes: ns.device.info.canTrim && ns.device.info.trimReadsZeroes,
            shared: true,
          }),
        };
      }
      // valid but inactive NSID: zeroes, success
      if (nsid !== 0 && nsid <= sub.nn) return { status: 0, data: Buffer.alloc(IDENTIFY_LEN) };
      return fail(Status.INVALID_NAMESPACE);
    }
    case Cns.ACTIVE_NS_LIST:
      if (nsid >= 0xfffffffe) return fail(Status.INVALID_NAMESPACE);
      return { status: 0, data: buildActiveNsList([...sub.namespaces.keys()], nsid) };
    case Cns.NS_DESCRIPTORS: {
      const ns = sub.namespaces.get(nsid);
      if (!ns) return fail(Status.INVALID_NAMESPACE);
      return { status: 0, data: buildNsDescriptors(ns.nguid, ns.uuid) };
    }
    case Cns.NVM_CONTROLLER:
      // NVM command set specific controller data: all zero = no extra limits
      if (cmd.sqe.cdw11 >>> 24 !== 0) return fail(Status.INVALID_FIELD);
      return { status: 0, data: Buffer.alloc(IDENTIFY_LEN) };
    default:
      return fail(Status.INVALID_FIELD);
  }
}

function getLogPage(q: QueueContext, ctrl: Controller, cmd: Command): Completion {
  const { cdw10, cdw11, cdw12, cdw13 } = cmd.sqe;
  const lid = cdw10 & 0xff;
  const rae = (cdw10 & 0x8000) !== 0;
  const dwords = ((((cdw11 & 0xffff) << 16) >>> 0) | (cdw10 >>> 16)) + 1;
  const length = dwords * 4;
  const lpo = cdw13 * 2 ** 32 + cdw12;
  if (length > q.target.limits.maxTransfer || length > cmd.sqe.sglLength) return fail(Status.INVALID_FIELD);
  if (lpo % 4 !== 0 || !Number.isSafeInteger(lpo)) return fail(Status.INVALID_FIELD);
  let page: Buffer;
  if (ctrl.isDiscovery) {
    if (lid !== LogId.DISCOVERY) return fail(Status.INVALID_FIELD);
    page = q.target.discoveryLog(q.local);
  } else {
    switch (lid) {
      case LogId.ERROR:
        page = Buffer.alloc(64);
        break;
      case LogId.SMART:
        page = buildSmartLog(ctrl.counters);
        break;
      case LogId.FIRMWARE_SLOT:
        page = Buffer.alloc(512);
        break;
      case LogId.CHANGED_NS:
        page = buildChangedNsLog([...ctrl.changedNs]);
        if (!rae) ctrl.changedNs.clear();
        break;
      default:
        return fail(Status.INVALID_FIELD);
    }
  }
  return { status: 0, data: sliceLog(page, lpo, length) };
}

function setFeatures(ctrl: Controller, cmd: Command): Completion {
  const { cdw10, cdw11 } = cmd.sqe;
  if (cdw10 & 0x80000000) return fail(Status.INVALID_FIELD); // SV: nothing is saveable
  switch (cdw10 & 0xff) {
    case FeatureId.NUMBER_OF_QUEUES: {
      if (ctrl.isDiscovery) return fail(Status.INVALID_FIELD);
      const nsqr = cdw11 & 0xffff;
      const ncqr = cdw11 >>> 16;
      if (nsqr === 0xffff || ncqr === 0xffff) return fail(Status.INVALID_FIELD);
      const granted = Math.min(nsqr + 1, ncqr + 1, ctrl.maxIoQueues);
      ctrl.grantedIoQueues = granted;
      return { status: 0, dw0: ((granted - 1) | ((granted - 1) << 16)) >>> 0 };
    }
    case FeatureId.KEEP_ALIVE_TIMER:
      ctrl.setKato(cdw11);
      return OK;
    case FeatureId.ASYNC_EVENT_CONFIG:
      ctrl.asyncEventConfig = cdw11 & (ctrl.isDiscovery ? OAES_DISCOVERY : OAES_IO);
      return OK;
    case FeatureId.VOLATILE_WRITE_CACHE:
      if (ctrl.isDiscovery) return fail(Status.INVALID_FIELD);
      ctrl.writeCacheEnabled = (cdw11 & 1) === 1;
      return OK;
    case FeatureId.TEMPERATURE_THRESHOLD:
      ctrl.temperatureThreshold = cdw11 & 0xffff;
      return OK;
    default:
      return fail(Status.INVALID_FIELD);
  }
}

function getFeatures(ctrl: Controller, cmd: Command): Completion {
  const { cdw10, cdw11 } = cmd.sqe;
  const sel = (cdw10 >>> 8) & 7;
  const fid = cdw10 & 0xff;
  const changeable = [
    FeatureId.NUMBER_OF_QUEUES,
    FeatureId.KEEP_ALIVE_TIMER,
    FeatureId.ASYNC_EVENT_CONFIG,
    FeatureId.VOLATILE_WRITE_CACHE,
    FeatureId.TEMPERATURE_THRESHOLD,
  ] as number[];
  if (sel === 3) return changeable.includes(fid) ? { status: 0, dw0: 0x4 } : fail(Status.INVALID_FIELD);
  if (sel > 3) return fail(Status.INVALID_FIELD);
  const current = sel === 0;
  switch (fid) {
    case FeatureId.NUMBER_OF_QUEUES: {
      const n = (current ? ctrl.ioQueueLimit : ctrl.maxIoQueues) - 1;
      return { status: 0, dw0: (n | (n << 16)) >>> 0 };
    }
    case FeatureId.KEEP_ALIVE_TIMER:
      return { status: 0, dw0: current ? ctrl.katoMs : 0 };
    case FeatureId.ASYNC_EVENT_CONFIG:
      return { status: 0, dw0: current ? ctrl.asyncEventConfig : 0 };
    case FeatureId.VOLATILE_WRITE_CACHE:
      return { status: 0, dw0: !current || ctrl.writeCacheEnabled ? 1 : 0 };
    case FeatureId.TEMPERATURE_THRESHOLD:
      return { status: 0, dw0: current ? ctrl.temperatureThreshold : 0x157 };
    case FeatureId.HOST_IDENTIFIER:
      if ((cdw11 & 1) === 0 || cmd.sqe.sglLength < 16) return fail(Status.INVALID_FIELD);
      return { status: 0, data: Buffer.from(ctrl.hostid) };
    default:
      return fail(Status.INVALID_FIELD);
  }
}
