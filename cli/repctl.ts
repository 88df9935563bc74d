#!/usr/bin/env node
/**
 * repctl: operator CLI. yargs wiring only; each command is a thin adapter over
 * cli/commands/*. This file (via run()) is the only place that exits.
 */
import yargs, { Argv } from 'yargs';
import { hideBin } from 'yargs/helpers';
import { configureThreadPool } from '../common/threadpool';
import { HubClient } from './hub-client';
import { parseDuration, parseHubUrl } from './args';
import { fetchStatus, formatStatusTable, waitSynced } from './commands/status';
import { reportError, EXIT } from './run';
import { ReplError } from '../common/errors';
import { registerRecoveryCommands } from './commands/recovery';
import { runDemo } from './commands/demo';

function hubOption<T>(y: Argv<T>) {
  return y.option('hub', {
    type: 'string',
    demandOption: true,
    describe: 'hub URL, the same the agent uses (ws://, wss://, http:// or https://)',
  });
}

export function clientFor(hub: string): HubClient {
  return new HubClient({ baseUrl: parseHubUrl(hub).http });
}

export async function main(argv: string[]): Promise<number> {
  let exitCode: number = EXIT.OK;
  const cli = yargs(argv)
    .scriptName('repctl')
    .usage('$0 <command> [options]')
    .option('verbose', { type: 'boolean', default: false, describe: 'print error details' })
    .command(
      'status',
      'show replication state of every volume on a hub',
      (y) => hubOption(y).option('json', { type: 'boolean', default: false, describe: 'machine-readable output' }),
      async (args) => {
        const status = await fetchStatus(clientFor(args.hub));
        process.stdout.write(args.json ? `${JSON.stringify(status, null, 2)}\n` : formatStatusTable(status));
      },
    )
    .command(
      'wait-synced',
      "wait until the hub's latest recovery point holds everything the agent acknowledged",
      (y) =>
        hubOption(y)
          .option('volume', { type: 'string', demandOption: true, describe: 'volume name' })
          .option('timeout', { type: 'string', default: '300s', describe: 'give up after this long (e.g. 30s, 5m)' })
          .option('json', { type: 'boolean', default: false }),
      async (args) => {
        const timeoutMs = parseDuration(args.timeout, '--timeout');
        const v = await waitSynced(clientFor(args.hub), args.volume, timeoutMs);
        process.stdout.write(
          args.json
            ? `${JSON.stringify(v, null, 2)}\n`
            : `volume ${v.name} in sync at epoch ${v.latestPoint?.epoch ?? v.durableEpoch}\n`,
        );
      },
    )
    .command(
      'demo',
      'run a hub and an agent locally on embedded defaults, replicate, and run a drill',
      (y) =>
        y
          .option('dir', { type: 'string', describe: 'work directory (default: a new temporary directory)' })
          .option('size', { type: 'string', default: '256M', describe: 'demo volume size' })
          .option('keep', { type: 'boolean', default: false, describe: 'keep the work directory' }),
      async (args) => {
        await runDemo({ dir: args.dir, size: args.size, keep: args.keep });
      },
    );
  registerRecoveryCommands(cli, clientFor, (code) => (exitCode = code));
  cli
    .demandCommand(1, 'name a command (see --help)')
    .strict()
    .help()
    .fail((msg, err) => {
      // throwing stops yargs from running the handler with incomplete arguments
      throw err ?? new ReplError('E_USAGE', `${msg}\nTry 'repctl --help'.`);
    });
  try {
    await cli.parseAsync();
  } catch (err) {
    const verbose = argv.includes('--verbose');
    return reportError('repctl', err, verbose);
  }
  return exitCode;
}

if (require.main === module) {
  // before any asynchronous fs work: libuv sizes its pool on first use
  configureThreadPool();
  main(hideBin(process.argv)).then(
    (code) => process.exit(code),
    (err) => process.exit(reportError('repctl', err, true)),
  );
}
