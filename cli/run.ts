/**
 * The one place that maps errors to exit codes and prints them. Each command
 * module exports a yargs builder; run() parses, dispatches and exits.
 */
import { ReplError, asReplError } from '../common/errors';

export const EXIT = { OK: 0, FAILURE: 1, USAGE: 2, TIMEOUT: 3, UNREACHABLE: 4, INTERNAL: 70 } as const;

export function toExitCode(err: ReplError): number {
  switch (err.code) {
    case 'E_USAGE':
    case 'E_INVALID':
      return EXIT.USAGE;
    case 'E_TIMEOUT':
      return EXIT.TIMEOUT;
    case 'E_CLOSED':
      return EXIT.UNREACHABLE;
    case 'E_INTERNAL':
      return EXIT.INTERNAL;
    default:
      return EXIT.FAILURE;
  }
}

export function reportError(prog: string, err: unknown, verbose: boolean): number {
  const e = asReplError(err);
  if (e.code === 'E_INTERNAL') {
    process.stderr.write(`${prog}: internal error (this is a bug): ${e.message}\n`);
    if (e.stack) process.stderr.write(`${e.stack}\n`);
  } else {
    process.stderr.write(`${prog}: ${e.message}\n`);
    if (verbose && e.cause) process.stderr.write(`  cause: ${String((e.cause as Error).stack ?? e.cause)}\n`);
  }
  return toExitCode(e);
}
