/**
 * Fabrics commands (opcode 0x7F): Connect, Property Get/Set, Disconnect.
 * Connect creates a controller (admin queue, dynamic CNTLID) or attaches an
 * I/O queue to an existing one after checking NQNs, QID and SQSIZE (crib §3.1).
 * A failed Connect answers with DNR and closes the connection: the queue is
 * unusable and the Linux host gives up on it anyway.
 */
import { Command, Completion, OK, QueueContext, fail } from './command';
import { Controller, MQES } from './controller';
import { FabricsType, decodeConnectData, decodeConnectParams, CONNECT_DATA_LEN } from './sqe';
import { Status } from './status';

/** Invalid-parameter detail for a failed Connect: IPO (byte offset) and IATTR (1 = in data). */
function invalidParam(offset: number, inData: boolean): Completion {
  return { status: Status.CONNECT_INVALID_PARAMETERS, dw0: offset | (inData ? 1 << 16 : 0), closeAfter: true };
}

export function handleFabrics(q: QueueContext, cmd: Command): Completion {
  const { fctype } = cmd.sqe;
  if (fctype === FabricsType.CONNECT) return handleConnect(q, cmd);
  if (!q.controller) return fail(Status.COMMAND_SEQUENCE_ERROR);
  switch (fctype) {
    case FabricsType.PROPERTY_GET:
      return propertyGet(q, cmd);
    case FabricsType.PROPERTY_SET:
      return propertySet(q, cmd);
    case FabricsType.DISCONNECT:
      return { status: 0, closeAfter: true };
    default:
      // authentication is not offered (Connect DW0 bits 17/18 stay clear)
      return fail(Status.INVALID_OPCODE);
  }
}

function handleConnect(q: QueueContext, cmd: Command): Completion {
  if (q.controller) return fail(Status.COMMAND_SEQUENCE_ERROR);
  const p = decodeConnectParams(cmd.sqe);
  if (!cmd.data || cmd.data.length < CONNECT_DATA_LEN) return { status: Status.SGL_DATA_LENGTH_INVALID, closeAfter: true };
  if (p.recfmt !== 0) return { status: Status.CONNECT_INCOMPATIBLE_FORMAT, closeAfter: true };
  const d = decodeConnectData(cmd.data);
  const subsystem = q.target.findSubsystem(d.subnqn);
  if (!subsystem || subsystem.removed) {
    q.logger.info({ subnqn: d.subnqn, hostnqn: d.hostnqn }, 'connect to unknown subsystem');
    return invalidParam(256, true);
  }
  if (d.hostnqn.length === 0) return invalidParam(512, true);
  const flowDisabled = (p.cattr & 0x04) !== 0;
  if (p.sqsize < 1 || p.sqsize > MQES) return invalidParam(44, false);

  if (p.qid === 0) {
    if (d.cntlid !== 0xffff) return invalidParam(16, true);
    const cntlid = subsystem.allocateCntlid();
    if (cntlid === null) return { status: Status.CONNECT_CONTROLLER_BUSY, closeAfter: true };
    const ctrl = new Controller({
      cntlid,
      subsystem,
      hostnqn: d.hostnqn,
      hostid: d.hostid,
      admin: q.handle,
      katoMs: p.kato,
      keepAliveGraceMs: q.target.limits.keepAliveGraceMs,
      maxIoQueues: q.target.limits.maxIoQueues,
      logger: q.logger,
      onTeardown: (c) => {
        if (subsystem.controllers.get(c.cntlid) === c) subsystem.controllers.delete(c.cntlid);
      },
    });
    subsystem.controllers.set(cntlid, ctrl);
    q.bindAdmin(ctrl, p.sqsize, flowDisabled);
    q.logger.info({ subnqn: d.subnqn, hostnqn: d.hostnqn, cntlid, katoMs: p.kato }, 'controller created');
    return { status: 0, dw0: cntlid };
  }

  if (subsystem.discovery) return invalidParam(42, false);
  const ctrl = subsystem.controllers.get(d.cntlid);
  if (!ctrl || !ctrl.alive) return invalidParam(16, true);
  if (ctrl.hostnqn !== d.hostnqn) return invalidParam(512, true);
  if (p.qid > ctrl.ioQueueLimit || ctrl.ioQueues.has(p.qid)) {
    q.logger.warn({ cntlid: ctrl.cntlid, qid: p.qid, limit: ctrl.ioQueueLimit }, 'I/O queue refused');
    return invalidParam(42, false);
  }
  q.bindIo(ctrl, p.qid, p.sqsize, flowDisabled);
  return { status: 0, dw0: ctrl.cntlid };
}

function propertyGet(q: QueueContext, cmd: Command): Completion {
  if (q.qid !== 0) return fail(Status.INVALID_FIELD);
  const size8 = (cmd.sqe.cdw10 & 7) === 1;
  const r = q.controller!.propertyGet(cmd.sqe.cdw11, size8);
  if (r.status !== 0) return fail(r.status);
  return { status: 0, dw0: Number(r.value & 0xffffffffn), dw1: Number(r.value >> 32n) };
}

function propertySet(q: QueueContext, cmd: Command): Completion {
  if (q.qid !== 0) return fail(Status.INVALID_FIELD);
  const size8 = (cmd.sqe.cdw10 & 7) === 1;
  const value = BigInt(cmd.sqe.cdw12) | (BigInt(cmd.sqe.cdw13) << 32n);
  const status = q.controller!.propertySet(cmd.sqe.cdw11, size8, value);
  return status === 0 ? OK : fail(status);
}
