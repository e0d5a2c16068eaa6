// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { AttestationError } from '../verify/attestation-error.js';

/**
 * The rules of a Nitro certificate chain that need no cryptography, shared by the Node verifier
 * (node:crypto) and the browser one (WebCrypto): each side parses and checks signatures its own
 * way, then both apply exactly these checks, so the two cannot drift apart.
 */

/** cabundle (≤ 8) plus the leaf. */
export const MAX_CHAIN_LENGTH = 9;

const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
/** The only extensions this verifier enforces; any other one marked critical fails the chain (RFC 5280 §4.2). */
const PROCESSED_CRITICAL_EXTENSIONS: ReadonlySet<string> = new Set([OID_BASIC_CONSTRAINTS, OID_KEY_USAGE]);
const ACCEPTED_SIGNATURE_HASHES: ReadonlySet<string> = new Set(['SHA-384', 'SHA-256']);

/** What the chain rules look at in one certificate. */
export interface CertificateFacts {
  /** Uppercase hex SHA-256 of the DER. */
  readonly fingerprint: string;
  /** RFC 4514-style subject, for messages. */
  readonly subject: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly isCa: boolean;
  readonly pathLength: number | undefined;
  /** KeyUsage bits (x509.KeyUsageFlags), or undefined when the extension is absent. */
  readonly keyUsage: number | undefined;
  /** e.g. "ECDSA with SHA-384"; null when the signature algorithm is not an accepted one. */
  readonly signatureAlgorithm: string | null;
  readonly unprocessedCriticalExtensions: readonly string[];
}

/** Reads the facts out of a parsed certificate; the caller has computed the fingerprint. Throws what the parser throws. */
export function readCertificateFacts(cert: x509.X509Certificate, fingerprint: string): CertificateFacts {
  const basic = cert.getExtension(x509.BasicConstraintsExtension);
  const usage = cert.getExtension(x509.KeyUsagesExtension);
  const algorithm = cert.signatureAlgorithm as { name?: string; hash?: { name?: string } };
  const hash = algorithm.hash?.name;
  return {
    fingerprint,
    subject: cert.subject,
    notBefore: cert.notBefore,
    notAfter: cert.notAfter,
    isCa: basic?.ca === true,
    pathLength: basic?.ca === true ? basic.pathLength : undefined,
    keyUsage: usage?.usages,
    signatureAlgorithm:
      algorithm.name === 'ECDSA' && hash !== undefined && ACCEPTED_SIGNATURE_HASHES.has(hash)
        ? `ECDSA with ${hash}`
        : null,
    unprocessedCriticalExtensions: cert.extensions
      .filter((e) => e.critical && !PROCESSED_CRITICAL_EXTENSIONS.has(e.type))
      .map((e) => e.type),
  };
}

/** Refuses a cabundle of a length no real chain has, before anything is parsed. */
export function checkCabundleLength(cabundleLength: number): void {
  if (cabundleLength === 0 || cabundleLength + 1 > MAX_CHAIN_LENGTH) {
    throw new AttestationError(
      'ERR_ATTESTATION_CHAIN',
      `cabundle has ${cabundleLength} certificates, expected 1..${MAX_CHAIN_LENGTH - 1}`,
    );
  }
}

/**
 * Root first, leaf last: no repeats, chain[0] pinned (exact DER, by fingerprint), CAs with cA,
 * keyCertSign and pathLen respected, the leaf an end entity with digitalSignature, every non-root
 * signed with ECDSA and SHA-384/256, no unknown critical extension. Signatures and validity are
 * checked afterwards by the caller (links) and checkChainValidity.
 */
export function checkChainShape(
  chain: readonly CertificateFacts[],
  pinned: ReadonlyMap<string, { readonly subject: string }>,
): void {
  // A repeated certificate (even a self-signed root issuing itself) is never part of a real path.
  if (new Set(chain.map((cert) => cert.fingerprint)).size !== chain.length)
    throw chainError('the chain repeats a certificate');
  const root = chain[0]!;
  if (!pinned.has(root.fingerprint)) {
    const names = [...pinned.values()].map((c) => c.subject.replace(/\n/g, ', ')).join('; ');
    throw new AttestationError(
      'ERR_ATTESTATION_ROOT',
      `cabundle[0] (${root.subject}, SHA-256 ${root.fingerprint.slice(0, 16)}…) is not the pinned root (${names})`,
    );
  }
  const leafIndex = chain.length - 1;
  for (let i = 0; i < chain.length; i++) {
    const cert = chain[i]!;
    const name = certificateLabel(i, leafIndex, cert);
    if (cert.unprocessedCriticalExtensions.length > 0) {
      throw chainError(`${name} has unsupported critical extensions ${cert.unprocessedCriticalExtensions.join(', ')}`);
    }
    if (i === leafIndex) {
      if (cert.isCa) throw chainError(`${name} is a CA certificate, expected an end-entity signing certificate`);
      if (cert.keyUsage === undefined || (cert.keyUsage & x509.KeyUsageFlags.digitalSignature) === 0) {
        throw chainError(`${name} does not allow digitalSignature in keyUsage`);
      }
    } else {
      if (!cert.isCa) throw chainError(`${name} is not a CA (basicConstraints cA is not set)`);
      if (cert.keyUsage === undefined || (cert.keyUsage & x509.KeyUsageFlags.keyCertSign) === 0) {
        throw chainError(`${name} does not allow keyCertSign in keyUsage`);
      }
      // pathLen counts the CA certificates that may follow this one, the leaf excluded.
      const casBelow = leafIndex - 1 - i;
      if (cert.pathLength !== undefined && casBelow > cert.pathLength) {
        throw chainError(
          `${name} allows a path length of ${cert.pathLength}, but ${casBelow} CA certificates follow it`,
        );
      }
    }
    if (i > 0 && cert.signatureAlgorithm === null)
      throw chainError(`${name} is not signed with ECDSA and SHA-384 or SHA-256`);
  }
}

/** Every certificate valid at `at`; leaf first: when several have lapsed, the short-lived signing certificate is the telling one. */
export function checkChainValidity(chain: readonly CertificateFacts[], at: Date): void {
  const time = at.getTime();
  const leafIndex = chain.length - 1;
  for (let i = leafIndex; i >= 0; i--) {
    const cert = chain[i]!;
    if (time < cert.notBefore.getTime()) {
      throw new AttestationError(
        'ERR_ATTESTATION_EXPIRED',
        `${certificateLabel(i, leafIndex, cert)} is not valid before ${cert.notBefore.toISOString()} (verification time ${at.toISOString()})`,
      );
    }
    if (time > cert.notAfter.getTime()) {
      throw new AttestationError(
        'ERR_ATTESTATION_EXPIRED',
        `${certificateLabel(i, leafIndex, cert)} expired at ${cert.notAfter.toISOString()} (verification time ${at.toISOString()})`,
      );
    }
  }
}

/** "signing certificate CN=…" or "cabundle[i] CN=…", for messages. */
export function certificateLabel(index: number, leafIndex: number, cert: CertificateFacts): string {
  const role = index === leafIndex ? 'signing certificate' : `cabundle[${index}]`;
  const cn = /(?:^|,\s*)CN=([^,]+)/.exec(cert.subject)?.[1];
  return `${role} ${cn === undefined ? cert.subject : `CN=${cn}`}`;
}

export function chainError(reason: string): AttestationError {
  return new AttestationError('ERR_ATTESTATION_CHAIN', `certificate chain: ${reason}`);
}
