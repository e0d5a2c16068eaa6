/**
 * The composition root of `run` and `dev`: everything one enclave process does, wired in start-up
 * order. The log relay comes first (so the parent sees start-up too), then process hardening
 * (before any key or secret is in memory), the PID 1 duties (every listener is on loopback), the
 * data plane (Runtime), the secrets and last the customer's command, so that its first line may
 * already call 127.0.0.1:9999. It stops in reverse: the command within the grace, then ingress
 * with what is left of it, then the rest.
 *
 * The CLI only parses argv, loads the config, turns SIGTERM/SIGINT into `stop()` and maps the
 * outcome to an exit code.
 */
import type { Mode } from './config/field.js';
import type { RuntimeConfig } from './config/schema.js';
import { errorCode, RuntimeError } from './core/errors.js';
import { createLogger, type Logger } from './core/log.js';
import { LogRelay, registerLogRelayMetrics } from './logs/log-relay.js';
import { Runtime } from './runtime.js';
import { Supervisor } from './app/supervisor.js';
import { AppSupervisor } from './app/app-supervisor.js';
import { hardenProcess } from './native/native-binding.js';
import { startInitDuties, type InitDuties } from './init/init-duties.js';

export interface EnclaveOptions {
  /** The customer's command and its arguments (what follows `--`); none: only the data plane runs. */
  command?: readonly string[];
  /** Logs here instead of a logger made from the config (and the log relay); for tests. */
  logger?: Logger;
  /** Where the config came from, for the "config loaded" line. */
  configSource?: string;
}

/** Which start-up step failed. */
export type EnclaveStage = 'harden' | 'init' | 'runtime' | 'secrets' | 'command';

export type EnclaveOutcome =
  /** Stopped, or the command ended for good: `status` is its last exit code (0 without a command). */
  | { kind: 'exited'; status: number }
  /** A start-up step failed; it is logged and what had started is stopped. */
  | { kind: 'failed'; stage: EnclaveStage; error: unknown };

export interface Enclave {
  readonly logger: Logger;
  /** Settles once everything is stopped. Never rejects. */
  readonly exited: Promise<EnclaveOutcome>;
  /**
   * Stops: the command gets SIGTERM now and SIGKILL at the end of the grace, ingress drains in what
   * is left of it. During start-up the start finishes first and no command is started.
   */
  stop(): void;
}

/** Starts one enclave; returns at once, before anything has started or been logged. */
export function startEnclave(
  config: RuntimeConfig,
  mode: Extract<Mode, 'run' | 'dev'>,
  options: EnclaveOptions = {},
): Enclave {
  const relay = options.logger === undefined ? openLogRelay(config) : undefined;
  const logger = options.logger ?? createLogger(config.runtime.logLevel, relay ? relay.destination(2) : 2);
  relay?.useLogger(logger);

  // One grace covers the whole stop: the command's SIGTERM-to-SIGKILL wait, then what is left for ingress.
  const graceMs = config.runtime.shutdownGraceMs;
  let stopAt: number | undefined;
  let supervisor: AppSupervisor | undefined;
  let requestStop: () => void = () => {};
  const stopRequested = new Promise<void>((resolve) => (requestStop = resolve));
  const stop = (): void => {
    if (stopAt !== undefined) return;
    stopAt = Date.now();
    supervisor?.stop(graceMs);
    requestStop();
  };

  const run = async (): Promise<EnclaveOutcome> => {
    logger.info(
      { mode, config: options.configSource ?? '(defaults)', stateDir: config.runtime.stateDir },
      'config loaded',
    );
    // Before any key or secret is in memory: the app (same enclave, maybe the same uid) must not read them by ptrace or from a core file.
    try {
      hardenProcess();
    } catch (error) {
      const fields = { code: errorCode(error), reason: (error as Error).message };
      if (mode === 'run') {
        logger.fatal(fields, 'runtime failed to start: cannot make itself non-dumpable');
        await relay?.close();
        return { kind: 'failed', stage: 'harden', error };
      }
      logger.warn(fields, 'the runtime stays dumpable (no native addon here): the app could read its memory');
    }

    // PID 1 duties (lo up, hostname, reaping) come first: every listener below is on loopback.
    let init: InitDuties;
    try {
      init = startInitDuties(config.runtime, logger);
    } catch (error) {
      logger.fatal({ code: errorCode(error), reason: (error as Error).message }, 'runtime failed to start');
      await relay?.close();
      return { kind: 'failed', stage: 'init', error };
    }
    let runtime: Runtime;
    try {
      runtime = await Runtime.start(config, mode, logger);
    } catch (error) {
      const code = error instanceof RuntimeError || errorCode(error) ? (error as { code: string }).code : undefined;
      logger.fatal({ code, reason: (error as Error).message }, 'runtime failed to start');
      init.stop();
      await relay?.close();
      return { kind: 'failed', stage: 'runtime', error };
    }
    // Metrics learn about the parts only the root owns by registration here.
    if (relay) registerLogRelayMetrics(runtime.metrics.registry, relay);
    const { reaper } = init;
    if (reaper) runtime.metrics.watchOrphans(() => reaper.reaped);
    const abandon = async (stage: EnclaveStage, error: unknown): Promise<EnclaveOutcome> => {
      await runtime.stop();
      init.stop();
      await relay?.close();
      return { kind: 'failed', stage, error };
    };

    const [command, ...commandArgs] = options.command ?? [];
    // Secrets are for the command alone: they go into its spawn environment, never into process.env.
    let secretEnv: Record<string, string> = {};
    if (config.secrets.length > 0 && command === undefined)
      logger.warn(
        { secrets: config.secrets.length },
        '[[secrets]] are configured but there is no command to pass them to; not loaded',
      );
    if (config.secrets.length > 0 && command !== undefined) {
      try {
        const { loadSecrets } = await import('./secrets/boot-secrets.js');
        secretEnv = await loadSecrets(config, { nsm: runtime.nsm, logger });
      } catch (error) {
        logger.fatal(
          { code: errorCode(error), reason: (error as Error).message },
          'secrets failed to load; the command is not started',
        );
        return abandon('secrets', error);
      }
    }
    // The command starts only now that every service is up: its first line may already call 127.0.0.1:9999.
    try {
      const output =
        relay &&
        ((stdout: NodeJS.ReadableStream | null, stderr: NodeJS.ReadableStream | null) =>
          relay.attachChild(stdout, stderr));
      supervisor =
        command === undefined || stopAt !== undefined
          ? undefined
          : new AppSupervisor(command, commandArgs, config.app, logger, secretEnv, output);
    } catch (error) {
      logger.fatal({ code: errorCode(error), reason: (error as Error).message }, 'the command cannot be started');
      return abandon('command', error);
    }
    const app = supervisor;
    if (app) runtime.metrics.watchApp(() => ({ restarts: app.restarts, running: app.running }));
    const forward = (signal: NodeJS.Signals) => supervisor?.signal(signal);
    const otherSignals = Supervisor.forwardedSignals.filter((signal) => signal !== 'SIGTERM' && signal !== 'SIGINT');
    for (const signal of otherSignals) process.on(signal, forward);

    let status = 0;
    if (app) {
      status = await Promise.race([app.exited, stopRequested.then(() => app.exited)]);
    } else {
      await stopRequested;
    }
    await runtime.stop(stopAt === undefined ? graceMs : Math.max(0, graceMs - (Date.now() - stopAt)));
    init.stop();
    for (const signal of otherSignals) process.off(signal, forward);
    await relay?.close();
    return { kind: 'exited', status };
  };

  // Started a microtask later, so the caller installs its SIGTERM/SIGINT handler before the first log line:
  // whoever waits for that line may signal at once, and with no handler a SIGTERM is the default kill.
  return { logger, exited: Promise.resolve().then(run), stop };
}

/** The relay starts before the first log line, so the parent sees start-up too. */
function openLogRelay(config: RuntimeConfig): LogRelay | undefined {
  const { logRelay, logRelayBufferLines, logRelayMaxLineBytes } = config.runtime;
  if (!logRelay) return undefined;
  return new LogRelay({ address: logRelay, bufferLines: logRelayBufferLines, maxLineBytes: logRelayMaxLineBytes });
}
