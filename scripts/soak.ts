/**
 * Soak: the randomised fault scenarios of test/system/replication for many
 * trials, against the built binaries. Run with
 *
 *   npm run soak -- --trials 200 --seed 42 [--scenario agent-kill|hub-kill|network|all] [--keep] [--quiet]
 *
 * Every trial ends with wait-synced + qemu-img compare; reference-log samples
 * are taken throughout. On failure it prints the seed to replay and keeps the
 * work directory (volume, hub data, reference log, process logs). Exit code:
 * 0 all scenarios passed, 1 a scenario failed, 2 bad arguments.
 */
import { Cluster, MiB } from '../test/helpers/e2e';
import { ScenarioReport, agentKillScenario, hubKillScenario, networkScenario } from '../test/system/replication/lib/scenarios';

const SCENARIOS: Record<string, (c: Cluster, o: { trials: number; seed: number; log?: (l: string) => void }) => Promise<ScenarioReport>> = {
  'agent-kill': agentKillScenario,
  'hub-kill': hubKillScenario,
  network: networkScenario,
};

interface Args {
  trials: number;
  seed: number;
  scenarios: string[];
  keep: boolean;
  quiet: boolean;
}

function usage(message: string): never {
  process.stderr.write(`soak: ${message}\nusage: npm run soak -- [--trials N] [--seed S] [--scenario ${Object.keys(SCENARIOS).join('|')}|all] [--keep] [--quiet]\n`);
  process.exit(2);
}

function parseArgs(argv: string[]): Args {
  const a: Args = { trials: 50, seed: Date.now() % 1_000_000_007, scenarios: Object.keys(SCENARIOS), keep: false, quiet: false };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) usage(`${flag} needs a value`);
      return v;
    };
    const int = (v: string): number => {
      const n = Number(v);
      if (!Number.isSafeInteger(n) || n < 0) usage(`${flag}: '${v}' is not a non-negative integer`);
      return n;
    };
    if (flag === '--trials') a.trials = int(value());
    else if (flag === '--seed') a.seed = int(value());
    else if (flag === '--scenario') {
      const v = value();
      if (v !== 'all' && !(v in SCENARIOS)) usage(`unknown scenario '${v}'`);
      a.scenarios = v === 'all' ? Object.keys(SCENARIOS) : [v];
    } else if (flag === '--keep') a.keep = true;
    else if (flag === '--quiet') a.quiet = true;
    else if (flag === '--help' || flag === '-h') usage('help');
    else usage(`unknown argument '${flag}'`);
  }
  if (a.trials < 1) usage('--trials must be at least 1');
  return a;
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  process.stdout.write(`soak: seed ${args.seed}, ${args.trials} trials per scenario: ${args.scenarios.join(', ')}\n`);
  for (const name of args.scenarios) {
    const cluster = new Cluster(`soak-${name}-`);
    const log = args.quiet ? undefined : (line: string): void => void process.stdout.write(`${line}\n`);
    try {
      const r = await SCENARIOS[name]!(cluster, { trials: args.trials, seed: args.seed, log });
      const resync = r.resyncBytes.length ? `, resync max ${(Math.max(...r.resyncBytes) / MiB).toFixed(2)} MiB` : '';
      process.stdout.write(
        `soak: ${name} passed: ${r.trials} trials in ${(r.elapsedMs / 1000).toFixed(1)} s, ${r.samples.samples} consistency samples ` +
          `(${r.samples.duringResync} inside a resync group, ${r.samples.skipped} skipped)${resync}\n`,
      );
      if (args.keep) process.stdout.write(`soak: ${name} work directory kept: ${cluster.keepArtifacts()}\n`);
    } catch (err) {
      const dir = cluster.keepArtifacts();
      process.stderr.write(`soak: ${name} FAILED (replay: npm run soak -- --scenario ${name} --seed ${args.seed} --trials ${args.trials})\n${(err as Error).stack ?? err}\nartifacts: ${dir}\n`);
      await cluster.close();
      return 1;
    }
    await cluster.close();
  }
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`soak: ${(err as Error).stack ?? err}\n`);
    process.exit(1);
  },
);
