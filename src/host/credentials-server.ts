/**
 * Serves the parent's role credentials to the enclave (host.credentials = "imds", on
 * host.credentials_listen): each connection gets one JSON line and is closed. The enclave needs
 * them only to sign KMS calls; they authenticate, and the key policy's attestation condition
 * (kms:RecipientAttestation:PCR*) still decides what they can decrypt. Whoever can reach this
 * port gets what the instance role grants, which on the parent is no more than IMDS already gives.
 */
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { listen, type Listener } from '../net/transport.js';
import type { Logger } from '../core/log.js';
import type { ImdsCredentials } from './imds-credentials.js';
import { errorCode } from '../core/errors.js';

const MAX_CONNECTIONS = 16;
/** A connection whose answer is not written within this is cut. */
const ANSWER_TIMEOUT_MS = 15_000;

export interface CredentialsServer {
  readonly address: Address;
  readonly stats: { served: number; failed: number };
  close(): Promise<void>;
}

export async function startCredentialsServer(options: {
  listen: Address;
  source: Pick<ImdsCredentials, 'get'>;
  logger: Logger;
}): Promise<CredentialsServer> {
  const { source, logger } = options;
  const stats = { served: 0, failed: 0 };
  const open = new Set<Duplex>();
  const answer = async (socket: Duplex) => {
    const timer = setTimeout(() => socket.destroy(), ANSWER_TIMEOUT_MS);
    try {
      const credentials = await source.get();
      socket.end(
        `${JSON.stringify({ AccessKeyId: credentials.accessKeyId, SecretAccessKey: credentials.secretAccessKey, Token: credentials.sessionToken, Expiration: credentials.expiration.toISOString() })}\n`,
      );
      stats.served++;
      logger.debug({ expiration: credentials.expiration.toISOString() }, 'role credentials served to the enclave');
    } catch (error) {
      stats.failed++;
      const reason = (error as Error).message;
      logger.warn({ code: errorCode(error), reason }, 'role credentials could not be served');
      socket.end(`${JSON.stringify({ error: reason })}\n`);
    } finally {
      clearTimeout(timer);
    }
  };
  const listener: Listener = await listen(options.listen, (socket) => {
    socket.on('error', () => {});
    if (open.size >= MAX_CONNECTIONS) return void socket.destroy();
    open.add(socket);
    socket.once('close', () => open.delete(socket));
    socket.resume();
    void answer(socket);
  });
  logger.info({ listen: formatAddress(listener.address) }, 'credentials server listening');
  return {
    address: listener.address,
    stats,
    close: async () => {
      await listener.close();
      for (const socket of open) socket.destroy();
    },
  };
}
