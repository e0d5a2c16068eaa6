import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import type { Mode } from '../config/field.js';
import { ConfigError, RuntimeError } from '../errors.js';
import { createLogger } from '../log.js';
import { Runtime } from '../runtime.js';
import { Supervisor } from '../supervisor.js';
import type { CommandIo } from './io.js';

/** Signals closer together than this are one user action delivered twice. */
const SAME_SIGNAL_WINDOW_MS = 1000;

/**
 * `run` and `dev`: start the data plane, supervise the customer command when one follows `--`,
 * and stop on SIGTERM/SIGINT (a second signal exits at once). Exit code: the command's, else 0.
 */
export async function serveCommand(mode: Extract<Mode, 'run' | 'dev'>, argv: string[], io: CommandIo): Promise<number> {
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

  const logger = createLogger(config.runtime.logLevel);
  logger.info({ mode, config: parsed.values.config ?? '(defaults)', stateDir: config.runtime.stateDir }, 'config loaded');

  let runtime: Runtime;
  try {
    runtime = await Runtime.start(config, mode, logger);
  } catch (error) {
    const code = error instanceof RuntimeError || (error as { code?: string }).code ? (error as { code: string }).code : undefined;
    logger.fatal({ code, reason: (error as Error).message }, 'runtime failed to start');
    return 1;
  }

  const supervisor = command === undefined ? undefined : new Supervisor(command, commandArgs, logger);
  let stoppingSince: number | undefined;
  const stopped = new Promise<void>((resolve) => {
    const onSignal = (signal: NodeJS.Signals) => {
      if (stoppingSince !== undefined) {
        // One Ctrl-C arrives twice under `npm start`: from the terminal and forwarded by npm.
        if (Date.now() - stoppingSince < SAME_SIGNAL_WINDOW_MS) return;
        logger.warn({ signal }, 'second signal: exiting without draining');
        process.exit(1);
      }
      stoppingSince = Date.now();
      logger.info({ signal }, 'shutting down');
      supervisor?.signal(signal);
      resolve();
    };
    for (const signal of ['SIGTERM', 'SIGINT'] as const) process.on(signal, onSignal);
    for (const signal of Supervisor.forwardedSignals) {
      if (signal !== 'SIGTERM' && signal !== 'SIGINT') process.on(signal, () => supervisor?.signal(signal));
    }
  });

  let status = 0;
  if (supervisor) {
    status = await Promise.race([supervisor.exited, stopped.then(() => supervisor.exited)]);
  } else {
    await stopped;
  }
  await runtime.stop();
  for (const signal of Supervisor.forwardedSignals) process.removeAllListeners(signal);
  return status;
}
