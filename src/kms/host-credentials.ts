/**
 * The enclave's side of kms.credentials = "host": the parent instance's role credentials, asked
 * of `enclave-runtime host` over the bridge and cached until shortly before they expire. They
 * stay in this process's memory: never in process.env, the app's environment or a log line.
 */
import type { Address } from '../net/address.js';
import { formatAddress } from '../net/address.js';
import { connect } from '../net/transport.js';
import type { KmsCredentials } from './kms-client.js';
import { KmsError } from './kms-error.js';
import { errorCode } from '../core/errors.js';
import { parseAwsCredentials } from '../wire/aws-credentials.js';

const MAX_ANSWER_BYTES = 16 * 1024;
/** Asked again when less than this is left; the host refreshes from IMDS with a larger margin. */
const REFRESH_MARGIN_MS = 5 * 60 * 1000;

export type KmsCredentialsProvider = () => Promise<KmsCredentials>;

export function hostCredentialsProvider(
  address: Address,
  timeoutMs: number,
  now: () => number = Date.now,
): KmsCredentialsProvider {
  let cached: { credentials: KmsCredentials; expiration: number } | undefined;
  let pending: Promise<KmsCredentials> | undefined;
  const fetch = async (): Promise<KmsCredentials> => {
    const text = await ask(address, timeoutMs);
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new KmsError('ERR_KMS_CREDENTIALS', `the credentials answer from ${formatAddress(address)} is not JSON`);
    }
    if (typeof value.error === 'string')
      throw new KmsError('ERR_KMS_CREDENTIALS', `the host could not give credentials: ${value.error}`);
    const parsed = parseAwsCredentials(value, now());
    if ('problem' in parsed) {
      throw new KmsError(
        'ERR_KMS_CREDENTIALS',
        parsed.problem === 'expired'
          ? 'the host gave credentials that have already expired'
          : `the credentials answer from ${formatAddress(address)} lacks AccessKeyId, SecretAccessKey, Token or Expiration`,
      );
    }
    const { accessKeyId, secretAccessKey, sessionToken } = parsed.credentials;
    const credentials = { accessKeyId, secretAccessKey, sessionToken };
    const expiration = parsed.credentials.expiration.getTime();
    cached = { credentials, expiration };
    return credentials;
  };
  return () => {
    if (cached && cached.expiration - now() > REFRESH_MARGIN_MS) return Promise.resolve(cached.credentials);
    pending ??= fetch().finally(() => {
      pending = undefined;
    });
    return pending;
  };
}

async function ask(address: Address, timeoutMs: number): Promise<string> {
  let socket;
  try {
    socket = await connect(address, { timeoutMs });
  } catch (error) {
    throw new KmsError(
      'ERR_KMS_CREDENTIALS',
      `the host's credentials server at ${formatAddress(address)} could not be reached: ${errorCode(error) ?? 'failed'}`,
      { cause: error },
    );
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const timer = setTimeout(
      () =>
        socket.destroy(
          new KmsError('ERR_KMS_CREDENTIALS', `no credentials from ${formatAddress(address)} within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    socket.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_ANSWER_BYTES)
        return void socket.destroy(
          new KmsError('ERR_KMS_CREDENTIALS', `the credentials answer is larger than ${MAX_ANSWER_BYTES} bytes`),
        );
      chunks.push(chunk);
    });
    socket.once('end', () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(
        error instanceof KmsError
          ? error
          : new KmsError('ERR_KMS_CREDENTIALS', `the credentials connection failed: ${errorCode(error) ?? 'error'}`, {
              cause: error,
            }),
      );
    });
    socket.end();
  });
}
