/**
 * Structured logging. Library code takes a Logger and never calls console.*.
 * The CLI builds the root logger with pino (JSON lines on stderr); tests use
 * silentLogger or a level from REP_LOG_LEVEL.
 */
import pino from 'pino';

export type Logger = pino.Logger;

export interface LoggerOptions {
  level?: string;
  name?: string;
  /** File descriptor to write JSON lines to (default 2, stderr). */
  fd?: number;
}

export function createLogger(options: LoggerOptions = {}): Logger {
  const level = options.level ?? process.env.REP_LOG_LEVEL ?? 'info';
  return pino(
    { name: options.name, level, base: { pid: process.pid } },
    pino.destination({ fd: options.fd ?? 2, sync: false }),
  );
}

/** A logger that drops everything unless REP_LOG_LEVEL is set (handy when debugging tests). */
export function testLogger(name = 'test'): Logger {
  const level = process.env.REP_LOG_LEVEL;
  if (!level) return pino({ level: 'silent' });
  return pino({ name, level }, pino.destination({ fd: 2, sync: true }));
}

export const silentLogger: Logger = pino({ level: 'silent' });
