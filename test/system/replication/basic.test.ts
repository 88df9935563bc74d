/**
 * Replication end to end with the built binaries: rephub + repagent, writes
 * through NBD (qemu-io patterns) and NVMe/TCP (NvmeTcpHost), `repctl
 * wait-synced`, then `qemu-img compare` of the agent's volume file with the
 * hub's NBD export. Also checks the export against the written patterns and
 * the status/metrics surfaces the other tests rely on.
 */
import { NbdClient } from '../../../common/nbd/client';
import { NvmeTcpHost } from '../../../common/nvme-tcp/initiator';
import {
  AgentHandle,
  Cluster,
  HubHandle,
  K,
  MiB,
  Rng,
  assertIdentical,
  bytesReceived,
  hubMetrics,
  metricValue,
  qemuIo,
  repctlStatus,
  seedFrom,
  waitSynced,
} from '../../helpers/e2e';
import { describeWithTools } from '../../helpers/tools';
import { ReferenceChecker, newStats, sampleHub } from './lib/consistency';
import { Workload, nvmeTarget } from './lib/workload';

const SIZE = 32 * MiB;

describeWithTools(['qemu-img', 'qemu-io'])('replication end to end (basic)', () => {
  let cluster: Cluster;
  let hub: HubHandle;
  let agent: AgentHandle;

  beforeEach(async () => {
    cluster = new Cluster('e2e-basic-');
    hub = await cluster.startHub();
    agent = await cluster.startAgent({
      file: cluster.path('v1.img'),
      size: SIZE,
      stateDir: cluster.path('agent'),
      hubUrl: hub.url,
      referenceLog: cluster.path('ref.log'),
    });
  });
  afterEach(async () => {
    await cluster.close();
  });

  test('writes through NBD and NVMe/TCP reach the hub byte for byte', async () => {
    const seed = seedFrom('E2E_SEED');
    const rng = new Rng(seed);
    await waitSynced(hub); // initial sync of the empty volume
    // qemu-io patterns through the agent's NBD export
    const patterns: [number, number, number][] = [
      [0, 64 * K, 0x11],
      [1 * MiB + 4 * K, 4 * K, 0x22],
      [7 * MiB, 1 * MiB, 0x33],
      [SIZE - 128 * K, 128 * K, 0x44],
    ];
    await qemuIo(agent.nbd, 'v1', patterns.map(([o, l, p]) => `write -P 0x${p.toString(16)} ${o} ${l}`));
    await qemuIo(agent.nbd, 'v1', ['write -z 7M 64K', 'flush']);

    // NVMe/TCP: discovery finds the subsystem, then random writes + FUA + zeroes + flush
    const entries = await NvmeTcpHost.discover({ host: agent.nvme.host, port: agent.nvme.port });
    expect(entries.map((e) => e.subnqn)).toContain(agent.nqn);
    let nvmeData = 0;
    const host = await NvmeTcpHost.connect({ host: agent.nvme.host, port: agent.nvme.port, subnqn: agent.nqn, ioQueues: 2 });
    try {
      const w = Workload.start(nvmeTarget(host, agent.nsid), rng, {
        offset: 12 * MiB,
        length: 16 * MiB,
        depth: 8,
        maxLength: 256 * K,
        zeroes: 0.05,
        trim: 0.05,
        flush: 0.05,
        fua: 0.05,
        totalBytes: 12 * MiB,
      });
      await w.done;
      w.expectClean();
      nvmeData = w.dataBytes;
      await host.write(agent.nsid, 2 * MiB, Buffer.alloc(64 * K, 0x55), { fua: true });
      await host.flush(agent.nsid);
    } finally {
      await host.close();
    }

    await waitSynced(hub);
    await assertIdentical(cluster.path('v1.img'), hub);
    // the hub's export shows the patterns (qemu-io read -P verifies the bytes)
    await qemuIo(hub.nbd, 'v1', [...patterns.filter(([o]) => o !== 7 * MiB).map(([o, l, p]) => `read -P 0x${p.toString(16)} ${o} ${l}`), 'read -P 0 7M 64K', 'read -P 0x33 7232K 960K', 'read -P 0x55 2M 64K'], true);
    // and it is a recovery point the reference log explains, pinned at the hub's latest epoch
    const checker = new ReferenceChecker(cluster.path('ref.log'), SIZE);
    try {
      const stats = newStats();
      const sample = await sampleHub(hub, checker, stats, `basic (E2E_SEED=${seed})`);
      expect(sample?.exactEpoch).toBeDefined();
    } finally {
      checker.close();
    }

    const status = await repctlStatus(hub);
    expect(status.volumes.map((v) => [v.name, v.state, v.synced])).toEqual([['v1', 'in-sync', true]]);
    const metrics = await hubMetrics(hub);
    expect(metricValue(metrics, 'rephub_connected_agents')).toBe(1);
    // every payload byte written went over the wire (initial sync: all zero regions, no payload)
    const patternBytes = patterns.reduce((n, [, l]) => n + l, 0);
    expect(await bytesReceived(hub)).toBeGreaterThanOrEqual(patternBytes + nvmeData + 64 * K);
    // a write straight through NbdClient after the sync is replicated too
    const nbd = await NbdClient.connect({ host: agent.nbd.host, port: agent.nbd.port, exportName: 'v1' });
    await nbd.write(30 * MiB, Buffer.alloc(4 * K, 0x66));
    await nbd.close();
    await waitSynced(hub);
    await assertIdentical(cluster.path('v1.img'), hub);
  }, 90_000);
});
