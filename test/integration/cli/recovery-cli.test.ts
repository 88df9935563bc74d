/**
 * repctl's recovery commands against a fake hub (real HTTP + real NBD on
 * 127.0.0.1:0): output, --json shapes, exit codes. The harness wires yargs the
 * way cli/repctl.ts does and maps errors with run.ts's toExitCode.
 */
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import yargs from 'yargs';
import { ReplError, asReplError } from '../../../common/errors';
import { parseHubUrl } from '../../../cli/args';
import { HubClient } from '../../../cli/hub-client';
import { toExitCode } from '../../../cli/run';
import { registerRecoveryCommands } from '../../../cli/commands/recovery';
import { DrillReport } from '../../../cli/commands/drill';
import { useTmpDir } from '../../helpers/tmpdir';
import { FakeRecoveryHub, VOLUME_SIZE } from './fake-recovery-hub';

class Out {
  text = '';
  write(s: string): boolean {
    this.text += s;
    return true;
  }
}

interface Run {
  code: number;
  out: string;
  err: string;
}

async function repctl(args: string[], cwd: string): Promise<Run> {
  const out = new Out();
  const err = new Out();
  let code = 0;
  const cli = yargs(args).scriptName('repctl').exitProcess(false);
  registerRecoveryCommands(cli, (hub) => new HubClient({ baseUrl: parseHubUrl(hub).http, timeoutMs: 5000 }), (c) => (code = c), { out, err, cwd });
  cli
    .demandCommand(1)
    .strict()
    .fail((msg, e) => {
      // throwing (not just recording) stops yargs from running the handler anyway
      throw e ?? new ReplError('E_USAGE', msg);
    });
  try {
    await cli.parseAsync();
  } catch (e) {
    const r = asReplError(e);
    err.write(`repctl: ${r.message}\n`);
    code = toExitCode(r);
  }
  return { code, out: out.text, err: err.text };
}

async function closedPort(): Promise<number> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const port = (srv.address() as net.AddressInfo).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

describe('repctl recovery commands against a hub', () => {
  const tmp = useTmpDir('repctl-recovery-');
  let hub: FakeRecoveryHub;
  const run = (...args: string[]): Promise<Run> => repctl([...args, '--hub', hub.url], tmp.path);

  beforeEach(async () => {
    hub = new FakeRecoveryHub();
    await hub.start();
  });
  afterEach(async () => {
    await hub.stop();
  });

  test('points: table and --json', async () => {
    const human = await run('points', '--volume', 'vol1');
    expect(human.code).toBe(0);
    expect(human.out).toContain('vol1: 3 recovery point(s) from 2024-05-01T09:59:58.000Z to 2024-05-01T10:00:00.000Z');
    expect(human.out).toMatch(/42\s+1000\s+2024-05-01T10:00:00.000Z/);
    const json = await run('points', '--volume', 'vol1', '--json');
    expect(JSON.parse(json.out)).toEqual({ volume: 'vol1', points: expect.arrayContaining([hub.point]) });
  });

  test('failover --test, views, discard: NBD URI and NVMe coordinates, JSON shapes', async () => {
    const created = await run('failover', '--volume', 'vol1', '--test', '--at', '42');
    expect(created.code).toBe(0);
    expect(hub.requests).toContain('POST /v1/views');
    expect(created.out).toContain(`nbd://127.0.0.1:`);
    expect(created.out).toContain('traddr 127.0.0.1  trsvcid 4430  nqn nqn.2024-05.io.blockrep:vol1-test-1');
    expect(created.out).toContain('repctl discard vol1-test-1');

    const listed = await run('views', '--volume', 'vol1', '--json');
    const views = (JSON.parse(listed.out) as { views: { id: string; nbd: { uri: string }; nvme: { nqn: string } }[] }).views;
    expect(views.map((v) => v.id)).toEqual(['vol1-test-1']);
    expect(hub.requests).toContain('GET /v1/views?volume=vol1');
    expect((await run('views')).out).toContain('view vol1-test-1  (volume vol1, test, writable)');

    const discarded = await run('discard', 'vol1-test-1', '--json');
    expect(JSON.parse(discarded.out)).toEqual({ discarded: 'vol1-test-1', overlayBytes: 4096 });
    expect((await run('views')).out).toBe('no views\n');
    const again = await run('discard', 'vol1-test-1');
    expect(again.code).toBe(1);
    expect(again.err).toContain("unknown view 'vol1-test-1'");
  });

  test('failover (real) fences, a second one is busy, failback ships the delta', async () => {
    const first = await run('failover', '--volume', 'vol1');
    expect(first.code).toBe(0);
    expect(first.out).toContain('volume vol1 FAILED OVER to epoch 42');
    expect(first.out).toContain('nvme connect -t tcp -a 127.0.0.1 -s 4430 -n nqn.2024-05.io.blockrep:vol1-failover-1');
    const busy = await run('failover', '--volume', 'vol1', '--json');
    expect(busy.code).toBe(1);
    expect(busy.err).toContain('already failed over');

    const back = await run('failback', '--volume', 'vol1', '--timeout', '30s');
    expect(back.code).toBe(0);
    expect(back.out).toContain('failback of vol1: done');
    expect(back.out).toContain('shipped   256 KiB of a 1.0 MiB volume (25.00 %)');
    expect(back.err).toContain('failback: shipping');
  });

  test('failback --json prints the final FailbackJson', async () => {
    hub.failedOver = true;
    const r = await run('failback', '--volume', 'vol1', '--json');
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toMatchObject({ volume: 'vol1', state: 'done', shippedBytes: 4 * 65536, volumeSize: VOLUME_SIZE });
  });

  test('drill with the default check reads the view over NBD, passes, reports, and discards', async () => {
    const r = await run('drill', '--volume', 'vol1', '--report', 'reports/d1', '--json');
    expect(r.code).toBe(0);
    const printed = JSON.parse(r.out) as { files: { json: string; html: string }; report: DrillReport };
    expect(printed.report).toMatchObject({ result: 'passed', check: { kind: 'checksum', regions: 16, bytes: VOLUME_SIZE, mismatchCount: 0 } });
    expect(printed.report.rpo.seconds).toBeCloseTo(0.5);
    expect(printed.files.json).toBe(path.join(tmp.path, 'reports/d1.json'));
    expect(JSON.parse(fs.readFileSync(printed.files.json, 'utf8'))).toMatchObject({ result: 'passed' });
    expect(fs.readFileSync(printed.files.html, 'utf8')).toContain('<polyline');
    expect(hub.views.size).toBe(0);
    expect(hub.requests).toEqual(expect.arrayContaining(['POST /v1/views', 'GET /v1/views/vol1-test-1/checksums', 'DELETE /v1/views/vol1-test-1']));
  });

  test('drill: a region that does not match fails with exit 1 and the view is gone', async () => {
    hub.corruptRegion = 5;
    const r = await run('drill', '--volume', 'vol1');
    expect(r.code).toBe(1);
    expect(r.out).toContain('drill of vol1: FAILED');
    expect(r.out).toContain('1 of 16 regions differ (first: region 5)');
    expect(hub.views.size).toBe(0);
    expect(fs.readdirSync(tmp.path).filter((f) => f.startsWith('drill-vol1-'))).toHaveLength(2);
  });

  test('drill --check runs a shell command with the view in its environment', async () => {
    const ok = await run('drill', '--volume', 'vol1', '--check', 'test "$REP_VOLUME" = vol1 && test "$REP_VIEW_ID" = vol1-test-1 && echo "uri=$REP_NBD_URI"');
    expect(ok.code).toBe(0);
    expect(ok.err).toMatch(/uri=nbd:\/\/127\.0\.0\.1:\d+\/vol1-test-1/);
    const bad = await run('drill', '--volume', 'vol1', '--check', 'exit 7', '--keep');
    expect(bad.code).toBe(1);
    expect(bad.out).toContain('`exit 7` exit 7');
    expect([...hub.views.keys()]).toEqual(['vol1-test-2']); // --keep
  });

  test('errors: unknown volume (1), point outside retention (1), bad --at (2), hub unreachable (4)', async () => {
    const unknown = await run('points', '--volume', 'nope');
    expect(unknown.code).toBe(1);
    expect(unknown.err).toContain("unknown volume 'nope'");
    const drillUnknown = await run('drill', '--volume', 'nope');
    expect(drillUnknown.code).toBe(1);
    expect(fs.readdirSync(tmp.path)).toEqual([]); // nothing to report about a volume that does not exist

    const range = await run('failover', '--volume', 'vol1', '--test', '--at', '999');
    expect(range.code).toBe(1);
    expect(range.err).toContain('outside the retention window');

    const usage = await run('failover', '--volume', 'vol1', '--at', 'yesterday');
    expect(usage.code).toBe(2);
    expect(usage.err).toContain("--at: expected 'latest'");

    const down = await repctl(['views', '--hub', `ws://127.0.0.1:${await closedPort()}`], tmp.path);
    expect(down.code).toBe(4);
    expect(down.err).toContain('hub unreachable');
    const missing = await repctl(['failover', '--hub', hub.url], tmp.path);
    expect(missing).toEqual({ code: 2, err: 'repctl: Missing required argument: volume\n', out: '' });
    expect(missing.err).toContain('volume');
  });
});
