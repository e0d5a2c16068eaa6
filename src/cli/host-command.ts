import { parseArgs } from 'node:util';
import { formatAddress } from '../net/address.js';
import { loadConfig } from '../config/load.js';
import { ConfigError, errorCode, RuntimeError } from '../core/errors.js';
import { startHost } from '../host/host-service.js';
import { createLogger } from '../core/log.js';
import type { CommandIo } from './io.js';
import { waitForStopSignal } from './stop-signal.js';
import { printHelp, wantsHelp } from './command-help.js';

/**
 * `host [--config PATH]`, on the parent instance: ingress -> enclave, egress relay -> internet,
 * DNS relay -> upstream resolver, until SIGTERM/SIGINT (a second signal exits at once).
 * Exit code: 0 after a clean stop, 1 when it cannot start, 2 for a usage or config error.
 */
export async function hostCommand(argv: string[], io: CommandIo): Promise<number> {
  if (wantsHelp(argv)) return printHelp('host', io);
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { config: { type: 'string' } }, allowPositionals: false, strict: true });
  } catch (error) {
    io.stderr.write(`enclave-runtime host: ${(error as Error).message}\n`);
    return 2;
  }
  let config;
  try {
    config = await loadConfig(parsed.values.config, 'host');
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`enclave-runtime host: ${error.message}\n`);
      return 2;
    }
    throw error;
  }

  const logger = createLogger(config.runtime.logLevel);
  logger.info({ mode: 'host', config: parsed.values.config ?? '(defaults)' }, 'config loaded');
  let host;
  try {
    host = await startHost(config, logger);
  } catch (error) {
    const code = error instanceof RuntimeError ? error.code : errorCode(error);
    logger.fatal({ code, reason: (error as Error).message }, 'host failed to start');
    return 1;
  }
  // Before "host ready": whoever waits for that line may signal at once.
  const stop = waitForStopSignal(logger);
  logger.info(
    {
      ingress: formatAddress(host.ingress.address),
      egressRelay: formatAddress(host.egressRelay.address),
      dnsRelay: formatAddress(host.dnsRelay.address),
      ...host.operability.describe(),
    },
    'host ready',
  );

  await stop.received;
  await host.close(config.runtime.shutdownGraceMs);
  stop.dispose();
  logger.info('host stopped');
  return 0;
}
