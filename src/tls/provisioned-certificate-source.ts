// @peculiar/x509 needs the Reflect metadata polyfill loaded before it (see certificate-authority.ts).
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { webcrypto, X509Certificate } from 'node:crypto';
import type { Nsm } from '../attestation/nsm.js';
import { formatAddress, type Address } from '../net/address.js';
import type { Logger } from '../core/log.js';
import { ProvisionerClient } from '../provisioner/provisioner-client.js';
import { ProvisioningError } from '../provisioner/provisioner-error.js';
import { provisioningUserData } from '../wire/provisioner-protocol.js';
import { CertificateAuthority } from './certificate-authority.js';
import type { CertificateRequest, CertificateSource, IssuedCertificate } from './certificate-source.js';
import { TlsError } from './tls-error.js';
import { backoffDelay, timerDelay } from '../core/backoff.js';

x509.cryptoProvider.set(webcrypto);

type CryptoKeyPair = webcrypto.CryptoKeyPair;

// Renew when this share of the intermediate's lifetime has passed: a failing provisioner then
// leaves a third of the lifetime for retries before leaves can no longer be issued.
const RENEW_AT_FRACTION = 2 / 3;
const RETRY_MIN_MS = 5_000;
const RETRY_MAX_MS = 10 * 60_000;
const MAX_CHAIN_CERTS = 8;
const PEM_CERT = /-----BEGIN CERTIFICATE-----[A-Za-z0-9+/=\s]+?-----END CERTIFICATE-----/g;

export interface ProvisionedSourceOptions {
  nsm: Nsm;
  /** The provisioner, as the enclave reaches it (the parent's relay). */
  address: Address;
  /** Bound on each provisioner request, connect included. */
  timeoutMs: number;
  logger: Logger;
  /** Leaf lifetime; capped at the intermediate's notAfter anyway. */
  leafValidityMs?: number;
  /** First wait after a failed renewal (doubling to 10 min), and the shortest wait for any; default 5 s. */
  retryMinMs?: number;
  now?: () => number;
  /**
   * Makes the intermediate's key pair; default a fresh non-extractable ECDSA P-256 WebCrypto pair,
   * so the private half cannot be exported even by this process. Tests pass an extractable one to
   * prove its bytes never reach the wire.
   */
  generateKeyPair?: () => Promise<CryptoKeyPair>;
}

/** One provisioned intermediate: the CA that signs leaves, and what is served and trusted above it. */
interface Provisioned {
  authority: CertificateAuthority;
  /** The intermediate and any provisioner intermediates: sent after each leaf (never the root). */
  servedChainPem: string;
  /** The provisioner's root, which clients trust. */
  rootPem: string;
  notBefore: Date;
  notAfter: Date;
}

/**
 * `tls.source = "provisioner"`: the enclave's own intermediate CA, whose key is made in the
 * enclave and never leaves it, signed by a provisioner that first checks the enclave's attestation.
 * Leaves are then signed here, so per-nonce certificates stay local and fast; the served chain is
 * leaf + intermediate. The intermediate is renewed (new key, new attestation) before it expires.
 */
export class ProvisionedCertificateSource implements CertificateSource {
  readonly kind = 'provisioner';
  readonly #options: ProvisionedSourceOptions;
  readonly #now: () => number;
  readonly #retryMinMs: number;
  #current: Provisioned;
  #timer: NodeJS.Timeout | undefined;
  #failures = 0;
  #closed = false;

  private constructor(options: ProvisionedSourceOptions, first: Provisioned) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
    this.#retryMinMs = options.retryMinMs ?? RETRY_MIN_MS;
    this.#current = first;
    this.#scheduleRenewal(this.#renewDelay(first));
  }

  /** Provision the first intermediate; fails with the provisioner's reason when it refuses. */
  static async open(options: ProvisionedSourceOptions): Promise<ProvisionedCertificateSource> {
    return new ProvisionedCertificateSource(options, await provision(options));
  }

  /** The provisioner's root: the one certificate clients need to trust. */
  get trustAnchorPem(): string {
    return this.#current.rootPem;
  }

  /** PEM of the current intermediate CA certificate. */
  get intermediatePem(): string {
    return this.#current.authority.certificatePem;
  }

  /** When the current intermediate expires. */
  get notAfter(): Date {
    return this.#current.notAfter;
  }

  async issue(request: CertificateRequest): Promise<IssuedCertificate> {
    const current = this.#current;
    if (current.notAfter.getTime() <= this.#now()) {
      throw new TlsError(
        'ERR_TLS_PROVISIONED_CA_EXPIRED',
        `the provisioned intermediate CA expired at ${current.notAfter.toISOString()} and could not be renewed`,
      );
    }
    const leaf = await current.authority.issue({
      dnsNames: request.dnsNames,
      publicKeySpki: request.publicKeySpki,
      ...(this.#options.leafValidityMs === undefined ? {} : { validityMs: this.#options.leafValidityMs }),
    });
    return { certPem: leaf.certPem, certDer: leaf.certDer, chainPem: current.servedChainPem, notAfter: leaf.notAfter };
  }

  /** Provision a new intermediate now (new key, new challenge, new document) and use it from then on. */
  async renew(): Promise<void> {
    const next = await provision(this.#options);
    if (this.#closed) return;
    this.#current = next;
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#timer);
  }

  #renewDelay(provisioned: Provisioned): number {
    const start = provisioned.notBefore.getTime();
    return start + (provisioned.notAfter.getTime() - start) * RENEW_AT_FRACTION - this.#now();
  }

  #scheduleRenewal(delayMs: number): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => void this.#renewOnTimer(), timerDelay(delayMs, this.#retryMinMs));
    this.#timer.unref();
  }

  async #renewOnTimer(): Promise<void> {
    try {
      await this.renew();
      this.#failures = 0;
      this.#scheduleRenewal(this.#renewDelay(this.#current));
    } catch (error) {
      this.#failures += 1;
      const retryMs = backoffDelay(this.#failures, this.#retryMinMs, RETRY_MAX_MS);
      this.#options.logger.warn(
        {
          code: (error as ProvisioningError).code,
          remoteCode: (error as ProvisioningError).remoteCode,
          reason: (error as Error).message,
          retryMs,
          notAfter: this.#current.notAfter.toISOString(),
        },
        'renewing the provisioned intermediate CA failed; the current one stays in use',
      );
      this.#scheduleRenewal(retryMs);
    }
  }
}

/** Open the `provisioner` source: provisions the first intermediate before returning. */
export function openProvisionedCertificateSource(
  options: ProvisionedSourceOptions,
): Promise<ProvisionedCertificateSource> {
  return ProvisionedCertificateSource.open(options);
}

/**
 * The provisioning exchange: key pair, CSR, challenge, a document with nonce = the challenge and
 * user_data = `enclave-runtime/provisioner/v1:` + SHA-256 of the CSR's SPKI, then the signature; the answer is checked before use.
 * Only the CSR (public key and self-signature), the document and the nonce are sent.
 */
async function provision(options: ProvisionedSourceOptions): Promise<Provisioned> {
  const { logger } = options;
  const target = formatAddress(options.address);
  try {
    const keys = await (options.generateKeyPair ?? generateIntermediateKeyPair)();
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: [{ CN: ['enclave-runtime enclave CA'] }, { O: ['enclave-runtime'] }],
      keys,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    });
    const spki = new Uint8Array(await webcrypto.subtle.exportKey('spki', keys.publicKey));
    const client = new ProvisionerClient({ address: options.address, timeoutMs: options.timeoutMs });
    const challenge = await client.challenge();
    const document = await options.nsm.attest({ nonce: challenge.nonce, userData: provisioningUserData(spki) });
    const answer = await client.sign({
      csr: csr.toString('pem'),
      attestation_doc: Buffer.from(document).toString('base64'),
      nonce: Buffer.from(challenge.nonce).toString('hex'),
    });
    const provisioned = await adopt(answer.certificate, answer.chain, spki, keys.privateKey, options);
    logger.info(
      {
        provisioner: target,
        notAfter: provisioned.notAfter.toISOString(),
        subject: new X509Certificate(provisioned.authority.certificatePem).subject.replace(/\n/g, ', '),
      },
      'provisioned the enclave intermediate CA',
    );
    return provisioned;
  } catch (error) {
    if (error instanceof ProvisioningError) {
      logger.error(
        {
          provisioner: target,
          code: error.code,
          remoteCode: error.remoteCode,
          status: error.status,
          reason: error.message,
        },
        'provisioning the enclave intermediate CA failed',
      );
    }
    throw error;
  }
}

/** Checks the provisioner's answer (our key, a CA, signed by the chain it names) and makes it the signing CA. */
async function adopt(
  certificatePem: string,
  chainText: string,
  spki: Uint8Array,
  privateKey: webcrypto.CryptoKey,
  options: ProvisionedSourceOptions,
): Promise<Provisioned> {
  const bad = (detail: string, cause?: unknown) =>
    new ProvisioningError(
      'ERR_PROVISIONING_RESPONSE',
      `the provisioner at ${formatAddress(options.address)} answered with an unusable certificate: ${detail}`,
      cause === undefined ? {} : { cause },
    );
  let cert: X509Certificate;
  let chain: X509Certificate[];
  try {
    cert = new X509Certificate(certificatePem);
    const blocks = chainText.match(PEM_CERT) ?? [];
    if (blocks.length === 0 || blocks.length > MAX_CHAIN_CERTS)
      throw new Error(`the chain holds ${blocks.length} certificates, expected 1 to ${MAX_CHAIN_CERTS}`);
    chain = blocks.map((pem) => new X509Certificate(pem));
  } catch (error) {
    throw bad((error as Error).message, error);
  }
  if (!Buffer.from(spki).equals(cert.publicKey.export({ type: 'spki', format: 'der' })))
    throw bad('it is not for the key in our CSR');
  if (!cert.ca) throw bad('it is not a CA certificate (basicConstraints CA:FALSE)');
  const now = (options.now ?? Date.now)();
  if (new Date(cert.validTo).getTime() <= now) throw bad(`it expired at ${new Date(cert.validTo).toISOString()}`);
  // Each certificate must be signed by the next; the last is the root clients trust.
  for (const [i, subject] of [cert, ...chain.slice(0, -1)].entries()) {
    const issuer = chain[i]!;
    if (!subject.checkIssued(issuer) || !subject.verify(issuer.publicKey))
      throw bad(`certificate ${i} of the chain is not signed by certificate ${i + 1}`);
  }
  const root = chain[chain.length - 1]!;
  if (!root.checkIssued(root) || !root.verify(root.publicKey))
    throw bad('the chain does not end at a self-signed root');
  const certPem = cert.toString();
  const authority = await CertificateAuthority.fromKey(certPem, privateKey, options.now ? { now: options.now } : {});
  return {
    authority,
    servedChainPem: [certPem, ...chain.slice(0, -1).map((c) => c.toString())].join(''),
    rootPem: root.toString(),
    notBefore: new Date(cert.validFrom),
    notAfter: new Date(cert.validTo),
  };
}

/** ECDSA P-256 with a non-extractable private key: usable for signing, impossible to export. */
async function generateIntermediateKeyPair(): Promise<CryptoKeyPair> {
  return (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, [
    'sign',
    'verify',
  ])) as CryptoKeyPair;
}
