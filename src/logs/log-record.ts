/**
 * One relayed line, as the enclave sends it and `host` prints it: a JSON object per line.
 * `source` is who wrote it (the runtime, or the customer's command), `stream` where it wrote it,
 * `time` when the runtime read it (ms since the epoch), and `partial` marks every piece but the
 * last of a line that was longer than runtime.log_relay_max_line_bytes.
 */
export type LogSource = 'runtime' | 'app';
export type LogStream = 'stdout' | 'stderr';

export interface LogRecord {
  source: LogSource;
  stream: LogStream;
  line: string;
  time: number;
  partial?: true;
}

/** The record as one line of JSON, newline included. */
export function encodeLogRecord(record: LogRecord): string {
  return `${JSON.stringify(record)}\n`;
}

/**
 * Checks a line from the enclave and returns the record rebuilt from its known fields only, so
 * whatever else the sender put in (fields, a second object, a terminal escape) never reaches the
 * parent's stdout as anything but the string it was. Undefined when it is not a record.
 */
export function parseLogRecord(text: string): LogRecord | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return undefined;
  const { source, stream, line, time, partial } = value as Record<string, unknown>;
  if (
    (source !== 'runtime' && source !== 'app') ||
    (stream !== 'stdout' && stream !== 'stderr') ||
    typeof line !== 'string'
  )
    return undefined;
  if (typeof time !== 'number' || !Number.isFinite(time)) return undefined;
  return { source, stream, line, time, ...(partial === true ? { partial } : {}) };
}
