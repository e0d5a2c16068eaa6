import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { once } from 'node:events';
import { CLI, REPO_ROOT } from './paths.js';

export interface CliRun {
  child: ChildProcessWithoutNullStreams;
  /** Every JSON log line so far, parsed. */
  logs: Array<Record<string, unknown>>;
  /** All of stderr and stdout so far, byte for byte (the supervised command's output included). */
  output(): Buffer;
  /** Lines of stderr that are not JSON (a stack trace would show up here). */
  otherLines(): string[];
  /** The first log line with `msg` (already logged or still to come); rejects if the process exits first. */
  waitFor(message: string, match?: (line: Record<string, unknown>) => boolean): Promise<Record<string, unknown>>;
  exited: Promise<number | null>;
}

/**
 * Spawns node with the real CLI and `args`, and keeps its JSON log lines.
 * `prefix` runs the CLI under a wrapper such as `unshare -m sh -c ...`; `command` replaces the whole
 * command line when the runtime is started some other way (a container engine running an image).
 */
export function runCli(
  args: string[],
  options: { env?: NodeJS.ProcessEnv; prefix?: string[]; command?: string[] } = {},
): CliRun {
  const argv = options.command ?? [...(options.prefix ?? []), process.execPath, CLI, ...args];
  const child = spawn(argv[0]!, argv.slice(1), { cwd: REPO_ROOT, env: { ...process.env, ...options.env } });
  const logs: Array<Record<string, unknown>> = [];
  const other: string[] = [];
  const raw: Buffer[] = [];
  const waiters: Array<{
    message: string;
    match: (line: Record<string, unknown>) => boolean;
    resolve: (line: Record<string, unknown>) => void;
  }> = [];
  let pending = '';
  child.stdout.on('data', (chunk: Buffer) => raw.push(chunk));
  child.stderr.on('data', (chunk: Buffer) => {
    raw.push(chunk);
    pending += chunk.toString('utf8');
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const text of lines) {
      if (!text.startsWith('{')) {
        if (text.trim() !== '') other.push(text);
        continue;
      }
      const line = JSON.parse(text) as Record<string, unknown>;
      logs.push(line);
      for (const waiter of waiters.filter((w) => w.message === line.msg && w.match(line))) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(line);
      }
    }
  });
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const waitFor = (message: string, match: (line: Record<string, unknown>) => boolean = () => true) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const seen = logs.find((line) => line.msg === message && match(line));
      if (seen) return resolve(seen);
      waiters.push({ message, match, resolve });
      void exited.then((code) =>
        reject(
          new Error(
            `exited with ${code} before logging "${message}":\n${Buffer.concat(raw).toString('utf8').slice(-4000)}`,
          ),
        ),
      );
    });
  return { child, logs, output: () => Buffer.concat(raw), otherLines: () => [...other], waitFor, exited };
}

/** The port of a `tcp:HOST:PORT` address as log lines give it. */
export function portOf(address: unknown): number {
  const port = Number(String(address).split(':').at(-1));
  if (!Number.isInteger(port) || port <= 0) throw new Error(`no port in ${String(address)}`);
  return port;
}

/** Polls `check` until it returns something other than undefined; a stuck state fails after `tries` rounds. */
export async function eventually<T>(
  check: () => Promise<T | undefined> | T | undefined,
  what: string,
  tries = 400,
): Promise<T> {
  let last: unknown;
  for (let i = 0; i < tries; i++) {
    try {
      const value = await check();
      if (value !== undefined) return value;
    } catch (error) {
      last = error;
    }
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`never ${what}${last ? `: ${(last as Error).message}` : ''}`);
}
