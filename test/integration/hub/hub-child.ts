/**
 * Child-process entry for crash tests: runs a hub on 127.0.0.1:0 over the
 * data directory given as argv[2] and prints "READY <json>" with its ports.
 * Optional argv[3]: JSON with extra HubConfig fields. SIGTERM stops it cleanly.
 */
import { createLogger } from '../../../common/log';
import { createHub } from '../../../hub';

async function main(): Promise<void> {
  const dataDir = process.argv[2];
  if (!dataDir) throw new Error('usage: hub-child.ts DATA_DIR [CONFIG_JSON]');
  const extra = process.argv[3] ? (JSON.parse(process.argv[3]) as Record<string, unknown>) : {};
  const hub = createHub({
    listen: { host: '127.0.0.1', port: 0 },
    dataDir,
    nbdListen: null,
    logger: createLogger({ level: process.env.REP_LOG_LEVEL ?? 'warn', name: 'hub-child' }),
    ...extra,
  });
  const ports = await hub.start();
  process.stdout.write(`READY ${JSON.stringify(ports)}\n`);
  process.on('SIGTERM', () => {
    void hub.stop().then(() => process.exit(0));
  });
}

main().catch((err: unknown) => {
  process.stderr.write(`hub-child failed: ${String((err as Error).stack ?? err)}\n`);
  process.exit(1);
});
