/**
 * The KMS proxy for the app (kms.proxy_listen, loopback): an endpoint the AWS SDKs take as KMS
 * (`endpoint: "http://127.0.0.1:9998"`, any credentials) for Decrypt, GenerateDataKey and
 * GenerateRandom. Each call is made again by the runtime, signed with its own credentials and
 * carrying a fresh attestation document for an RSA key that lives only in this process (the
 * Recipient), so a key policy can require this enclave's PCRs. KMS answers with the secret
 * encrypted to that key; the runtime opens it and gives the app the plaintext, shaped as KMS
 * answers without a Recipient. What the app signs or sends as credentials is never looked at:
 * being inside the enclave is what it takes, and the key policy decides the rest.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Nsm } from '../attestation/nsm.js';
import type { TcpAddress } from '../net/address.js';
import type { Logger } from '../core/log.js';
import { RecipientKey } from '../secrets/recipient-key.js';
import { KMS_MAX_CIPHERTEXT_BYTES, type KmsClient, type KmsSecretAnswer } from './kms-client.js';
import { KmsError } from './kms-error.js';
import { errorCode } from '../core/errors.js';

/** KMS's own request limit is far above what these three operations carry (a 6 KiB blob in base64, a context). */
const MAX_BODY_BYTES = 64 * 1024;
const MAX_CONCURRENT_CALLS = 32;
const MAX_CONNECTIONS = 256;
const HEADERS_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 10_000;
const JSON_11 = 'application/x-amz-json-1.1';
const SUPPORTED = new Set(['Decrypt', 'GenerateDataKey', 'GenerateRandom']);

export interface KmsProxyOptions {
  listen: TcpAddress;
  kms: KmsClient;
  nsm: Nsm;
  logger: Logger;
}

export interface KmsProxy {
  readonly address: TcpAddress;
  readonly stats: { calls: number; refused: number };
  close(): Promise<void>;
}

/** An answer in the KMS error shape: the SDKs read `__type` as the exception name. */
class ProxyFault extends Error {
  constructor(
    readonly status: number,
    readonly type: string,
    message: string,
  ) {
    super(message);
  }
}

export async function startKmsProxy(options: KmsProxyOptions): Promise<KmsProxy> {
  const { kms, nsm, logger } = options;
  // One key for the proxy's life: it never leaves this process, and every call gets its own document.
  const key = await RecipientKey.generate();
  const stats = { calls: 0, refused: 0 };
  let inFlight = 0;

  const handle = async (request: IncomingMessage, response: ServerResponse): Promise<void> => {
    let operation = '';
    try {
      if (request.method !== 'POST' || (request.url ?? '/').split('?')[0] !== '/')
        throw new ProxyFault(404, 'UnknownOperationException', 'the KMS JSON protocol is POST /');
      const target = String(request.headers['x-amz-target'] ?? '');
      operation = target.startsWith('TrentService.') ? target.slice('TrentService.'.length) : '';
      if (!/^[A-Za-z]{1,64}$/.test(operation))
        throw new ProxyFault(400, 'UnknownOperationException', 'X-Amz-Target must be TrentService.<Operation>');
      if (!SUPPORTED.has(operation)) {
        throw new ProxyFault(
          400,
          'UnsupportedOperationException',
          `the enclave's KMS proxy serves Decrypt, GenerateDataKey and GenerateRandom, not ${operation}`,
        );
      }
      const type = String(request.headers['content-type'] ?? '')
        .split(';')[0]!
        .trim()
        .toLowerCase();
      if (type !== JSON_11) throw new ProxyFault(400, 'ValidationException', `the content type must be ${JSON_11}`);
      const input = await readJson(request);
      if (inFlight >= MAX_CONCURRENT_CALLS)
        throw new ProxyFault(
          400,
          'ThrottlingException',
          `more than ${MAX_CONCURRENT_CALLS} KMS calls at once through the proxy`,
        );
      inFlight++;
      try {
        stats.calls++;
        const answer = await call(operation, input, kms, key, nsm);
        send(response, 200, answer);
      } finally {
        inFlight--;
      }
    } catch (error) {
      stats.refused++;
      const fault = toFault(error);
      logger.debug({ operation, status: fault.status, kmsCode: fault.type }, 'KMS proxy call refused');
      send(response, fault.status, { __type: fault.type, message: fault.message });
    }
  };

  const server = createServer({ maxHeaderSize: 16 * 1024 }, (request, response) => void handle(request, response));
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.maxConnections = MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: options.listen.host, port: options.listen.port }, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address: TcpAddress = {
    transport: 'tcp',
    host: options.listen.host,
    port: (server.address() as AddressInfo).port,
  };
  logger.info({ listen: `tcp:${address.host}:${address.port}`, kms: kms.endpoint.origin }, 'KMS proxy listening');
  return {
    address,
    stats,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function call(
  operation: string,
  input: Record<string, unknown>,
  kms: KmsClient,
  key: RecipientKey,
  nsm: Nsm,
): Promise<Record<string, unknown>> {
  for (const field of ['Recipient', 'DryRun', 'GrantTokens', 'CustomKeyStoreId']) {
    if (input[field] !== undefined)
      throw new ProxyFault(
        400,
        'ValidationException',
        `${field} is not supported by the enclave's KMS proxy${field === 'Recipient' ? ' (it sets the Recipient itself)' : ''}`,
      );
  }
  // A document per call: KMS checks its age.
  const recipient = { attestationDocument: await key.attest(nsm) };
  switch (operation) {
    case 'Decrypt': {
      const algorithm = optionalString(input, 'EncryptionAlgorithm');
      if (algorithm !== undefined && algorithm !== 'SYMMETRIC_DEFAULT')
        throw new ProxyFault(
          400,
          'ValidationException',
          'the proxy decrypts symmetric (SYMMETRIC_DEFAULT) ciphertexts only',
        );
      const answer = await kms.decrypt({
        ciphertextBlob: requiredBlob(input, 'CiphertextBlob'),
        keyId: optionalString(input, 'KeyId'),
        encryptionContext: context(input),
        recipient,
      });
      return { KeyId: answer.keyId, EncryptionAlgorithm: 'SYMMETRIC_DEFAULT', Plaintext: opened(answer, key) };
    }
    case 'GenerateDataKey': {
      const keyId = optionalString(input, 'KeyId');
      if (keyId === undefined) throw new ProxyFault(400, 'ValidationException', 'KeyId is required');
      const keySpec = optionalString(input, 'KeySpec');
      if (keySpec !== undefined && keySpec !== 'AES_256' && keySpec !== 'AES_128')
        throw new ProxyFault(400, 'ValidationException', 'KeySpec must be AES_256 or AES_128');
      const numberOfBytes = optionalSize(input);
      if (keySpec !== undefined && numberOfBytes !== undefined)
        throw new ProxyFault(400, 'ValidationException', 'give KeySpec or NumberOfBytes, not both');
      const answer = await kms.generateDataKey({
        keyId,
        keySpec,
        numberOfBytes,
        encryptionContext: context(input),
        recipient,
      });
      return {
        KeyId: answer.keyId,
        CiphertextBlob: Buffer.from(answer.ciphertextBlob).toString('base64'),
        Plaintext: opened(answer, key),
      };
    }
    default: {
      const answer = await kms.generateRandom({ numberOfBytes: optionalSize(input) ?? 32, recipient });
      return { Plaintext: opened(answer, key) };
    }
  }
}

/** Opens the CiphertextForRecipient in the enclave and returns the plaintext as KMS's base64 field. */
function opened(answer: KmsSecretAnswer, key: RecipientKey): string {
  if (answer.ciphertextForRecipient === undefined)
    throw new KmsError('ERR_KMS_RESPONSE', 'KMS answered without CiphertextForRecipient');
  const plaintext = key.open(answer.ciphertextForRecipient);
  try {
    return plaintext.toString('base64');
  } finally {
    plaintext.fill(0);
  }
}

function toFault(error: unknown): ProxyFault {
  if (error instanceof ProxyFault) return error;
  if (error instanceof KmsError) {
    // KMS's own refusal goes to the app as KMS gave it; the rest are failures on the way.
    if (error.code === 'ERR_KMS_REQUEST' && error.kmsCode)
      return new ProxyFault(error.status ?? 400, error.kmsCode, error.message);
    if (error.code === 'ERR_KMS_UNREACHABLE') return new ProxyFault(503, 'DependencyTimeoutException', error.message);
    return new ProxyFault(502, 'KMSInternalException', error.message);
  }
  if (error instanceof RangeError) return new ProxyFault(400, 'ValidationException', error.message);
  const code = errorCode(error);
  if (typeof code === 'string' && /^ERR_SECRET_/.test(code))
    return new ProxyFault(502, 'KMSInternalException', "KMS's answer could not be opened with the enclave's key");
  if (typeof code === 'string' && /^ERR_NSM/.test(code))
    return new ProxyFault(503, 'KMSInternalException', 'the enclave could not make an attestation document');
  return new ProxyFault(500, 'KMSInternalException', 'the KMS proxy failed');
}

function send(response: ServerResponse, status: number, body: Record<string, unknown>): void {
  const text = JSON.stringify(body);
  response.writeHead(status, {
    'content-type': JSON_11,
    'content-length': Buffer.byteLength(text),
    ...(status >= 300 ? { 'x-amzn-errortype': String(body.__type) } : {}),
  });
  response.end(text);
}

function readJson(request: IncomingMessage): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    // Past the limit the rest is read and discarded (server.requestTimeout bounds how long), so the
    // client gets the 413 instead of a reset in the middle of its upload.
    request.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size <= MAX_BODY_BYTES) chunks.push(chunk);
    });
    request.once('error', reject);
    request.once('end', () => {
      if (size > MAX_BODY_BYTES)
        return reject(
          new ProxyFault(413, 'ValidationException', `the request body is larger than ${MAX_BODY_BYTES} bytes`),
        );
      let value: unknown;
      try {
        value = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}');
      } catch {
        return reject(new ProxyFault(400, 'SerializationException', 'the request body is not JSON'));
      }
      if (typeof value !== 'object' || value === null || Array.isArray(value))
        return reject(new ProxyFault(400, 'SerializationException', 'the request body is not a JSON object'));
      resolve(value as Record<string, unknown>);
    });
  });
}

function optionalString(input: Record<string, unknown>, field: string): string | undefined {
  const value = input[field];
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'string' || value.length === 0 || value.length > 2048)
    throw new ProxyFault(400, 'ValidationException', `${field} must be a string of 1 to 2048 characters`);
  return value;
}

function requiredBlob(input: Record<string, unknown>, field: string): Uint8Array {
  const value = input[field];
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    value.length > Math.ceil(KMS_MAX_CIPHERTEXT_BYTES / 3) * 4 ||
    value.length % 4 !== 0 ||
    !/^[A-Za-z0-9+/]+={0,2}$/.test(value)
  ) {
    throw new ProxyFault(
      400,
      'ValidationException',
      `${field} must be base64 of 1 to ${KMS_MAX_CIPHERTEXT_BYTES} bytes`,
    );
  }
  return new Uint8Array(Buffer.from(value, 'base64'));
}

function optionalSize(input: Record<string, unknown>): number | undefined {
  const value = input.NumberOfBytes;
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > 1024)
    throw new ProxyFault(400, 'ValidationException', 'NumberOfBytes must be an integer from 1 to 1024');
  return value;
}

function context(input: Record<string, unknown>): Record<string, string> | undefined {
  const value = input.EncryptionContext;
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object' || Array.isArray(value) || !Object.values(value).every((v) => typeof v === 'string')) {
    throw new ProxyFault(400, 'ValidationException', 'EncryptionContext must be a map of strings');
  }
  return { ...(value as Record<string, string>) };
}
