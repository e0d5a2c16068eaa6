import { parseArgs } from 'node:util';
import { loadConfig } from '../config/load.js';
import type { Mode } from '../config/field.js';
import { ConfigError } from '../core/errors.js';
import { startEnclave } from '../enclave.js';
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

  const enclave = startEnclave(config, mode, {
    command: parsed.positionals,
    configSource: parsed.values.config,
  });
  // From here on a SIGTERM/SIGINT is a stop, never the default kill: whoever waits for a log line may signal
  // the moment it is logged, and a kill would leave the iptables rules behind. A stop during start-up lets the
  // start finish, starts no command, then stops.
  const stop = waitForStopSignal(enclave.logger, () => enclave.stop());
  const outcome = await enclave.exited;
  stop.dispose();
  if (outcome.kind === 'exited') return outcome.status;
  // A command that cannot be started because of its [app] settings is a usage error, like a bad config.
  return outcome.stage === 'command' && outcome.error instanceof ConfigError ? 2 : 1;
}
