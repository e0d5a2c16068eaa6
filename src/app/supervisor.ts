import { spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { constants } from 'node:os';
import type { Logger } from '../core/log.js';
import { errorCode } from '../core/errors.js';

export type SupervisorOptions = Pick<SpawnOptions, 'cwd' | 'env' | 'uid' | 'gid'> & {
  execThrough?: string;
  output?: ChildOutput | undefined;
};

const FORWARDED: readonly NodeJS.Signals[] = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGUSR1', 'SIGUSR2'];

/** Takes a command's stdout and stderr pipes; it must keep reading them, or the command blocks. */
export type ChildOutput = (stdout: NodeJS.ReadableStream | null, stderr: NodeJS.ReadableStream | null) => void;

/** How a supervised command ended, as a shell would report it. */
export function exitCodeOf(code: number | null, signal: NodeJS.Signals | null): number {
  if (code !== null) return code;
  const number = signal ? constants.signals[signal] : undefined;
  return number ? 128 + number : 1;
}

/**
 * Runs the customer's command with the runtime's stdio and environment, and resolves with its
 * exit code. Signals the runtime receives are passed on, so the command shuts down its own way.
 */
export class Supervisor {
  readonly #child: ChildProcess;
  readonly exited: Promise<number>;

  /**
   * `options` may set the command's cwd, env, uid and gid; `execThrough`: a helper executable spawned
   * as `helper command args`, which execs the command in its own process (so the pid, signals and exit
   * status are the command's). Its stdio is the runtime's, unless `output` is given: then stdout and
   * stderr are pipes handed to `output` (the log relay).
   */
  constructor(command: string, args: readonly string[], logger: Logger, options: SupervisorOptions = {}) {
    const { execThrough, output, ...spawnOptions } = options;
    const stdio: SpawnOptions['stdio'] = output ? ['inherit', 'pipe', 'pipe'] : 'inherit';
    this.#child =
      execThrough === undefined
        ? spawn(command, args, { ...spawnOptions, stdio })
        : spawn(execThrough, [command, ...args], { ...spawnOptions, stdio });
    output?.(this.#child.stdout, this.#child.stderr);
    logger.info({ command, pid: this.#child.pid, sandboxed: execThrough !== undefined }, 'customer command started');
    this.exited = new Promise((resolve) => {
      this.#child.once('error', (error) => {
        logger.error({ command, code: errorCode(error) }, 'customer command could not start');
        resolve(127);
      });
      this.#child.once('exit', (code, signal) => {
        const status = exitCodeOf(code, signal);
        logger.info({ command, code, signal, status }, 'customer command exited');
        resolve(status);
      });
    });
  }

  /** The command's process id (undefined when it could not be started). */
  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Passes a signal on; the command decides how to stop. */
  signal(signal: NodeJS.Signals): void {
    if (this.#child.exitCode === null && this.#child.signalCode === null) this.#child.kill(signal);
  }

  static get forwardedSignals(): readonly NodeJS.Signals[] {
    return FORWARDED;
  }
}
