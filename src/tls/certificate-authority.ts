// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPrivateKey, createPublicKey, KeyObject, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { link, mkdir, readFile, rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from '../core/log.js';
import { TlsError } from './tls-error.js';
import { certificatePem, certificateSubjectName, LeafTemplate } from './leaf-template.js';
import { errorCode } from '../core/errors.js';

x509.cryptoProvider.set(webcrypto);

type CryptoKey = webcrypto.CryptoKey;

/** `<state-dir>/ca.pem`: the CA certificate clients may trust (SPEC). */
export const CA_CERT_FILE = 'ca.pem';
/** The CA's private key and certificate together: the one file whose exclusive creation decides which CA a state dir has. */
export const CA_KEY_FILE = 'ca-key.pem';

// P-256 for new CAs: its signature is the cheapest on the per-nonce path. A P-384 CA found in a
// state dir is used as is, with SHA-384.
const CURVES = {
  prime256v1: { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256', nodeHash: 'sha256' },
  secp384r1: { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384', nodeHash: 'sha384' },
} as const;
type CaAlgorithm = (typeof CURVES)[keyof typeof CURVES];
const DAY_MS = 24 * 3600 * 1000;
const CA_VALIDITY_MS = 2 * 365 * DAY_MS;
// A CA this close to expiry would soon issue leaves outliving it, so it is replaced at startup.
const CA_MIN_REMAINING_MS = 30 * DAY_MS;
/** Default leaf lifetime: a few days, since the embedded attestation document expires sooner anyway. */
export const DEFAULT_LEAF_VALIDITY_MS = 3 * DAY_MS;
// Tolerates a client clock a little behind ours.
const BACKDATE_MS = 5 * 60 * 1000;
const LOSER_WAIT_MS = 5000;

/** What to put in a leaf certificate. `dnsNames[0]` is the subject CN. */
export interface LeafRequest {
  dnsNames: readonly string[];
  /** DER SubjectPublicKeyInfo of the leaf key. */
  publicKeySpki: Uint8Array;
  validityMs?: number;
}

/** A leaf issued by the CA: PEM of the leaf and of the chain above it (the CA). */
export interface IssuedLeaf {
  certPem: string;
  certDer: Uint8Array;
  chainPem: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CertificateAuthorityOptions {
  logger: Logger;
  /** The clock in ms since the epoch; tests move it. */
  now?: () => number;
  /** CN of a newly generated CA, before its random suffix; default "enclave-runtime dev CA". */
  commonName?: string;
  /** basicConstraints pathLen of a newly generated CA: 0 signs only leaves (default), 1 also intermediates. */
  pathLength?: number;
}

/** What to put in an intermediate CA certificate (the provisioner signing an enclave's CSR). */
export interface IntermediateRequest {
  /** DER SubjectPublicKeyInfo of the intermediate's key. */
  publicKeySpki: Uint8Array;
  subject: x509.JsonName;
  validityMs: number;
  /** When non-empty, a critical nameConstraints extension permitting only these DNS subtrees and excluding every IP address. */
  permittedDnsNames?: readonly string[];
}

/** An intermediate CA certificate issued by this CA. */
export interface IssuedIntermediate {
  certPem: string;
  serialNumber: string;
  notBefore: Date;
  notAfter: Date;
}

/**
 * The runtime's own CA (`tls.source = "self"`): ECDSA P-256, generated once per state dir.
 * Issuing a leaf is one P-256 signature (about a millisecond), cheap enough for the per-nonce path.
 */
export class CertificateAuthority {
  readonly certificatePem: string;
  /** `<state-dir>/ca.pem`, or undefined for a CA held only in memory. */
  readonly certificatePath: string | undefined;
  readonly notAfter: Date;
  readonly #signingKey: CryptoKey;
  readonly #algorithm: CaAlgorithm;
  // Parsed once: the generator would otherwise re-parse the issuer string on every leaf.
  readonly #issuer: x509.Name;
  readonly #authorityKeyId: x509.AuthorityKeyIdentifierExtension;
  // Leaves are on the per-nonce path, so they are spliced from pre-encoded DER, not built by @peculiar/x509.
  readonly #leaves: LeafTemplate;
  readonly #now: () => number;

  private constructor(
    stored: Omit<StoredCa, 'keyDer'>,
    certificatePath: string | undefined,
    signingKey: CryptoKey,
    authorityKeyId: x509.AuthorityKeyIdentifierExtension,
    now: () => number,
  ) {
    this.certificatePem = stored.certPem;
    this.certificatePath = certificatePath;
    this.notAfter = stored.cert.notAfter;
    this.#signingKey = signingKey;
    this.#algorithm = stored.algorithm;
    this.#issuer = stored.cert.subjectName;
    this.#authorityKeyId = authorityKeyId;
    this.#leaves = new LeafTemplate({
      issuerName: certificateSubjectName(new Uint8Array(stored.cert.rawData)),
      authorityKeyIdExtension: new Uint8Array(authorityKeyId.rawData),
      hash: stored.algorithm.nodeHash,
      signingKey: KeyObject.from(signingKey),
    });
    this.#now = now;
  }

  /** Load the state dir's CA, or create it (and `ca.pem`) if there is none or it is about to expire. */
  static async open(stateDir: string, options: CertificateAuthorityOptions): Promise<CertificateAuthority> {
    const now = options.now ?? Date.now;
    await mkdir(stateDir, { recursive: true, mode: 0o700 });
    const keyPath = join(stateDir, CA_KEY_FILE);
    const certPath = join(stateDir, CA_CERT_FILE);

    let stored = await readStoredCa(keyPath);
    if (stored && stored.cert.notAfter.getTime() - now() < CA_MIN_REMAINING_MS) {
      options.logger.warn(
        { path: certPath, notAfter: stored.cert.notAfter.toISOString() },
        'TLS CA expired or about to; generating a new one (clients must trust the new ca.pem)',
      );
      const fresh = await generateCaPem(now(), options.commonName, options.pathLength);
      await writeAtomically(keyPath, fresh, 0o600);
      stored = await readStoredCa(keyPath);
    } else if (!stored) {
      stored = await createExclusively(keyPath, await generateCaPem(now(), options.commonName, options.pathLength));
      options.logger.info({ path: certPath }, 'generated a new TLS CA');
    }
    if (!stored) throw new TlsError('ERR_TLS_CA_STATE', `${keyPath} could not be created`);

    // ca.pem is derived from the key file, so a missing or stale copy is simply rewritten.
    const current = await readFile(certPath, 'utf8').catch(() => undefined);
    if (current !== stored.certPem) await writeAtomically(certPath, stored.certPem, 0o644);

    const signingKey = await webcrypto.subtle.importKey(
      'pkcs8',
      stored.keyDer,
      { name: 'ECDSA', namedCurve: stored.algorithm.namedCurve },
      false,
      ['sign'],
    );
    const authorityKeyId = await x509.AuthorityKeyIdentifierExtension.create(stored.cert, false);
    return new CertificateAuthority(stored, certPath, signingKey, authorityKeyId, now);
  }

  /**
   * A CA whose key exists only in memory (the enclave's provisioned intermediate): nothing is read
   * or written, and the key may be non-extractable. Leaves chain to `certPem`.
   */
  static async fromKey(
    certPem: string,
    signingKey: CryptoKey,
    options: { now?: () => number } = {},
  ): Promise<CertificateAuthority> {
    const cert = new x509.X509Certificate(certPem);
    const curve = (signingKey.algorithm as webcrypto.EcKeyAlgorithm).namedCurve;
    const algorithm = curve === 'P-256' ? CURVES.prime256v1 : curve === 'P-384' ? CURVES.secp384r1 : undefined;
    if (!algorithm)
      throw new TlsError(
        'ERR_TLS_CA_STATE',
        `a CA key must be ECDSA P-256 or P-384, not ${curve ?? signingKey.algorithm.name}`,
      );
    const authorityKeyId = await x509.AuthorityKeyIdentifierExtension.create(cert, false);
    return new CertificateAuthority(
      { certPem, cert, algorithm },
      undefined,
      signingKey,
      authorityKeyId,
      options.now ?? Date.now,
    );
  }

  /** Issue an intermediate CA (pathLen 0, keyCertSign): the provisioner signing an attested enclave's key. */
  async issueIntermediate(request: IntermediateRequest): Promise<IssuedIntermediate> {
    const serialNumber = randomSerial();
    const permitted = request.permittedDnsNames ?? [];
    const signed = await this.#sign(serialNumber, request.subject, request.publicKeySpki, request.validityMs, [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(request.publicKeySpki),
      ...(permitted.length > 0
        ? [new x509.Extension(NAME_CONSTRAINTS_OID, true, encodeDnsNameConstraints(permitted))]
        : []),
    ]);
    return { certPem: signed.certPem, serialNumber, notBefore: signed.notBefore, notAfter: signed.notAfter };
  }

  /**
   * Issue a TLS server leaf: CN (when it fits) and DNS SANs as given, serverAuth, digitalSignature,
   * backdated a little and never outliving this CA.
   */
  async issue(request: LeafRequest): Promise<IssuedLeaf> {
    if (request.dnsNames.length === 0) throw new TlsError('ERR_TLS_ISSUE', 'a leaf needs at least one DNS name');
    const { notBefore, notAfter } = this.#validity(request.validityMs ?? DEFAULT_LEAF_VALIDITY_MS);
    const der = await this.#leaves.issue({
      serial: Buffer.from(randomSerial(), 'hex'),
      notBefore,
      notAfter,
      dnsNames: request.dnsNames,
      publicKeySpki: request.publicKeySpki,
    });
    return { certPem: certificatePem(der), certDer: der, chainPem: this.certificatePem, notBefore, notAfter };
  }

  #validity(validityMs: number): { notBefore: Date; notAfter: Date } {
    const now = this.#now();
    return {
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(Math.min(now + validityMs, this.notAfter.getTime())),
    };
  }

  /** Signs a certificate for `publicKeySpki` with @peculiar/x509 (intermediates: off the hot path); the AKI is added. */
  async #sign(
    serialNumber: string,
    subject: x509.X509CertificateCreateParams['subject'],
    publicKeySpki: LeafRequest['publicKeySpki'],
    validityMs: number,
    extensions: x509.Extension[],
  ): Promise<{ certPem: string; notBefore: Date; notAfter: Date }> {
    const { notBefore, notAfter } = this.#validity(validityMs);
    const cert = await x509.X509CertificateGenerator.create({
      serialNumber,
      subject,
      issuer: this.#issuer,
      notBefore,
      notAfter,
      signingAlgorithm: this.#algorithm,
      publicKey: publicKeySpki,
      signingKey: this.#signingKey,
      extensions: [...extensions, this.#authorityKeyId],
    });
    return { certPem: cert.toString('pem') + '\n', notBefore, notAfter };
  }
}

interface StoredCa {
  certPem: string;
  cert: x509.X509Certificate;
  keyDer: Uint8Array;
  algorithm: CaAlgorithm;
}

async function readStoredCa(keyPath: string): Promise<StoredCa | undefined> {
  let text: string;
  try {
    text = await readFile(keyPath, 'utf8');
  } catch (err) {
    if (errorCode(err) === 'ENOENT') return undefined;
    throw new TlsError('ERR_TLS_CA_STATE', `cannot read ${keyPath}: ${(err as Error).message}`, { cause: err });
  }
  try {
    const keyPem = pemBlock(text, 'PRIVATE KEY');
    const certPem = pemBlock(text, 'CERTIFICATE');
    const privateKey = createPrivateKey(keyPem);
    const nodeCert = new X509Certificate(certPem);
    const spki = (k: Parameters<typeof createPublicKey>[0]) =>
      createPublicKey(k).export({ type: 'spki', format: 'der' });
    if (!spki(privateKey).equals(spki(nodeCert.publicKey.export({ type: 'spki', format: 'pem' })))) {
      throw new Error('the key does not match the certificate');
    }
    const curve = privateKey.asymmetricKeyDetails?.namedCurve;
    const algorithm =
      privateKey.asymmetricKeyType === 'ec' && (curve === 'prime256v1' || curve === 'secp384r1')
        ? CURVES[curve]
        : undefined;
    if (!algorithm) throw new Error('the key is not ECDSA P-256 or P-384');
    const keyDer = new Uint8Array(privateKey.export({ type: 'pkcs8', format: 'der' }));
    return { certPem, cert: new x509.X509Certificate(certPem), keyDer, algorithm };
  } catch (err) {
    throw new TlsError(
      'ERR_TLS_CA_STATE',
      `${keyPath} is not a usable CA (${(err as Error).message}); remove it and ${CA_CERT_FILE} to generate a new CA`,
      { cause: err },
    );
  }
}

function pemBlock(text: string, label: string): string {
  const match = new RegExp(`-----BEGIN ${label}-----[A-Za-z0-9+/=\\s]+-----END ${label}-----`).exec(text);
  if (!match) throw new Error(`no ${label} block`);
  return match[0] + '\n';
}

async function generateCaPem(now: number, commonName = 'enclave-runtime dev CA', pathLength = 0): Promise<string> {
  const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  // A random suffix tells apart the CAs of different state dirs in a trust store.
  const name: x509.JsonName = [{ CN: [`${commonName} ${randomBytes(4).toString('hex')}`] }, { O: ['enclave-runtime'] }];
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name,
    notBefore: new Date(now - BACKDATE_MS),
    notAfter: new Date(now + CA_VALIDITY_MS),
    signingAlgorithm: CURVES.prime256v1,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, pathLength, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
  const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
  return keyPem + cert.toString('pem') + '\n';
}

/**
 * Two processes opening one fresh state dir must end up with the same CA: the key file is
 * hard-linked into place, which fails if it exists, and the loser adopts the winner's file.
 */
async function createExclusively(keyPath: string, content: string): Promise<StoredCa | undefined> {
  const tmp = `${keyPath}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, content, { mode: 0o600, flag: 'wx' });
  try {
    await link(tmp, keyPath);
  } catch (err) {
    if (errorCode(err) !== 'EEXIST') throw err;
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  // The winner's link is atomic, so the file is complete as soon as it exists; the wait only
  // covers a file system where link is emulated by copy.
  const deadline = Date.now() + LOSER_WAIT_MS;
  for (;;) {
    try {
      return await readStoredCa(keyPath);
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  }
}

async function writeAtomically(path: string, content: string, mode: number): Promise<void> {
  const tmp = `${path}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(tmp, content, { mode, flag: 'wx' });
  try {
    await rename(tmp, path);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

const NAME_CONSTRAINTS_OID = '2.5.29.30';

/**
 * DER of NameConstraints { permittedSubtrees [0] { GeneralSubtree { dNSName [2] } ... },
 * excludedSubtrees [1] { iPAddress [7] 0.0.0.0/0, iPAddress [7] ::/0 } }, written by hand because
 * @peculiar/x509 has no class for it (RFC 5280 4.2.1.10, implicit tags). A DNS-only constraint says
 * nothing about IP SANs, so without the exclusions a leaf for any IP address would chain.
 */
function encodeDnsNameConstraints(names: readonly string[]): Uint8Array {
  const permitted = names.map((name) => der(0x30, der(0x82, Buffer.from(name, 'ascii'))));
  const excluded = [Buffer.alloc(8), Buffer.alloc(32)].map((addressAndMask) => der(0x30, der(0x87, addressAndMask)));
  return new Uint8Array(
    der(0x30, Buffer.concat([der(0xa0, Buffer.concat(permitted)), der(0xa1, Buffer.concat(excluded))])),
  );
}

function der(tag: number, content: Buffer): Buffer {
  const n = content.length;
  const length =
    n < 0x80
      ? Buffer.of(n)
      : n < 0x100
        ? Buffer.of(0x81, n)
        : n < 0x10000
          ? Buffer.of(0x82, n >> 8, n & 0xff)
          : undefined;
  if (!length) throw new TlsError('ERR_TLS_ISSUE', 'name constraints larger than 64 KiB');
  return Buffer.concat([Buffer.of(tag), length, content]);
}

// 16 random bytes with the top bit clear: a positive DER INTEGER, unique without bookkeeping.
function randomSerial(): string {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}
