#!/usr/bin/env node
/**
 * repagent: serve volumes over NVMe/TCP and NBD, replicate them to a hub.
 * yargs wiring only; prints one "READY {json}" line on stdout when listening
 * (tests and the demo read the bound ports from it), logs JSON on stderr.
 */
import * as fs from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { configureThreadPool } from '../common/threadpool';
import { createAgent } from '../agent';
import { createLogger } from '../common/log';
import { ReplError } from '../common/errors';
import { parseHubUrl, parseListen, parseSizeOption, parseVolume } from './args';
import { reportError, EXIT } from './run';
import { attachProgress } from './progress';

export async function main(argv: string[]): Promise<number> {
  const args = await yargs(argv)
    .scriptName('repagent')
    .usage('$0 --volume NAME=PATH[:SIZE] [--volume ...] [options]\n\nServe volumes over NVMe/TCP and NBD; with --hub, replicate every write to rephub.')
    .option('volume', { type: 'string', array: true, demandOption: true, describe: 'NAME=PATH[:SIZE]; a missing file is created sparse at SIZE (K/M/G/T suffixes)' })
    .option('nvme-listen', { type: 'string', default: '127.0.0.1:4420', describe: "NVMe/TCP listener HOST:PORT, or 'off'" })
    .option('nbd-listen', { type: 'string', default: '127.0.0.1:10809', describe: "NBD listener HOST:PORT, or 'off'" })
    .option('nqn', { type: 'string', describe: 'subsystem NQN (default: generated once and kept in the state dir)' })
    .option('advertise-address', { type: 'string', describe: 'address put in the NVMe discovery log (default: the address the host connected to)' })
    .option('state-dir', { type: 'string', default: './repagent-state', describe: 'identity, dirty bitmap and activity log' })
    .option('hub', { type: 'string', describe: 'hub URL (ws://HOST:PORT or wss://...); without it no replication' })
    .option('token-file', { type: 'string', describe: 'file holding the shared token presented to the hub' })
    .option('ca', { type: 'string', describe: 'CA certificate (PEM) to verify a wss:// hub' })
    .option('ack', { choices: ['async', 'sync'] as const, default: 'async' as const, describe: 'async: complete writes locally; sync: complete when the hub made them durable' })
    .option('queue-bytes', { type: 'string', default: '256M', describe: 'bound of the in-memory send queue; beyond it only the bitmap tracks writes' })
    .option('resync-rate', { type: 'string', default: '0', describe: 'resync/initial-sync throttle in bytes per second (0 = unlimited)' })
    .option('region-size', { type: 'string', default: '64K', describe: 'dirty bitmap granularity (power of two)' })
    .option('force-full-sync', { type: 'boolean', default: false, describe: 'operator override: replace the replica with a full copy' })
    .option('reference-log', { type: 'string', hidden: true, describe: 'test mode: record every acknowledged write and epoch here' })
    .option('log-level', { type: 'string', default: 'info', describe: 'trace|debug|info|warn|error' })
    .strict()
    .help()
    .fail((msg, err) => {
      throw err ?? new ReplError('E_USAGE', `${msg}\nTry 'repagent --help'.`);
    })
    .parseAsync();
  const volumes = args.volume.map(parseVolume);
  const names = new Set<string>();
  for (const v of volumes) {
    if (names.has(v.name)) throw new ReplError('E_USAGE', `--volume: name '${v.name}' given twice`);
    names.add(v.name);
  }
  const logger = createLogger({ name: 'repagent', level: args['log-level'] });
  let token: string | undefined;
  if (args['token-file']) token = readSecret(args['token-file'], '--token-file');
  const regionSize = parseSizeOption(args['region-size'], '--region-size');
  if (regionSize < 4096 || (regionSize & (regionSize - 1)) !== 0) {
    throw new ReplError('E_USAGE', `--region-size must be a power of two >= 4K, got ${regionSize}`);
  }
  const agent = createAgent({
    stateDir: args['state-dir'],
    volumes,
    nvmeListen: parseListen(args['nvme-listen'], '--nvme-listen'),
    nbdListen: parseListen(args['nbd-listen'], '--nbd-listen'),
    nqn: args.nqn,
    advertiseAddress: args['advertise-address'],
    hub: args.hub
      ? {
          url: parseHubUrl(args.hub).replicate,
          token,
          caFile: args.ca,
          ackMode: args.ack,
          queueBytes: parseSizeOption(args['queue-bytes'], '--queue-bytes'),
          resyncRate: parseSizeOption(args['resync-rate'], '--resync-rate'),
          regionSize,
          forceFullSync: args['force-full-sync'],
        }
      : undefined,
    referenceLog: args['reference-log'],
    logger,
  });
  const ready = await agent.start();
  const detachProgress = attachProgress(agent);
  process.stdout.write(`READY ${JSON.stringify(ready)}\n`);
  await new Promise<void>((resolve) => {
    const onSignal = (sig: string): void => {
      logger.info({ signal: sig }, 'shutting down');
      resolve();
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
  });
  detachProgress();
  await agent.stop();
  logger.flush();
  return EXIT.OK;
}

export function readSecret(file: string, option: string): string {
  try {
    const text = fs.readFileSync(file, 'utf8').trim();
    if (!text) throw new ReplError('E_USAGE', `${option}: ${file} is empty`);
    return text;
  } catch (err) {
    if (err instanceof ReplError) throw err;
    throw new ReplError('E_USAGE', `${option}: cannot read ${file}: ${(err as Error).message}`);
  }
}

if (require.main === module) {
  // before any asynchronous fs work: libuv sizes its pool on first use
  configureThreadPool();
  main(hideBin(process.argv)).then(
    (code) => process.exit(code),
    (err) => process.exit(reportError('repagent', err, true)),
  );
}
