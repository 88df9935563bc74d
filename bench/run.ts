/**
 * `npm run bench`: runs every benchmark section in one process, prints tables
 * with ratios against baselines measured in the same run, and writes
 * bench-results/bench-<timestamp>.json. Sections: frontends, replication, recovery.
 * `node dist/bench/run.js --only frontends` runs one section.
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { benchFrontends, Result, WORKLOADS } from './frontends';
import { SECTIONS } from './sections';

function table(rows: string[][]): string {
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((c, i) => c.padEnd(widths[i] ?? 0)).join('  ')).join('\n');
}

export function frontendSummary(results: Result[]): { rows: string[][]; ratios: Record<string, Record<string, number>> } {
  const rows: string[][] = [['workload', 'nbdkit IOPS', 'agent NBD IOPS', 'agent NVMe IOPS', 'NBD/nbdkit', 'NVMe/nbdkit', 'NVMe/NBD']];
  const ratios: Record<string, Record<string, number>> = {};
  for (const w of WORKLOADS) {
    const get = (t: string): Result | undefined => results.find((r) => r.workload === w.name && r.target === t);
    const base = get('nbdkit-file');
    const nbd = get('repagent-nbd');
    const nvme = get('repagent-nvme');
    if (!base || !nbd || !nvme) continue;
    const r = {
      nbdVsNbdkit: Math.round((nbd.iops / base.iops) * 100) / 100,
      nvmeVsNbdkit: Math.round((nvme.iops / base.iops) * 100) / 100,
      nvmeVsNbd: Math.round((nvme.iops / nbd.iops) * 100) / 100,
    };
    ratios[w.name] = r;
    rows.push([w.name, String(base.iops), String(nbd.iops), String(nvme.iops), `${r.nbdVsNbdkit}x`, `${r.nvmeVsNbdkit}x`, `${r.nvmeVsNbd}x`]);
  }
  return { rows, ratios };
}

async function main(): Promise<void> {
  const onlyIdx = process.argv.indexOf('--only');
  const only = onlyIdx >= 0 ? process.argv[onlyIdx + 1] : undefined;
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blockrep-bench-'));
  const t0 = Date.now();
  const log = (s: string): void => void process.stderr.write(`[${((Date.now() - t0) / 1000).toFixed(0).padStart(4)} s] ${s}\n`);
  const report: Record<string, unknown> = {
    date: new Date().toISOString(),
    machine: { cpus: os.cpus().length, memoryGiB: Math.round(os.totalmem() / 2 ** 30), node: process.version },
    // the machine is shared with other work: the 1/5/15-minute load averages at start and end
    loadavg: { start: os.loadavg() } as Record<string, number[]>,
  };
  try {
    if (!only || only === 'frontends') {
      log('frontends: nbdkit baseline vs repagent NBD vs repagent NVMe/TCP');
      const { best, rounds } = await benchFrontends(dir, log);
      const { rows, ratios } = frontendSummary(best);
      process.stdout.write(`\nFront ends (same file kind, same run; best of ${rounds.length} alternating rounds, after a warm-up pass)\n${table(rows)}\n`);
      report.frontends = { results: best, ratios, rounds };
    }
    for (const section of SECTIONS) {
      if (only && only !== section.name) continue;
      log(`${section.name}: ${section.title}`);
      const out = await section.run(dir, log);
      process.stdout.write(`\n${section.title}\n${table(out.rows)}\n`);
      report[section.name] = out.json;
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
  (report.loadavg as Record<string, number[]>).end = os.loadavg();
  report.seconds = Math.round((Date.now() - t0) / 1000);
  const outDir = path.join(process.cwd(), 'bench-results');
  fs.mkdirSync(outDir, { recursive: true });
  const file = path.join(outDir, `bench-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  fs.writeFileSync(file, `${JSON.stringify(report, null, 2)}\n`);
  process.stdout.write(`\nJSON written to ${file}\n`);
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  });
}
