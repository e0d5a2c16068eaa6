import type { Logger } from '../core/log.js';
import { CertificateAuthority } from './certificate-authority.js';

/** Everything a source may need to issue an attested leaf. */
export interface CertificateRequest {
  /** The base host name: the subject CN and the first DNS SAN. */
  serverName: string;
  /** Every DNS SAN, in order; the attested one is `<hex of the document>.<serverName>`. */
  dnsNames: readonly string[];
  /** DER SubjectPublicKeyInfo of the leaf key. */
  publicKeySpki: Uint8Array;
  /**
   * The COSE_Sign1 whose `user_data` is `publicKeySpki`. The self CA ignores it; a provisioner
   * verifies it (PCRs, key binding) before it agrees to sign, which is why it is passed at all.
   */
  attestationDocument: Uint8Array;
}

/** A signed leaf: PEM of the leaf alone and of the chain to send after it. */
export interface IssuedCertificate {
  certPem: string;
  /** The leaf's DER when the source has it at hand, so the per-nonce path need not decode `certPem` back. */
  certDer?: Uint8Array;
  chainPem: string;
  notAfter: Date;
}

/**
 * Where attested leaves get signed (`tls.source`). `self` is the runtime's own CA; a provisioner
 * (a CA service that checks the document first) and ACME slot in behind the same interface.
 * `issue` is on the per-nonce path, so an implementation should answer in milliseconds.
 */
export interface CertificateSource {
  readonly kind: string;
  /** PEM of the CA clients may pin, when the source has a private one. */
  readonly trustAnchorPem: string | undefined;
  issue(request: CertificateRequest): Promise<IssuedCertificate>;
  close(): Promise<void>;
}

/** The self CA as a CertificateSource. */
export class SelfCertificateSource implements CertificateSource {
  readonly kind = 'self';
  readonly authority: CertificateAuthority;
  readonly #validityMs: number | undefined;

  constructor(authority: CertificateAuthority, validityMs?: number) {
    this.authority = authority;
    this.#validityMs = validityMs;
  }

  get trustAnchorPem(): string {
    return this.authority.certificatePem;
  }

  async issue(request: CertificateRequest): Promise<IssuedCertificate> {
    const leaf = await this.authority.issue({
      dnsNames: request.dnsNames,
      publicKeySpki: request.publicKeySpki,
      ...(this.#validityMs === undefined ? {} : { validityMs: this.#validityMs }),
    });
    return { certPem: leaf.certPem, certDer: leaf.certDer, chainPem: leaf.chainPem, notAfter: leaf.notAfter };
  }

  async close(): Promise<void> {}
}

/** Open (or create) the state dir's CA and wrap it as the `self` source. */
export async function openSelfCertificateSource(
  stateDir: string,
  options: { logger: Logger; now?: () => number; leafValidityMs?: number },
): Promise<SelfCertificateSource> {
  const authority = await CertificateAuthority.open(stateDir, {
    logger: options.logger,
    ...(options.now ? { now: options.now } : {}),
  });
  return new SelfCertificateSource(authority, options.leafValidityMs);
}
