/**
 * repctl demo: the whole product on one machine with embedded defaults.
 * Starts rephub and repagent as child processes in a work directory, writes
 * through the agent's NBD export, shows replication status live until the
 * replica is in sync, runs a drill, prints the report path, and stops both
 * processes by PID (also on failure and Ctrl-C).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ChildProcess } from 'node:child_process';
import { NbdClient } from '../../common/nbd/client';
import { parseSize, formatBytes } from '../../common/size';
import { HubClient } from '../hub-client';
import { startBin, stop } from '../procs';
import { fetchVolume, VolumeStatusJson, waitSynced } from './status';
import { runDrill } from './drill';

export interface DemoOptions {
  dir?: string;
  size: string;
  keep: boolean;
}

const say = (s: string): void => void process.stdout.write(`${s}\n`);

interface Ready {
  http: { host: string; port: number };
  nbd: { host: string; port: number } | null;
  nvme: { host: string; port: number } | null;
  nqn?: string;
}

async function writeWorkload(nbd: { host: string; port: number }, size: number): Promise<number> {
  const client = await NbdClient.connect({ host: nbd.host, port: nbd.port, exportName: 'demo' });
  let written = 0;
  try {
    const chunk = 1024 * 1024;
    const total = Math.min(size / 4, 64 * 1024 * 1024);
    for (let off = 0; off < total; off += chunk) {
      const buf = Buffer.alloc(chunk, (off / chunk) & 0xff);
      buf.write(`blockrep demo block at ${off}\n`);
      await client.write(off, buf);
      written += chunk;
    }
    for (let i = 0; i < 256; i++) {
      const off = Math.floor((Math.random() * size) / 4096) * 4096;
      await client.write(off, Buffer.alloc(4096, i & 0xff));
      written += 4096;
    }
    await client.flush();
  } finally {
    await client.close();
  }
  return written;
}

export async function runDemo(options: DemoOptions): Promise<void> {
  const dir = options.dir ?? fs.mkdtempSync(path.join(os.tmpdir(), 'blockrep-demo-'));
  fs.mkdirSync(dir, { recursive: true });
  const size = parseSize(options.size);
  const children: ChildProcess[] = [];
  const cleanup = async (): Promise<void> => {
    for (const c of children.reverse()) await stop(c);
  };
  const onSignal = (): void => {
    void cleanup().then(() => process.exit(130));
  };
  process.once('SIGINT', onSignal);
  try {
    say(`demo directory: ${dir}`);
    const hub = await startBin('rephub', [
      '--listen', '127.0.0.1:0',
      '--data-dir', path.join(dir, 'hub'),
      '--nbd-listen', '127.0.0.1:0',
      '--nvme-listen', '127.0.0.1:0',
      '--log-level', 'warn',
    ]);
    children.push(hub.child);
    const hubReady = hub.ready as unknown as Ready;
    const hubUrl = `ws://${hubReady.http.host}:${hubReady.http.port}`;
    say(`rephub  pid ${hub.child.pid}: ${hubUrl} (replica NBD on port ${hubReady.nbd?.port})`);
    const agent = await startBin('repagent', [
      '--volume', `demo=${path.join(dir, 'demo.img')}:${size}`,
      '--nvme-listen', '127.0.0.1:0',
      '--nbd-listen', '127.0.0.1:0',
      '--state-dir', path.join(dir, 'agent'),
      '--hub', hubUrl,
      '--log-level', 'warn',
    ]);
    children.push(agent.child);
    const agentReady = agent.ready as unknown as Ready;
    if (!agentReady.nbd || !agentReady.nvme) throw new Error('agent did not report its listeners');
    say(`repagent pid ${agent.child.pid}: volume 'demo' (${formatBytes(size)})`);
    say(`  NVMe/TCP: nvme connect -t tcp -a ${agentReady.nvme.host} -s ${agentReady.nvme.port} -n ${agentReady.nqn}`);
    say(`  NBD:      qemu-io -f raw nbd://${agentReady.nbd.host}:${agentReady.nbd.port}/demo`);
    const client = new HubClient({ baseUrl: `http://${hubReady.http.host}:${hubReady.http.port}` });
    const line = (s: VolumeStatusJson): string =>
      `  ${new Date().toISOString()} state=${s.state} durable-epoch=${s.durableEpoch} points=${s.recoveryPoints} ` +
      `lag=${formatBytes(s.lagBytes)} rpo=${s.lagSeconds.toFixed(3)}s dirty=${formatBytes(s.agent?.dirtyBytes ?? 0)}` +
      (s.resync?.active ? ` ${s.resync.full ? 'initial-sync' : 'resync'}=${s.resync.percent.toFixed(1)}%` : '');
    // live status while the workload runs, twice a second
    const ticker = setInterval(() => {
      fetchVolume(client, 'demo').then((s) => say(line(s)), () => undefined);
    }, 500);
    let written: number;
    try {
      written = await writeWorkload(agentReady.nbd, size);
    } finally {
      clearInterval(ticker);
    }
    say(`wrote ${formatBytes(written)} through the agent's NBD export; waiting for the replica...`);
    let lastPrint = 0;
    const v = await waitSynced(client, 'demo', 120000, (s) => {
      if (Date.now() - lastPrint >= 500 || s.synced) {
        lastPrint = Date.now();
        say(line(s));
      }
    });
    say(`replica in sync at epoch ${v.latestPoint?.epoch}; compare it yourself:`);
    say(`  qemu-img compare -f raw -F raw ${path.join(dir, 'demo.img')} nbd://127.0.0.1:${hubReady.nbd?.port}/demo`);
    say('running a recovery drill (test failover on a scratch overlay, verified against hub checksums)...');
    const reportBase = path.join(dir, 'drill-demo');
    const drill = await runDrill({ client, volume: 'demo', at: 'latest', reportPath: reportBase, keep: false });
    say(`drill ${drill.passed ? 'PASSED' : 'FAILED'}: RTO ${drill.rto.exportReadyMs} ms to export, ${drill.rto.checkPassedMs ?? '-'} ms to verified; RPO ${drill.rpo.seconds === null ? 'unknown' : `${drill.rpo.seconds.toFixed(3)} s`}`);
    say(`drill report: ${drill.reportHtml}`);
    if (!drill.passed) throw new Error('demo drill failed');
  } finally {
    process.removeListener('SIGINT', onSignal);
    await cleanup();
    if (!options.keep && !options.dir) {
      for (const entry of ['hub', 'agent', 'demo.img']) fs.rmSync(path.join(dir, entry), { recursive: true, force: true });
    }
  }
}
