/**
 * The customer's command over its whole life: started with `[app]`'s user, cwd and env, started
 * again under the restart policy, and stopped for good by SIGTERM/SIGINT. Each single run is a
 * Supervisor (spawn, signal forwarding, exit code).
 */
import type { RuntimeConfig } from '../config/schema.js';
import type { Logger } from '../core/log.js';
import { Supervisor, type ChildOutput } from './supervisor.js';
import { appEnvironment, appLaunch } from './app-sandbox.js';
import { resolveAppUser } from './app-user.js';
import { restartDelayMs, shouldRestart } from './restart-policy.js';

/** Signals that end the runtime, so no restart may follow them. */
const STOPPING_SIGNALS: ReadonlySet<NodeJS.Signals> = new Set(['SIGTERM', 'SIGINT']);

export type AppSettings = RuntimeConfig['app'];

export class AppSupervisor {
  /** The last run's exit code once no restart follows (128+N for signal N, 127 when it cannot start). */
  readonly exited: Promise<number>;
  readonly #command: string;
  readonly #args: readonly string[];
  readonly #settings: AppSettings;
  readonly #logger: Logger;
  readonly #spawnOptions: ConstructorParameters<typeof Supervisor>[3];
  #current: Supervisor | undefined;
  #stopping = false;
  #restarts = 0;
  #cancelWait: (() => void) | undefined;

  /**
   * Starts the command now, with the runtime's environment (less its AWS credentials unless
   * `[app] pass_aws_credentials`) plus `[app] env` plus `extraEnv` (secrets, which never enter
   * process.env), behind the app sandbox unless `[app] allow_vsock`. Throws ConfigError when
   * `[app] user` names nobody, RuntimeError ERR_APP_SANDBOX when the sandbox helper is missing.
   * `output` takes each run's stdout and stderr (the log relay); without it they are the runtime's.
   */
  constructor(
    command: string,
    args: readonly string[],
    settings: AppSettings,
    logger: Logger,
    extraEnv: Readonly<Record<string, string>> = {},
    output?: ChildOutput,
  ) {
    this.#command = command;
    this.#args = args;
    this.#settings = settings;
    this.#logger = logger;
    const user = settings.user === '' ? undefined : resolveAppUser(settings.user);
    const launch = appLaunch(command, args, settings.allowVsock, logger);
    this.#spawnOptions = {
      ...(settings.cwd === '' ? {} : { cwd: settings.cwd }),
      env: appEnvironment(process.env, settings.env, extraEnv, settings.passAwsCredentials),
      ...(user ? { uid: user.uid, gid: user.gid } : {}),
      ...(launch.sandboxed ? { execThrough: launch.file } : {}),
      ...(output ? { output } : {}),
    };
    this.exited = this.#run();
  }

  /** Restarts so far. */
  get restarts(): number {
    return this.#restarts;
  }

  /** Whether a run of the command is alive now. */
  get running(): boolean {
    return this.#current !== undefined;
  }

  /** Passes a signal to the command; SIGTERM/SIGINT also rule out any further restart. */
  signal(signal: NodeJS.Signals): void {
    if (STOPPING_SIGNALS.has(signal)) {
      this.#stopping = true;
      this.#cancelWait?.();
    }
    this.#current?.signal(signal);
  }

  /**
   * Stops the command for good: SIGTERM now, SIGKILL if it is still running `graceMs` later
   * (runtime.shutdown_grace_ms), so an app that never exits cannot hold the runtime open.
   */
  stop(graceMs: number): void {
    this.signal('SIGTERM');
    const current = this.#current;
    if (!current) return;
    const pid = current.pid;
    this.#logger.info({ commandPid: pid, graceMs }, 'waiting for the customer command to exit');
    const timer = setTimeout(() => {
      this.#logger.warn(
        { commandPid: pid, graceMs },
        'customer command still running after runtime.shutdown_grace_ms; sending SIGKILL',
      );
      current.signal('SIGKILL');
    }, graceMs);
    void current.exited.then(() => clearTimeout(timer));
  }

  async #run(): Promise<number> {
    for (;;) {
      this.#current = new Supervisor(this.#command, this.#args, this.#logger, this.#spawnOptions);
      const status = await this.#current.exited;
      this.#current = undefined;
      const { restart, maxRestarts, restartBackoffMs } = this.#settings;
      if (this.#stopping || !shouldRestart(restart, status, this.#restarts, maxRestarts)) {
        if (
          !this.#stopping &&
          restart !== 'never' &&
          this.#restarts >= maxRestarts &&
          (restart === 'always' || status !== 0)
        ) {
          this.#logger.error(
            { status, restarts: this.#restarts },
            'customer command used up app.max_restarts; stopping',
          );
        }
        return status;
      }
      this.#restarts++;
      const delayMs = restartDelayMs(restartBackoffMs, this.#restarts);
      this.#logger.warn(
        { status, restart: this.#restarts, maxRestarts, delayMs },
        'customer command exited; restarting',
      );
      if (!(await this.#wait(delayMs))) return status;
    }
  }

  /** Resolves true after `ms`, or false at once when a stopping signal arrives meanwhile. */
  #wait(ms: number): Promise<boolean> {
    if (this.#stopping) return Promise.resolve(false);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#cancelWait = undefined;
        resolve(true);
      }, ms);
      this.#cancelWait = () => {
        clearTimeout(timer);
        this.#cancelWait = undefined;
        resolve(false);
      };
    });
  }
}
