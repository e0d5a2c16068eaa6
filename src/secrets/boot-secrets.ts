/**
 * Secrets at boot: each [[secrets]] ciphertext goes to KMS Decrypt with this enclave as the
 * Recipient (an attestation document carrying a fresh in-memory RSA key), and the CMS answer is
 * opened here. The values exist only in memory and in the environment object handed to the
 * customer command's spawn: never in process.env, a file or a log line.
 */
import { open } from 'node:fs/promises';
import type { Dispatcher } from 'undici';
import type { Nsm } from '../attestation/nsm.js';
import type { RuntimeConfig } from '../config/schema.js';
import { KmsClient } from '../kms/kms-client.js';
import { KmsError } from '../kms/kms-error.js';
import { kmsDispatcher, kmsSettings } from '../kms/kms-settings.js';
import type { Logger } from '../core/log.js';
import { RecipientKey } from './recipient-key.js';
import { MAX_SECRET_CIPHERTEXT_BYTES, type SecretEntry } from './secret-config.js';
import { SecretError } from './secret-error.js';
import { errorCode } from '../core/errors.js';

/** A ciphertext file is a KMS blob (at most 6 KiB) or its base64; anything bigger is the wrong file. */
const MAX_CIPHERTEXT_FILE_BYTES = 16 * 1024;
const utf8 = new TextDecoder('utf-8', { fatal: true });

export interface LoadSecretsOptions {
  nsm: Nsm;
  logger: Logger;
  /** Where empty [kms] keys fall back to; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Overrides kms.via (tests); a dispatcher given here is not closed. */
  dispatcher?: Dispatcher;
}

/**
 * Decrypts every [[secrets]] entry and returns NAME -> value for the command's environment.
 * A required secret that fails throws ERR_SECRET_LOAD naming it (after one error line naming the
 * secret and the KMS error code); an optional one is left out with a warning.
 */
export async function loadSecrets(
  config: Pick<RuntimeConfig, 'kms' | 'egress' | 'secrets'>,
  options: LoadSecretsOptions,
): Promise<Record<string, string>> {
  // No prototype: a variable named __proto__ is still a plain entry.
  const values: Record<string, string> = Object.create(null) as Record<string, string>;
  if (config.secrets.length === 0) return values;
  const { logger } = options;
  const dispatcher = options.dispatcher ?? kmsDispatcher(config);
  try {
    const kms = new KmsClient({ ...kmsSettings(config.kms, options.env), dispatcher, logger });
    const key = await RecipientKey.generate();
    logger.info(
      {
        secrets: config.secrets.length,
        endpoint: kms.endpoint.origin,
        via: options.dispatcher ? 'custom' : config.kms.via,
      },
      'loading secrets from KMS',
    );
    for (const entry of config.secrets) {
      try {
        logger.trace(
          { secret: entry.name, source: entry.file === undefined ? 'inline' : entry.file, keyId: entry.keyId },
          'decrypting secret',
        );
        values[entry.name] = await loadOne(entry, kms, key, options.nsm);
        logger.info({ secret: entry.name }, 'secret loaded');
      } catch (error) {
        const facts = {
          secret: entry.name,
          code: errorCode(error),
          kmsCode: error instanceof KmsError ? error.kmsCode : undefined,
          reason: (error as Error).message,
        };
        if (!entry.required) {
          logger.warn(facts, 'optional secret could not be loaded; its variable is left unset');
          continue;
        }
        logger.error(facts, 'secret could not be loaded');
        throw new SecretError(
          'ERR_SECRET_LOAD',
          `secret ${entry.name} could not be loaded: ${(error as Error).message}`,
          { cause: error, secret: entry.name },
        );
      }
    }
    return values;
  } finally {
    if (options.dispatcher === undefined) await dispatcher.close();
  }
}

async function loadOne(entry: SecretEntry, kms: KmsClient, key: RecipientKey, nsm: Nsm): Promise<string> {
  const ciphertextBlob = entry.ciphertext ?? (await readCiphertextFile(entry.file ?? '', entry.name));
  // A document per call: KMS checks its age, and boot may be slow behind retries.
  const attestationDocument = await key.attest(nsm);
  const answer = await kms.decrypt({ ciphertextBlob, keyId: entry.keyId, recipient: { attestationDocument } });
  const plaintext = key.open(answer.ciphertextForRecipient!);
  try {
    return toEnvironmentValue(plaintext, entry);
  } finally {
    plaintext.fill(0);
  }
}

/** A plaintext as an environment variable value: UTF-8 text without NUL, or base64 of any bytes. */
function toEnvironmentValue(plaintext: Buffer, entry: SecretEntry): string {
  if (entry.encoding === 'base64') return plaintext.toString('base64');
  let text: string;
  try {
    text = utf8.decode(plaintext);
  } catch {
    throw new SecretError(
      'ERR_SECRET_VALUE',
      'the plaintext is not UTF-8 text; set encoding = "base64" for binary secrets',
      { secret: entry.name },
    );
  }
  if (text.includes('\0'))
    throw new SecretError(
      'ERR_SECRET_VALUE',
      'the plaintext contains a NUL byte, which no environment variable can carry; set encoding = "base64"',
      { secret: entry.name },
    );
  return text;
}

/** Reads a CiphertextBlob file: raw bytes, or base64 text of them (as `aws kms encrypt --output text` prints). */
export async function readCiphertextFile(path: string, name: string): Promise<Uint8Array> {
  let bytes: Buffer;
  try {
    const handle = await open(path, 'r');
    try {
      const buffer = Buffer.alloc(MAX_CIPHERTEXT_FILE_BYTES + 1);
      const { bytesRead } = await handle.read(buffer, 0, buffer.byteLength, 0);
      if (bytesRead > MAX_CIPHERTEXT_FILE_BYTES)
        throw new SecretError(
          'ERR_SECRET_FILE',
          `${path} is larger than ${MAX_CIPHERTEXT_FILE_BYTES} bytes; it is not a KMS ciphertext`,
          { secret: name },
        );
      bytes = buffer.subarray(0, bytesRead);
    } finally {
      await handle.close();
    }
  } catch (error) {
    if (error instanceof SecretError) throw error;
    throw new SecretError('ERR_SECRET_FILE', `cannot read ${path}: ${errorCode(error) ?? 'error'}`, { secret: name });
  }
  const text = bytes.toString('latin1').replace(/\s+/g, '');
  const blob =
    text.length > 0 && text.length % 4 === 0 && /^[A-Za-z0-9+/]+={0,2}$/.test(text)
      ? Buffer.from(text, 'base64')
      : bytes;
  if (blob.byteLength === 0 || blob.byteLength > MAX_SECRET_CIPHERTEXT_BYTES) {
    throw new SecretError(
      'ERR_SECRET_FILE',
      `${path} holds ${blob.byteLength} bytes; a KMS ciphertext is 1 to ${MAX_SECRET_CIPHERTEXT_BYTES}`,
      { secret: name },
    );
  }
  return new Uint8Array(blob);
}
