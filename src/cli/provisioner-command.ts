import { readFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { MAX_ROOT_PEM_BYTES, parseRootPem } from '../verify/root-store.js';
import { formatAddress } from '../net/address.js';
import { loadConfig } from '../config/load.js';
import { ConfigError, errorCode, RuntimeError } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import { startProvisioner } from '../provisioner/provisioner-service.js';
import type { CommandIo } from './io.js';
import { waitForStopSignal } from './stop-signal.js';
import { printHelp, wantsHelp } from './command-help.js';

/**
 * `provisioner [--config PATH]`: the reference provisioner, signing attested enclaves'
 * intermediate CAs until SIGTERM/SIGINT. Exit code: 0 after a clean stop, 1 when it cannot
 * start, 2 for a usage or config error (an empty `provisioner.allowed_pcrs` included).
 */
export async function provisionerCommand(argv: string[], io: CommandIo): Promise<number> {
  if (wantsHelp(argv)) return printHelp('provisioner', io);
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { config: { type: 'string' } }, allowPositionals: false, strict: true });
  } catch (error) {
    io.stderr.write(`enclave-runtime provisioner: ${(error as Error).message}\n`);
    return 2;
  }
  let config;
  let attestationRootPem: string | undefined;
  try {
    // The provisioner runs outside any enclave, like `host`, so it takes the host defaults.
    config = await loadConfig(parsed.values.config, 'host');
    attestationRootPem = await readAttestationRoot(config.provisioner.root);
    if (config.provisioner.allowedPcrs.length === 0) {
      throw new ConfigError(
        [
          'provisioner.allowed_pcrs is empty: no enclave could be provisioned; list the PCR sets of the enclave images to accept',
        ],
        parsed.values.config ?? 'defaults',
      );
    }
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`enclave-runtime provisioner: ${error.message}\n`);
      return 2;
    }
    throw error;
  }

  const logger = createLogger(config.runtime.logLevel);
  logger.info({ mode: 'provisioner', config: parsed.values.config ?? '(defaults)' }, 'config loaded');
  const settings = config.provisioner;
  let provisioner;
  try {
    provisioner = await startProvisioner({
      listen: settings.listen,
      caDir: settings.caDir,
      ...(attestationRootPem === undefined ? {} : { attestationRootPem }),
      allowedPcrs: settings.allowedPcrs,
      allowDebug: settings.allowDebug,
      challengeTtlMs: settings.challengeTtlMs,
      certLifetimeMs: settings.certLifetimeMs,
      maxPendingChallenges: settings.maxPendingChallenges,
      permittedDns: settings.permittedDns,
      logger,
    });
  } catch (error) {
    const code = error instanceof RuntimeError ? error.code : errorCode(error);
    logger.fatal({ code, reason: (error as Error).message }, 'provisioner failed to start');
    return error instanceof ConfigError ? 2 : 1;
  }
  logger.info({ listen: formatAddress(provisioner.address), root: provisioner.rootPath }, 'provisioner ready');

  const stop = waitForStopSignal(logger);
  await stop.received;
  await provisioner.close();
  stop.dispose();
  logger.info('provisioner stopped');
  return 0;
}

/** `provisioner.root`: "aws" is the bundled root (undefined here); anything else a PEM file, checked now. */
async function readAttestationRoot(root: string): Promise<string | undefined> {
  if (root === 'aws') return undefined;
  let bytes: Buffer;
  try {
    bytes = await readFile(root);
  } catch (error) {
    throw new ConfigError([
      `provisioner.root: cannot read ${JSON.stringify(root)}: ${errorCode(error) ?? (error as Error).message}`,
    ]);
  }
  if (bytes.byteLength > MAX_ROOT_PEM_BYTES)
    throw new ConfigError([
      `provisioner.root: ${JSON.stringify(root)} is larger than ${MAX_ROOT_PEM_BYTES} bytes; a root PEM is a few certificates`,
    ]);
  const pem = bytes.toString('utf8');
  try {
    parseRootPem(pem, root);
  } catch (error) {
    throw new ConfigError([`provisioner.root: ${(error as Error).message}`]);
  }
  return pem;
}
