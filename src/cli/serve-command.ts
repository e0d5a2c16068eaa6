import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import type { Mode } from '../config/field.js';
import { ConfigError, errorCode, RuntimeError } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import { LogRelay, registerLogRelayMetrics } from '../logs/log-relay.js';
import { Runtime } from '../runtime.js';
import { Supervisor } from '../app/supervisor.js';
import { hardenProcess } from '../native/native-binding.js';
import { AppSupervisor } from '../app/app-supervisor.js';
import { startInitDuties, type InitDuties } from '../init/init-duties.js';
import type { CommandIo } from './io.js';
import { waitForStopSignal } from './stop-signal.js';
import { printHelp, wantsHelp } from './command-help.js';

/**
 * `run` and `dev`: start the data plane, supervise the customer command when one follows `--`,
 * and stop on SIGTERM/SIGINT (a second signal exits at once). Exit code: the command's, else 0.
 */
export async function serveCommand(mode: Extract<Mode, 'run' | 'dev'>, argv: string[], io: CommandIo): Promise<number> {
  if (wantsHelp(argv)) return printHelp(mode, io);
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      options: { config: { type: 'string' }, 'state-dir': { type: 'string' } },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    io.stderr.write(`enclave-runtime ${mode}: ${(error as Error).message}\n`);
    return 2;
  }
  const [command, ...commandArgs] = parsed.positionals;

  let config;
  try {
    config = await loadConfig(parsed.values.config, mode);
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`enclave-runtime ${mode}: ${error.message}\n`);
      return 2;
    }
    throw error;
  }
  if (parsed.values['state-dir'] !== undefined) config.runtime.stateDir = parsed.values['state-dir'];

  // The relay starts before the first log line, so the parent sees start-up too.
  const { logRelay, logRelayBufferLines, logRelayMaxLineBytes } = config.runtime;
  const relay =
    logRelay &&
    new LogRelay({ address: logRelay, bufferLines: logRelayBufferLines, maxLineBytes: logRelayMaxLineBytes });
  const logger = createLogger(config.runtime.logLevel, relay ? relay.destination(2) : 2);
  relay?.useLogger(logger);
  // From here on a SIGTERM/SIGINT is a stop, never the default kill: whoever waits for a log line may signal
  // the moment it is logged, and a kill would leave the iptables rules behind. A stop during start-up lets the
  // start finish, starts no command, then stops. One grace covers the whole stop: the command's SIGTERM-to-SIGKILL
  // wait, then what is left for ingress.
  const graceMs = config.runtime.shutdownGraceMs;
  let stopAt: number | undefined;
  let supervisor: AppSupervisor | undefined;
  const stop = waitForStopSignal(logger, () => {
    stopAt = Date.now();
    supervisor?.stop(graceMs);
  });
  logger.info(
    { mode, config: parsed.values.config ?? '(defaults)', stateDir: config.runtime.stateDir },
    'config loaded',
  );
  // Before any key or secret is in memory: the app (same enclave, maybe the same uid) must not read them by ptrace or from a core file.
  try {
    hardenProcess();
  } catch (error) {
    const fields = { code: errorCode(error), reason: (error as Error).message };
    if (mode === 'run') {
      logger.fatal(fields, 'runtime failed to start: cannot make itself non-dumpable');
      return 1;
    }
    logger.warn(fields, 'the runtime stays dumpable (no native addon here): the app could read its memory');
  }

  // PID 1 duties (lo up, hostname, reaping) come first: every listener below is on loopback.
  let init: InitDuties;
  let runtime: Runtime;
  try {
    init = startInitDuties(config.runtime, logger);
  } catch (error) {
    logger.fatal({ code: errorCode(error), reason: (error as Error).message }, 'runtime failed to start');
    await relay?.close();
    return 1;
  }
  try {
    runtime = await Runtime.start(config, mode, logger);
  } catch (error) {
    const code = error instanceof RuntimeError || errorCode(error) ? (error as { code: string }).code : undefined;
    logger.fatal({ code, reason: (error as Error).message }, 'runtime failed to start');
    init.stop();
    await relay?.close();
    return 1;
  }
  if (relay) registerLogRelayMetrics(runtime.metrics.registry, relay);
  const { reaper } = init;
  if (reaper) runtime.metrics.watchOrphans(() => reaper.reaped);

  // Secrets are for the command alone: they go into its spawn environment, never into process.env.
  let secretEnv: Record<string, string> = {};
  if (config.secrets.length > 0 && command === undefined)
    logger.warn(
      { secrets: config.secrets.length },
      '[[secrets]] are configured but there is no command to pass them to; not loaded',
    );
  if (config.secrets.length > 0 && command !== undefined) {
    try {
      const { loadSecrets } = await import('../secrets/boot-secrets.js');
      secretEnv = await loadSecrets(config, { nsm: runtime.nsm, logger });
    } catch (error) {
      logger.fatal(
        { code: errorCode(error), reason: (error as Error).message },
        'secrets failed to load; the command is not started',
      );
      await runtime.stop();
      init.stop();
      await relay?.close();
      return 1;
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
    await runtime.stop();
    init.stop();
    await relay?.close();
    return error instanceof ConfigError ? 2 : 1;
  }
  const app = supervisor;
  if (app) runtime.metrics.watchApp(() => ({ restarts: app.restarts, running: app.running }));
  const forward = (signal: NodeJS.Signals) => supervisor?.signal(signal);
  const otherSignals = Supervisor.forwardedSignals.filter((signal) => signal !== 'SIGTERM' && signal !== 'SIGINT');
  for (const signal of otherSignals) process.on(signal, forward);
  const stopped = stop.received;

  let status = 0;
  if (app) {
    status = await Promise.race([app.exited, stopped.then(() => app.exited)]);
  } else {
    await stopped;
  }
  await runtime.stop(stopAt === undefined ? graceMs : Math.max(0, graceMs - (Date.now() - stopAt)));
  init.stop();
  stop.dispose();
  for (const signal of otherSignals) process.off(signal, forward);
  await relay?.close();
  return status;
}
