/**
 * What `host` runs so a production enclave, which has no console, can be operated from the parent:
 * the log sink (the enclave's log lines and app output on stdout) and the relays for its health,
 * its metrics and the provisioner, and the role credentials for KMS. Each is off unless configured, except the log sink.
 */
import { formatAddress } from '../net/address.js';
import type { RuntimeConfig } from '../config/schema.js';
import type { Logger } from '../core/log.js';
import { startCredentialsServer, type CredentialsServer } from './credentials-server.js';
import { ImdsCredentials } from './imds-credentials.js';
import { LogSink } from './log-sink.js';
import { startParentRelays, type ParentRelay } from './parent-relays.js';
import { errorCode } from '../core/errors.js';

export interface HostOperability {
  readonly logSink: LogSink | undefined;
  readonly relays: readonly ParentRelay[];
  readonly credentials: CredentialsServer | undefined;
  /** Where each part listens, for the "host ready" line. */
  describe(): Record<string, string>;
  close(graceMs: number): Promise<void>;
}

export async function startHostOperability(
  host: RuntimeConfig['host'],
  logger: Logger,
  out: NodeJS.WritableStream = process.stdout,
): Promise<HostOperability> {
  const relays = await startParentRelays(host, logger);
  let credentials: CredentialsServer | undefined;
  if (host.credentials === 'imds') {
    const source = new ImdsCredentials({ endpoint: host.imdsEndpoint, timeoutMs: host.connectTimeoutMs });
    try {
      credentials = await startCredentialsServer({ listen: host.credentialsListen, source, logger });
    } catch (error) {
      for (const relay of relays) await relay.ingress.stop(0).catch(() => {});
      throw error;
    }
    // Fetched once now, so a missing role or an IMDS hop limit shows at start, not at the enclave's first KMS call.
    source.get().then(
      (fresh) =>
        logger.info({ expiration: fresh.expiration.toISOString() }, 'instance role credentials fetched from IMDS'),
      (error: unknown) =>
        logger.warn(
          { code: errorCode(error), reason: (error as Error).message },
          'instance role credentials not available yet',
        ),
    );
  }
  let logSink: LogSink | undefined;
  if (host.logListen) {
    // Like the enclave's own health and metrics endpoints, the sink only observes: a host whose
    // vsock cannot take the port still relays traffic, and says once that logs are not collected.
    try {
      logSink = await LogSink.start({ listen: host.logListen, out, logger });
    } catch (error) {
      logger.error(
        { listen: formatAddress(host.logListen), code: errorCode(error), reason: (error as Error).message },
        'log sink not served',
      );
    }
  }
  return {
    logSink,
    relays,
    credentials,
    describe: () => ({
      ...(credentials ? { credentials: formatAddress(credentials.address) } : {}),
      ...(logSink ? { logSink: formatAddress(logSink.address) } : {}),
      ...Object.fromEntries(
        relays.map((relay) => [relay.name.replace(' relay', 'Relay'), formatAddress(relay.ingress.address)]),
      ),
    }),
    close: async (graceMs) => {
      await logSink?.close();
      await credentials?.close();
      for (const relay of relays) await relay.ingress.stop(graceMs);
    },
  };
}
