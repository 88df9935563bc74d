/**
 * Binding a TCP listener, shared by the NVMe/TCP target and the NBD server:
 * a failed bind becomes ReplError('E_IO') naming the address (EADDRINUSE
 * reaches the operator as one clear line), later listener errors are logged,
 * and the bound address is read back (port 0 picks a free port).
 */
import * as net from 'node:net';
import { ReplError } from './errors';
import type { Logger } from './log';

export interface BoundAddress {
  host: string;
  port: number;
}

export function serverAddress(server: net.Server | null): BoundAddress | null {
  const a = server?.address();
  if (!a || typeof a === 'string') return null;
  return { host: a.address, port: a.port };
}

/** Resolves with the bound address; rejects with E_IO when the bind fails. */
export function listenOn(server: net.Server, host: string, port: number, logger: Logger, what: string): Promise<BoundAddress> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => {
      reject(new ReplError('E_IO', `${what}: cannot listen on ${host}:${port}: ${err.message}`, { cause: err }));
    };
    server.once('error', onError);
    server.listen(port, host, () => {
      server.off('error', onError);
      server.on('error', (err) => logger.error({ err }, `${what} listener error`));
      const addr = serverAddress(server);
      if (!addr) return reject(ReplError.internal(`${what}: listening socket has no address`));
      logger.info(addr, `${what} listening`);
      resolve(addr);
    });
  });
}
