import { createPrivateKey, generateKeyPair, randomBytes } from 'node:crypto';
import { chmod, link, readFile, stat, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from '../core/log.js';
import { TlsError } from './tls-error.js';
import { errorCode } from '../core/errors.js';

const generateEcKeyPair = promisify(generateKeyPair);

/** The account key's file in the state dir. */
export const ACME_ACCOUNT_KEY_FILE = 'acme-account-key.pem';
// A PEM private key is a few hundred bytes; anything much larger is not one.
const MAX_KEY_FILE_BYTES = 16 * 1024;

/** A fresh ECDSA P-256 private key as PKCS#8 PEM, the form acme-client takes. */
export async function generateAcmePrivateKeyPem(): Promise<string> {
  const { privateKey } = await generateEcKeyPair('ec', { namedCurve: 'prime256v1' });
  return privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
}

/**
 * The ACME account key (ECDSA P-256, PKCS#8 PEM) from `<stateDir>/acme-account-key.pem`, created
 * 0600 on first use. Keeping it lets a restart in the same state dir reuse the account instead of
 * registering a new one each time (CAs rate-limit new accounts). It signs ACME requests only; the
 * certificate keys never touch the disk.
 */
export async function loadAcmeAccountKey(stateDir: string, logger: Logger): Promise<string> {
  const path = join(stateDir, ACME_ACCOUNT_KEY_FILE);
  const existing = await readKey(path);
  if (existing !== undefined) {
    const mode = (await stat(path)).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      await chmod(path, 0o600);
      logger.warn({ path, mode: mode.toString(8) }, 'ACME account key was readable by others; made it 0600');
    }
    return existing;
  }
  const pem = await generateAcmePrivateKeyPem();
  // Written whole to a private temp file, then linked into place: a crash never leaves a half key,
  // and of two processes sharing a state dir the second gets EEXIST and reads the first one's key.
  const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    await writeFile(temp, pem, { mode: 0o600, flag: 'wx' });
    await link(temp, path);
  } catch (error) {
    if (errorCode(error) === 'EEXIST') {
      const raced = await readKey(path);
      if (raced !== undefined) return raced;
    }
    throw new TlsError('ERR_TLS_ACME_ACCOUNT', `cannot create ${path}: ${(error as Error).message}`, { cause: error });
  } finally {
    await unlink(temp).catch(() => {});
  }
  logger.info({ path }, 'ACME account key created');
  return pem;
}

async function readKey(path: string): Promise<string | undefined> {
  let text: string;
  try {
    const info = await stat(path);
    if (info.size > MAX_KEY_FILE_BYTES)
      throw new TlsError('ERR_TLS_ACME_ACCOUNT', `${path} is ${info.size} bytes; not a private key`);
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined;
    if (error instanceof TlsError) throw error;
    throw new TlsError('ERR_TLS_ACME_ACCOUNT', `cannot read ${path}: ${(error as Error).message}`, { cause: error });
  }
  try {
    const key = createPrivateKey(text);
    if (key.asymmetricKeyType !== 'ec' && key.asymmetricKeyType !== 'rsa')
      throw new Error(`unsupported key type ${key.asymmetricKeyType}`);
  } catch (error) {
    throw new TlsError('ERR_TLS_ACME_ACCOUNT', `${path} is not a usable private key: ${(error as Error).message}`, {
      cause: error,
    });
  }
  return text;
}
