/**
 * A small AWS KMS client for the calls an enclave makes at boot: Decrypt, GenerateDataKey and
 * GenerateRandom, each with an optional `Recipient` (an attestation document carrying our RSA
 * public key), in which case KMS answers with `CiphertextForRecipient` instead of the plaintext.
 * It speaks the KMS JSON protocol over undici, signs with AWS's own SigV4 signer, and sends
 * through whatever Dispatcher it is given (the egress proxy in the enclave, loopback in tests).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { Hash } from '@smithy/core/serde';
import { SignatureV4 } from '@smithy/signature-v4';
import { request, type Dispatcher } from 'undici';
import { silentLogger, type Logger } from '../core/log.js';
import { KmsError } from './kms-error.js';
import { backoffDelay } from '../core/backoff.js';

/** KMS answers are a few KiB (a 4 KiB plaintext in CMS, base64); anything bigger is not KMS. */
export const KMS_MAX_RESPONSE_BYTES = 256 * 1024;
/** KMS's own cap on a ciphertext blob. */
export const KMS_MAX_CIPHERTEXT_BYTES = 6144;
/** The only key encryption algorithm KMS offers for recipients, and the one we open. */
export const RECIPIENT_KEY_ENCRYPTION_ALGORITHM = 'RSAES_OAEP_SHA_256';
const MAX_CIPHERTEXT_FOR_RECIPIENT_BYTES = 64 * 1024;
const MAX_ENCRYPTION_CONTEXT_PAIRS = 64;
const DEFAULT_TIMEOUT_MS = 10_000;
const DEFAULT_MAX_ATTEMPTS = 3;
const BACKOFF_BASE_MS = 200;
const BACKOFF_CAP_MS = 3_000;
/** KMS says these are worth retrying; every other answered error is final. */
const RETRYABLE_KMS_CODES: ReadonlySet<string> = new Set([
  'ThrottlingException',
  'KMSInternalException',
  'DependencyTimeoutException',
  'KeyUnavailableException',
]);

export interface KmsCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string | undefined;
}

export interface KmsClientOptions {
  region: string;
  /** Default `https://kms.<region>.amazonaws.com`. Plain http only to loopback (the fake KMS in tests). */
  endpoint?: string | undefined;
  /** Fixed credentials, or a provider asked before each signature (it caches; see host-credentials.ts). */
  credentials: KmsCredentials | (() => Promise<KmsCredentials>);
  /** How requests leave: an undici ProxyAgent to the egress proxy in the enclave; default undici's global. */
  dispatcher?: Dispatcher | undefined;
  /** Per attempt, 100 to 300000 ms; default 10000. */
  timeoutMs?: number | undefined;
  /** Attempts for retryable failures (throttling, 5xx, no answer), 1 to 10; default 3. */
  maxAttempts?: number | undefined;
  logger?: Logger | undefined;
}

/** Where KMS should encrypt its answer to: a document whose public_key is our RSA key. */
export interface KmsRecipient {
  attestationDocument: Uint8Array;
}

export interface DecryptRequest {
  ciphertextBlob: Uint8Array;
  /** Only needed for asymmetric keys; for symmetric ones KMS checks it matches the blob's key. */
  keyId?: string | undefined;
  encryptionContext?: Readonly<Record<string, string>> | undefined;
  recipient?: KmsRecipient | undefined;
}

export interface GenerateDataKeyRequest {
  keyId: string;
  keySpec?: 'AES_256' | 'AES_128' | undefined;
  numberOfBytes?: number | undefined;
  encryptionContext?: Readonly<Record<string, string>> | undefined;
  recipient?: KmsRecipient | undefined;
}

export interface GenerateRandomRequest {
  numberOfBytes: number;
  recipient?: KmsRecipient | undefined;
}

/** With a recipient, `ciphertextForRecipient` is set and `plaintext` never is; without one, the reverse. */
export interface KmsSecretAnswer {
  plaintext?: Buffer | undefined;
  ciphertextForRecipient?: Uint8Array | undefined;
}

export interface DecryptResult extends KmsSecretAnswer {
  keyId: string | undefined;
}

export interface GenerateDataKeyResult extends KmsSecretAnswer {
  keyId: string | undefined;
  ciphertextBlob: Uint8Array;
}

/** The KMS client; it holds credentials in private fields only, so no dump of it shows them. */
export class KmsClient {
  readonly endpoint: URL;
  readonly region: string;
  readonly #signer: SignatureV4;
  readonly #dispatcher: Dispatcher | undefined;
  readonly #timeoutMs: number;
  readonly #maxAttempts: number;
  readonly #logger: Logger;

  constructor(options: KmsClientOptions) {
    if (!/^[a-z]{2}(-[a-z0-9]+){1,3}-\d{1,2}$/.test(options.region)) {
      throw new KmsError(
        'ERR_KMS_CONFIG',
        `the KMS region ${JSON.stringify(options.region.slice(0, 40))} is not an AWS region name like "us-east-1"`,
      );
    }
    this.region = options.region;
    this.endpoint = kmsEndpoint(options.endpoint ?? `https://kms.${options.region}.amazonaws.com`);
    const given = options.credentials;
    let credentials: ConstructorParameters<typeof SignatureV4>[0]['credentials'];
    if (typeof given === 'function') {
      credentials = async () => {
        const { accessKeyId, secretAccessKey, sessionToken } = await given();
        return { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) };
      };
    } else {
      const { accessKeyId, secretAccessKey, sessionToken } = given;
      if (!accessKeyId || !secretAccessKey)
        throw new KmsError('ERR_KMS_CONFIG', 'KMS credentials need both an access key id and a secret access key');
      credentials = { accessKeyId, secretAccessKey, ...(sessionToken ? { sessionToken } : {}) };
    }
    this.#signer = new SignatureV4({
      service: 'kms',
      region: options.region,
      credentials,
      sha256: Hash.bind(null, 'sha256'),
    });
    this.#dispatcher = options.dispatcher;
    this.#timeoutMs = bounded(options.timeoutMs, DEFAULT_TIMEOUT_MS, 100, 300_000, 'timeoutMs');
    this.#maxAttempts = bounded(options.maxAttempts, DEFAULT_MAX_ATTEMPTS, 1, 10, 'maxAttempts');
    this.#logger = options.logger ?? silentLogger();
  }

  /** KMS Decrypt; with a recipient the plaintext comes back only as CMS for that key. */
  async decrypt(input: DecryptRequest): Promise<DecryptResult> {
    if (input.ciphertextBlob.byteLength === 0 || input.ciphertextBlob.byteLength > KMS_MAX_CIPHERTEXT_BYTES) {
      throw new RangeError(
        `a KMS ciphertext blob is 1 to ${KMS_MAX_CIPHERTEXT_BYTES} bytes, got ${input.ciphertextBlob.byteLength}`,
      );
    }
    const answer = await this.#call('Decrypt', {
      CiphertextBlob: base64(input.ciphertextBlob),
      ...(input.keyId ? { KeyId: input.keyId } : {}),
      ...encryptionContext(input.encryptionContext),
      ...recipient(input.recipient),
    });
    return { keyId: optionalString(answer, 'KeyId'), ...secretAnswer(answer, input.recipient !== undefined) };
  }

  /** KMS GenerateDataKey: a new data key, its KMS-encrypted copy, and (with a recipient) the key as CMS. */
  async generateDataKey(input: GenerateDataKeyRequest): Promise<GenerateDataKeyResult> {
    const size =
      input.numberOfBytes === undefined
        ? { KeySpec: input.keySpec ?? 'AES_256' }
        : { NumberOfBytes: bounded(input.numberOfBytes, 32, 1, 1024, 'numberOfBytes') };
    const answer = await this.#call('GenerateDataKey', {
      KeyId: input.keyId,
      ...size,
      ...encryptionContext(input.encryptionContext),
      ...recipient(input.recipient),
    });
    return {
      keyId: optionalString(answer, 'KeyId'),
      ciphertextBlob: blob(answer, 'CiphertextBlob', KMS_MAX_CIPHERTEXT_BYTES),
      ...secretAnswer(answer, input.recipient !== undefined),
    };
  }

  /** KMS GenerateRandom: 1 to 1024 random bytes from KMS's HSMs, as CMS for the recipient when given. */
  async generateRandom(input: GenerateRandomRequest): Promise<KmsSecretAnswer> {
    const answer = await this.#call('GenerateRandom', {
      NumberOfBytes: bounded(input.numberOfBytes, 32, 1, 1024, 'numberOfBytes'),
      ...recipient(input.recipient),
    });
    return secretAnswer(answer, input.recipient !== undefined);
  }

  async #call(operation: string, payload: Record<string, unknown>): Promise<Record<string, unknown>> {
    const body = JSON.stringify(payload);
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.#send(operation, body);
      } catch (error) {
        if (!(error instanceof KmsError) || !isRetryable(error) || attempt >= this.#maxAttempts) throw error;
        const delayMs = backoffDelay(attempt, BACKOFF_BASE_MS, BACKOFF_CAP_MS);
        this.#logger.debug(
          { operation, attempt, code: error.code, kmsCode: error.kmsCode, status: error.status, delayMs },
          'KMS call failed; retrying',
        );
        await sleep(delayMs);
      }
    }
  }

  async #send(operation: string, body: string): Promise<Record<string, unknown>> {
    const url = this.endpoint;
    // Signed fresh on every attempt: the signature carries the time, and KMS refuses stale ones.
    const signed = await this.#signer.sign({
      method: 'POST',
      protocol: url.protocol,
      hostname: url.hostname,
      ...(url.port ? { port: Number(url.port) } : {}),
      path: url.pathname,
      query: {},
      headers: {
        host: url.host,
        'content-type': 'application/x-amz-json-1.1',
        'x-amz-target': `TrentService.${operation}`,
      },
      body,
    });
    let response: Dispatcher.ResponseData;
    try {
      response = await request(url, {
        method: 'POST',
        headers: signed.headers,
        body,
        ...(this.#dispatcher ? { dispatcher: this.#dispatcher } : {}),
        headersTimeout: this.#timeoutMs,
        bodyTimeout: this.#timeoutMs,
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (error) {
      throw unreachable(url, error);
    }
    const status = response.statusCode;
    let text: string;
    try {
      text = await readBounded(response.body, KMS_MAX_RESPONSE_BYTES);
    } catch (error) {
      if (error instanceof KmsError) throw error;
      throw unreachable(url, error);
    }
    let json: unknown;
    try {
      json = text.length === 0 ? {} : JSON.parse(text);
    } catch {
      json = undefined;
    }
    const fields =
      typeof json === 'object' && json !== null && !Array.isArray(json) ? (json as Record<string, unknown>) : undefined;
    this.#logger.debug({ operation, status }, 'KMS answered');
    if (status >= 200 && status < 300) {
      if (!fields)
        throw new KmsError(
          'ERR_KMS_RESPONSE',
          `KMS ${operation} answered ${status} with a body that is not a JSON object`,
          { status },
        );
      return fields;
    }
    const kmsCode = errorName(fields?.__type ?? firstHeader(response.headers['x-amzn-errortype']));
    const message =
      typeof fields?.message === 'string' ? fields.message : typeof fields?.Message === 'string' ? fields.Message : '';
    throw new KmsError(
      'ERR_KMS_REQUEST',
      `KMS ${operation} refused (${kmsCode ?? `HTTP ${status}`})${message ? `: ${message}` : ''}`,
      { kmsCode, status },
    );
  }
}

/** Checks an endpoint URL: https, or http to a loopback address only (nothing but tests talks plain http). */
export function kmsEndpoint(value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new KmsError('ERR_KMS_CONFIG', `the KMS endpoint ${JSON.stringify(value.slice(0, 80))} is not a URL`);
  }
  if (url.username || url.password || url.search || url.hash)
    throw new KmsError('ERR_KMS_CONFIG', 'the KMS endpoint must not carry credentials, a query or a fragment');
  if (url.protocol === 'https:') return url;
  if (url.protocol === 'http:' && isLoopback(url.hostname)) return url;
  throw new KmsError(
    'ERR_KMS_CONFIG',
    `the KMS endpoint must be https:// (plain http:// only to loopback), got ${url.protocol}//${url.host}`,
  );
}

function isLoopback(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

function isRetryable(error: KmsError): boolean {
  // Credentials from the host count as part of the way to KMS: its server may be restarting.
  if (error.code === 'ERR_KMS_UNREACHABLE' || error.code === 'ERR_KMS_CREDENTIALS') return true;
  if (error.code !== 'ERR_KMS_REQUEST') return false;
  return (
    (error.kmsCode !== undefined && RETRYABLE_KMS_CODES.has(error.kmsCode)) ||
    (error.status !== undefined && error.status >= 500)
  );
}

function unreachable(url: URL, error: unknown): KmsError {
  if (error instanceof KmsError) return error;
  const cause = error as { code?: string; name?: string };
  const why =
    cause.name === 'TimeoutError' || cause.name === 'AbortError' ? 'timed out' : (cause.code ?? cause.name ?? 'failed');
  return new KmsError('ERR_KMS_UNREACHABLE', `KMS at ${url.host} could not be reached: ${why}`, { cause: error });
}

async function readBounded(body: Dispatcher.ResponseData['body'], max: number): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of body) {
    size += (chunk as Buffer).byteLength;
    if (size > max) {
      body.destroy();
      throw new KmsError('ERR_KMS_RESPONSE', `the KMS answer is larger than ${max} bytes`);
    }
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** `com.amazonaws.kms#AccessDeniedException` or `AccessDeniedException:http://...` -> `AccessDeniedException`. */
function errorName(value: unknown): string | undefined {
  if (typeof value !== 'string') return undefined;
  const name = value.split('#').pop()!.split(':')[0]!.trim();
  return /^[A-Za-z0-9_.]{1,64}$/.test(name) ? name : undefined;
}

function firstHeader(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

function secretAnswer(answer: Record<string, unknown>, withRecipient: boolean): KmsSecretAnswer {
  if (withRecipient) {
    // KMS never returns Plaintext with a Recipient; one that does is not the KMS we asked.
    if (answer.Plaintext !== undefined && answer.Plaintext !== null)
      throw new KmsError('ERR_KMS_RESPONSE', 'KMS returned Plaintext although a Recipient was given');
    return { ciphertextForRecipient: blob(answer, 'CiphertextForRecipient', MAX_CIPHERTEXT_FOR_RECIPIENT_BYTES) };
  }
  return { plaintext: Buffer.from(blob(answer, 'Plaintext', KMS_MAX_CIPHERTEXT_BYTES)) };
}

function blob(answer: Record<string, unknown>, field: string, max: number): Uint8Array {
  const value = answer[field];
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    value.length > Math.ceil(max / 3) * 4 ||
    value.length % 4 !== 0 ||
    !/^[A-Za-z0-9+/]+={0,2}$/.test(value)
  ) {
    throw new KmsError('ERR_KMS_RESPONSE', `the KMS answer has no valid base64 ${field}`);
  }
  return new Uint8Array(Buffer.from(value, 'base64'));
}

function optionalString(answer: Record<string, unknown>, field: string): string | undefined {
  const value = answer[field];
  return typeof value === 'string' && value.length <= 2048 ? value : undefined;
}

function recipient(value: KmsRecipient | undefined): Record<string, unknown> {
  if (value === undefined) return {};
  return {
    Recipient: {
      AttestationDocument: base64(value.attestationDocument),
      KeyEncryptionAlgorithm: RECIPIENT_KEY_ENCRYPTION_ALGORITHM,
    },
  };
}

function encryptionContext(value: Readonly<Record<string, string>> | undefined): Record<string, unknown> {
  if (value === undefined || Object.keys(value).length === 0) return {};
  if (Object.keys(value).length > MAX_ENCRYPTION_CONTEXT_PAIRS)
    throw new RangeError(`an encryption context has at most ${MAX_ENCRYPTION_CONTEXT_PAIRS} pairs`);
  return { EncryptionContext: { ...value } };
}

function base64(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
}

function bounded(value: number | undefined, fallback: number, min: number, max: number, name: string): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value < min || value > max)
    throw new RangeError(`${name} must be an integer from ${min} to ${max}, got ${value}`);
  return value;
}
