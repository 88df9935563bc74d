import { ReplError } from '../../../common/errors';
import { NvmeStatusError, Status, nvmeStatus, statusError, toNvmeStatus } from '../../../common/nvme-tcp/status';

describe('NVMe status words', () => {
  it('encode SCT/SC/DNR as on the wire', () => {
    expect(Status.INVALID_OPCODE).toBe(0x8002);
    expect(Status.INVALID_FIELD).toBe(0x8004);
    expect(Status.INVALID_NAMESPACE).toBe(0x8016);
    expect(Status.COMMAND_SEQUENCE_ERROR).toBe(0x8018);
    expect(Status.SGL_DATA_LENGTH_INVALID).toBe(0x801e);
    expect(Status.LBA_OUT_OF_RANGE).toBe(0x8100);
    expect(Status.NAMESPACE_NOT_READY).toBe(0x0104);
    expect(Status.TRANSIENT_TRANSPORT_ERROR).toBe(0x0044);
    expect(Status.CONNECT_INVALID_PARAMETERS).toBe(0x8304);
    expect(Status.CONNECT_INVALID_HOST).toBe(0x8308);
    expect(Status.WRITE_FAULT).toBe(0x8500);
    expect(nvmeStatus(2, 0x81, true)).toBe(0x8502);
  });

  it.each([
    [new ReplError('E_RANGE', 'x'), 'read', Status.LBA_OUT_OF_RANGE],
    [ReplError.readOnly(), 'write', Status.NAMESPACE_WRITE_PROTECTED],
    [ReplError.io('x'), 'read', Status.UNRECOVERED_READ_ERROR],
    [ReplError.io('x'), 'write', Status.WRITE_FAULT],
    [ReplError.io('x'), 'other', Status.INTERNAL_ERROR],
    [new ReplError('E_NOSPC', 'x'), 'write', Status.CAPACITY_EXCEEDED],
    [ReplError.closed(), 'read', Status.NAMESPACE_NOT_READY],
    [new ReplError('E_FENCED', 'x'), 'write', Status.ACCESS_DENIED],
    [new Error('plain'), 'write', Status.INTERNAL_ERROR],
    ['a string', 'read', Status.INTERNAL_ERROR],
  ] as const)('toNvmeStatus(%p, %s)', (err, kind, status) => {
    expect(toNvmeStatus(err, kind)).toBe(status);
  });

  it('transient back-end conditions leave DNR clear so hosts retry', () => {
    expect(toNvmeStatus(ReplError.closed()) & 0x8000).toBe(0);
    expect(toNvmeStatus(new ReplError('E_TIMEOUT', 't')) & 0x8000).toBe(0);
  });

  it('statusError maps back to ReplError codes and keeps the status', () => {
    const e = statusError(Status.LBA_OUT_OF_RANGE, 'read');
    expect(e).toBeInstanceOf(NvmeStatusError);
    expect(e).toBeInstanceOf(ReplError);
    expect(e).toMatchObject({ code: 'E_RANGE', status: 0x8100, sct: 0, sc: 0x80, dnr: true });
    expect(e.message).toMatch(/lba out of range/);
    expect(statusError(Status.INVALID_NAMESPACE, 'x').code).toBe('E_NOT_FOUND');
    expect(statusError(Status.NAMESPACE_WRITE_PROTECTED, 'x').code).toBe('E_READ_ONLY');
    expect(statusError(Status.CONNECT_INVALID_PARAMETERS, 'x').code).toBe('E_HANDSHAKE');
    expect(statusError(Status.NAMESPACE_NOT_READY, 'x').code).toBe('E_BUSY');
    expect(statusError(Status.WRITE_FAULT, 'x').code).toBe('E_IO');
  });
});
