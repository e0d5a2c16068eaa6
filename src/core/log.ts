import { pino, type DestinationStream, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };

export const LOG_LEVELS: readonly LevelWithSilent[] = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'];

/**
 * Structured JSON logs on stderr, so stdout stays free for command output (`attest verify --json`).
 * Callers log fields, never secrets: no keys, document bytes or bodies are ever passed in.
 */
export function createLogger(
  level: LevelWithSilent = 'info',
  destination: number | NodeJS.WritableStream | DestinationStream = 2,
): Logger {
  const stream = typeof destination === 'number' ? pino.destination({ fd: destination, sync: true }) : destination;
  return pino({ level, base: { pid: process.pid }, timestamp: pino.stdTimeFunctions.isoTime }, stream);
}

/** A logger that drops everything, for library callers and tests that do not assert on logs. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
