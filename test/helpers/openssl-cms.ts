import { spawn } from 'node:child_process';
import { createPublicKey, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface OpensslCmsOptions {
  /** `-stream`: indefinite-length BER with the content in chunks, as KMS writes it; default DER. */
  stream?: boolean;
  /** `-keyid`: the recipient named by subjectKeyIdentifier (version 2, as KMS does); default issuer and serial. */
  keyid?: boolean;
  /** Content cipher; default aes256 (what KMS uses). */
  cipher?: 'aes256' | 'aes128';
  /** OAEP hash; default sha256. */
  oaepHash?: 'sha256' | 'sha1';
}

/**
 * Encrypts `plaintext` to an RSA public key with OpenSSL's own `cms -encrypt` (a third-party CMS
 * implementation): RSAES-OAEP key transport, AES-CBC content. `openssl cms` wants a certificate for
 * the recipient, so a throwaway self-signed one is made for the key. The plaintext goes over stdin,
 * never to disk.
 */
export async function opensslCmsEncrypt(
  plaintext: Uint8Array,
  recipientSpki: Uint8Array,
  options: OpensslCmsOptions = {},
): Promise<Buffer> {
  const dir = mkdtempSync(join(tmpdir(), 'openssl-cms-'));
  try {
    const publicPem = createPublicKey({ key: Buffer.from(recipientSpki), format: 'der', type: 'spki' }).export({
      type: 'spki',
      format: 'pem',
    });
    writeFileSync(join(dir, 'recipient.pub.pem'), publicPem);
    // Only signs the throwaway certificate; the recipient's private key is never involved.
    const signer = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    });
    writeFileSync(join(dir, 'signer.pem'), signer, { mode: 0o600 });
    writeFileSync(join(dir, 'ext.cnf'), 'subjectKeyIdentifier=hash\n');
    await run('openssl', [
      'x509',
      '-new',
      '-subj',
      '/CN=kms-recipient',
      '-key',
      join(dir, 'signer.pem'),
      '-force_pubkey',
      join(dir, 'recipient.pub.pem'),
      '-days',
      '1',
      '-extfile',
      join(dir, 'ext.cnf'),
      '-out',
      join(dir, 'recipient.pem'),
    ]);
    const args = ['cms', '-encrypt', '-binary', '-outform', 'DER', '-recip', join(dir, 'recipient.pem')];
    if (options.keyid) args.push('-keyid');
    args.push(
      '-keyopt',
      'rsa_padding_mode:oaep',
      '-keyopt',
      `rsa_oaep_md:${options.oaepHash ?? 'sha256'}`,
      `-${options.cipher ?? 'aes256'}`,
    );
    if (options.stream) args.push('-stream');
    return await run('openssl', args, plaintext);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs a command with `input` on stdin; resolves with stdout, rejects with stderr on a non-zero exit. */
function run(command: string, args: string[], input?: Uint8Array): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    child.once('error', reject);
    child.once('close', (code) =>
      code === 0
        ? resolve(Buffer.concat(out))
        : reject(new Error(`${command} ${args[0]} exited ${code}: ${Buffer.concat(err).toString().slice(0, 500)}`)),
    );
    child.stdin.end(input ? Buffer.from(input) : undefined);
  });
}
