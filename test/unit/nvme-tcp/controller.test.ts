import { MemoryDevice } from '../../../common/block/memory-device';
import { silentLogger } from '../../../common/log';
import { AsyncEvent, CAP, Controller, MAX_AERS, OAES_DISCOVERY, OAES_IO, Property, QueueHandle } from '../../../common/nvme-tcp/controller';
import { Status } from '../../../common/nvme-tcp/status';
import { Subsystem } from '../../../common/nvme-tcp/subsystem';

function setup(opts: { katoMs?: number; discovery?: boolean } = {}) {
  const device = new MemoryDevice(1024 * 1024);
  const sub = opts.discovery
    ? Subsystem.discoveryService()
    : new Subsystem({ nqn: 'nqn.x:y', serial: 's', model: 'm', firmware: 'f', readOnly: false }, false);
  if (!opts.discovery) sub.addNamespace(1, device, Buffer.alloc(16, 1), '11111111-2222-3333-4444-555555555555');
  const closed: string[] = [];
  const handle = (qid: number): QueueHandle => ({ qid, close: (reason) => closed.push(`${qid}:${reason}`) });
  const torn: Controller[] = [];
  const ctrl = new Controller({
    cntlid: 1,
    subsystem: sub,
    hostnqn: 'nqn.host',
    hostid: Buffer.alloc(16),
    admin: handle(0),
    katoMs: opts.katoMs ?? 0,
    keepAliveGraceMs: 1000,
    maxIoQueues: 4,
    logger: silentLogger,
    onTeardown: (c) => torn.push(c),
  });
  return { ctrl, device, closed, torn, handle };
}

describe('Controller properties', () => {
  it('reads CAP (8 bytes only), VS, CC and CSTS', () => {
    const { ctrl } = setup();
    expect(ctrl.propertyGet(Property.CAP, true)).toEqual({ status: 0, value: CAP });
    expect(ctrl.propertyGet(Property.CAP, false).status).toBe(Status.INVALID_FIELD);
    expect(ctrl.propertyGet(Property.VS, false)).toEqual({ status: 0, value: 0x00010300n });
    expect(ctrl.propertyGet(Property.CSTS, false)).toEqual({ status: 0, value: 0n });
    expect(ctrl.propertyGet(0x20, false).status).toBe(Status.INVALID_FIELD); // NSSR not offered
    expect(ctrl.propertySet(Property.VS, false, 1n)).toBe(Status.INVALID_FIELD);
  });

  it('CC.EN 0->1 raises RDY; bad entry sizes raise CFS instead', () => {
    const { ctrl } = setup();
    expect(ctrl.propertySet(Property.CC, false, 0x00460000n)).toBe(0);
    expect(ctrl.ready).toBe(false);
    ctrl.propertySet(Property.CC, false, 0x00460001n);
    expect(ctrl.ready).toBe(true);
    expect(ctrl.propertyGet(Property.CC, false).value).toBe(0x00460001n);

    const other = setup().ctrl;
    other.propertySet(Property.CC, false, 0x00000001n); // IOSQES/IOCQES 0
    expect(other.ready).toBe(false);
    expect(Number(other.propertyGet(Property.CSTS, false).value) & 2).toBe(2);
  });

  it('discovery controllers accept CC without I/O queue entry sizes', () => {
    const { ctrl } = setup({ discovery: true });
    ctrl.propertySet(Property.CC, false, 0x00000001n);
    expect(ctrl.ready).toBe(true);
  });

  it('CC.EN 1->0 resets: I/O queues closed, RDY cleared', () => {
    const { ctrl, closed, handle } = setup();
    ctrl.propertySet(Property.CC, false, 0x00460001n);
    ctrl.ioQueues.set(1, handle(1));
    ctrl.ioQueues.set(2, handle(2));
    ctrl.propertySet(Property.CC, false, 0x00460000n);
    expect(ctrl.ready).toBe(false);
    expect(closed.sort()).toEqual(['1:controller reset (CC.EN cleared)', '2:controller reset (CC.EN cleared)']);
    expect(ctrl.ioQueues.size).toBe(0);
  });

  it('CC.SHN flushes the namespaces and reports SHST complete', async () => {
    const { ctrl, device } = setup();
    ctrl.propertySet(Property.CC, false, 0x00460001n);
    ctrl.propertySet(Property.CC, false, 0x00464001n);
    expect(Number(ctrl.propertyGet(Property.CSTS, false).value) & 0xc).toBe(0x4); // in progress
    await new Promise((r) => setImmediate(r));
    expect(Number(ctrl.propertyGet(Property.CSTS, false).value) & 0xc).toBe(0x8); // complete
    expect(device.stats.flushes).toBe(1);
  });
});

describe('Controller keep alive', () => {
  beforeEach(() => jest.useFakeTimers());
  afterEach(() => jest.useRealTimers());

  it('tears down after KATO + grace without Keep Alive, not before', () => {
    const { ctrl, closed, torn, handle } = setup({ katoMs: 5000 });
    ctrl.ioQueues.set(1, handle(1));
    jest.advanceTimersByTime(4000);
    ctrl.keepAlive();
    jest.advanceTimersByTime(5900);
    expect(torn).toHaveLength(0);
    jest.advanceTimersByTime(200);
    expect(torn).toEqual([ctrl]);
    expect(closed).toEqual(['1:keep alive timeout', '0:keep alive timeout']);
    expect(ctrl.alive).toBe(false);
    ctrl.teardown('again');
    expect(torn).toHaveLength(1);
  });

  it('KATO 0 never expires; Set Features KATO re-arms', () => {
    const { ctrl, torn } = setup({ katoMs: 0 });
    jest.advanceTimersByTime(3_600_000);
    expect(torn).toHaveLength(0);
    ctrl.setKato(100);
    jest.advanceTimersByTime(1200);
    expect(torn).toHaveLength(1);
  });
});

describe('Controller asynchronous events', () => {
  it('holds AERs until an enabled event, limits them to AERL + 1', async () => {
    const { ctrl } = setup();
    const held = Array.from({ length: MAX_AERS }, () => ctrl.addAer());
    expect(held.every((p) => p instanceof Promise)).toBe(true);
    expect(ctrl.addAer()).toBeNull();
    ctrl.raiseEvent(AsyncEvent.NS_ATTRIBUTE_CHANGED); // not enabled yet: dropped
    ctrl.asyncEventConfig = OAES_IO;
    ctrl.raiseEvent(AsyncEvent.NS_ATTRIBUTE_CHANGED);
    await expect(held[0]).resolves.toBe(0x00040002);
  });

  it('queues an event raised while no AER is outstanding', async () => {
    const { ctrl } = setup({ discovery: true });
    ctrl.asyncEventConfig = OAES_DISCOVERY;
    ctrl.raiseEvent(AsyncEvent.DISCOVERY_CHANGED);
    await expect(ctrl.addAer()).resolves.toBe(0x0070f002);
  });
});
