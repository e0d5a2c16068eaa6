import { Agent, type Dispatcher } from 'undici';
import type { RuntimeConfig } from '../config/schema.js';
import { tunnelAgent } from './connect-tunnel.js';
import { hostCredentialsProvider } from './host-credentials.js';
import type { KmsClientOptions } from './kms-client.js';
import { KmsError } from './kms-error.js';

/** The [kms] keys the client's settings come from (the proxy's keys are not among them). */
export type KmsKeys = Omit<RuntimeConfig['kms'], 'credentials' | 'credentialsAddress' | 'proxy' | 'proxyListen'> &
  Partial<Pick<RuntimeConfig['kms'], 'credentials' | 'credentialsAddress'>>;

/**
 * The KMS client's settings from `[kms]`, each empty key falling back to the standard AWS
 * environment variable of the runtime's own process (as the enclave image or launcher set it).
 * Credentials come whole from one place: a key id from the file never pairs with a secret from the environment.
 */
export function kmsSettings(
  kms: KmsKeys,
  env: NodeJS.ProcessEnv = process.env,
): Omit<KmsClientOptions, 'dispatcher' | 'logger'> {
  const region = kms.region || env.AWS_REGION || env.AWS_DEFAULT_REGION || '';
  if (!region) throw new KmsError('ERR_KMS_CONFIG', 'no KMS region: set kms.region, or AWS_REGION in the environment');
  if (kms.credentials === 'host' && kms.credentialsAddress) {
    return {
      region,
      endpoint: kms.endpoint || undefined,
      credentials: hostCredentialsProvider(kms.credentialsAddress, kms.timeoutMs),
      timeoutMs: kms.timeoutMs,
      maxAttempts: kms.maxAttempts,
    };
  }
  const fromFile = kms.accessKeyId !== '' || kms.secretAccessKey !== '';
  const credentials = fromFile
    ? {
        accessKeyId: kms.accessKeyId,
        secretAccessKey: kms.secretAccessKey,
        sessionToken: kms.sessionToken || undefined,
      }
    : {
        accessKeyId: env.AWS_ACCESS_KEY_ID ?? '',
        secretAccessKey: env.AWS_SECRET_ACCESS_KEY ?? '',
        sessionToken: env.AWS_SESSION_TOKEN || undefined,
      };
  if (!credentials.accessKeyId || !credentials.secretAccessKey) {
    throw new KmsError(
      'ERR_KMS_CONFIG',
      fromFile
        ? 'kms.access_key_id and kms.secret_access_key must be set together'
        : 'no AWS credentials for KMS: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) in the environment, or kms.access_key_id and kms.secret_access_key',
    );
  }
  return {
    region,
    endpoint: kms.endpoint || undefined,
    credentials,
    timeoutMs: kms.timeoutMs,
    maxAttempts: kms.maxAttempts,
  };
}

/**
 * How KMS traffic leaves: through the egress HTTP proxy (CONNECT, so TLS runs end to end from the
 * enclave to KMS and the allowlist applies as to any app traffic), or directly (dev, tests).
 * Each request is bounded by the client's own timeout; the caller closes the dispatcher.
 */
export function kmsDispatcher(config: Pick<RuntimeConfig, 'kms' | 'egress'>): Dispatcher {
  if (config.kms.via === 'egress_proxy') {
    const { host, port } = config.egress.proxyListen;
    return tunnelAgent({ host, port }, config.kms.timeoutMs);
  }
  return new Agent({ connect: { timeout: config.kms.timeoutMs } });
}
