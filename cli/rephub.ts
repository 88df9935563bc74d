#!/usr/bin/env node
/**
 * rephub: receive replication streams, keep crash-consistent replicas, serve
 * recovery exports. yargs wiring only; prints "READY {json}" on stdout.
 */
import * as fs from 'node:fs';
import yargs from 'yargs';
import { hideBin } from 'yargs/helpers';
import { configureThreadPool } from '../common/threadpool';
import { createHub } from '../hub';
import { createLogger } from '../common/log';
import { ReplError } from '../common/errors';
import { parseDuration, parseListen, parseSizeOption } from './args';
import { reportError, EXIT } from './run';
import { readSecret } from './repagent';

export async function main(argv: string[]): Promise<number> {
  const args = await yargs(argv)
    .scriptName('rephub')
    .usage('$0 [options]\n\nReceive replication streams from repagents, keep point-in-time replicas, serve recovery exports.')
    .option('listen', { type: 'string', default: '127.0.0.1:7400', describe: 'HTTP/WebSocket listener HOST:PORT (agents, repctl, /metrics)' })
    .option('data-dir', { type: 'string', default: './rephub-data', describe: 'journals, base images, metadata' })
    .option('nbd-listen', { type: 'string', default: '127.0.0.1:10810', describe: "NBD listener for replicas and views, or 'off'" })
    .option('nvme-listen', { type: 'string', default: '127.0.0.1:4430', describe: "NVMe/TCP listener for recovery views, or 'off'" })
    .option('advertise-address', { type: 'string', describe: 'address put in view NBD URIs and the NVMe discovery log (default: the listen host)' })
    .option('token-file', { type: 'string', describe: 'file holding the token agents must present' })
    .option('tls-cert', { type: 'string', describe: 'PEM certificate: serve https/wss' })
    .option('tls-key', { type: 'string', describe: 'PEM private key for --tls-cert' })
    .option('retention', { type: 'string', default: '1h', describe: 'keep every recovery point this long' })
    .option('retention-long', { type: 'string', default: '24h', describe: 'then keep one point per minute this long' })
    .option('journal-bytes', { type: 'string', default: '8G', describe: 'journal space per volume; history is shortened (oldest first) when full' })
    .option('journal-io', { choices: ['direct', 'buffered'] as const, default: 'direct' as const, describe: 'journal appends: O_DIRECT where the file system allows it, or through the page cache' })
    .option('log-level', { type: 'string', default: 'info', describe: 'trace|debug|info|warn|error' })
    .strict()
    .help()
    .fail((msg, err) => {
      throw err ?? new ReplError('E_USAGE', `${msg}\nTry 'rephub --help'.`);
    })
    .parseAsync();
  if (Boolean(args['tls-cert']) !== Boolean(args['tls-key'])) {
    throw new ReplError('E_USAGE', '--tls-cert and --tls-key go together');
  }
  const listen = parseListen(args.listen, '--listen');
  if (!listen) throw new ReplError('E_USAGE', "--listen cannot be 'off'");
  const logger = createLogger({ name: 'rephub', level: args['log-level'] });
  const tls =
    args['tls-cert'] && args['tls-key']
      ? { cert: readFile(args['tls-cert'], '--tls-cert'), key: readFile(args['tls-key'], '--tls-key') }
      : undefined;
  const hub = createHub({
    listen,
    dataDir: args['data-dir'],
    nbdListen: parseListen(args['nbd-listen'], '--nbd-listen'),
    nvmeListen: parseListen(args['nvme-listen'], '--nvme-listen'),
    advertiseAddress: args['advertise-address'],
    token: args['token-file'] ? readSecret(args['token-file'], '--token-file') : undefined,
    tls,
    retentionMs: parseDuration(args.retention, '--retention'),
    retentionLongMs: parseDuration(args['retention-long'], '--retention-long'),
    journalBytes: parseSizeOption(args['journal-bytes'], '--journal-bytes'),
    journalDirectIo: args['journal-io'] === 'direct',
    logger,
  });
  const ports = await hub.start();
  const nbdListen = parseListen(args['nbd-listen'], '--nbd-listen');
  const nvmeListen = parseListen(args['nvme-listen'], '--nvme-listen');
  const ready = {
    hubId: hub.status().hubId,
    http: { host: listen.host, port: ports.httpPort },
    nbd: nbdListen && ports.nbdPort !== null ? { host: nbdListen.host, port: ports.nbdPort } : null,
    nvme: nvmeListen && ports.nvmePort !== null ? { host: nvmeListen.host, port: ports.nvmePort } : null,
  };
  process.stdout.write(`READY ${JSON.stringify(ready)}\n`);
  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  logger.info('shutting down');
  await hub.stop();
  logger.flush();
  return EXIT.OK;
}

function readFile(file: string, option: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new ReplError('E_USAGE', `${option}: cannot read ${file}: ${(err as Error).message}`);
  }
}

if (require.main === module) {
  // before any asynchronous fs work: libuv sizes its pool on first use
  configureThreadPool();
  main(hideBin(process.argv)).then(
    (code) => process.exit(code),
    (err) => process.exit(reportError('rephub', err, true)),
  );
}
