import { Writable } from 'node:stream';
import { createLogger, type Logger } from '../../src/core/log.js';

/** A logger at `level` whose JSON lines are kept for assertions. */
export function captureLogs(level: 'trace' | 'debug' | 'info' = 'debug'): {
  logger: Logger;
  lines: Array<Record<string, unknown>>;
  text: () => string;
} {
  const lines: Array<Record<string, unknown>> = [];
  const raw: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line) continue;
        raw.push(line);
        lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      done();
    },
  });
  return { logger: createLogger(level, sink), lines, text: () => raw.join('\n') };
}
