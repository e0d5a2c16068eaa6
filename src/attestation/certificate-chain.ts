// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { X509Certificate, type KeyObject } from 'node:crypto';
import { AttestationError } from './attestation-error.js';
import { sha256Fingerprint, type TrustedRoots } from './root-store.js';

/** cabundle (≤ 8) plus the leaf. */
export const MAX_CHAIN_LENGTH = 9;
const MAX_CACHED_CERTIFICATES = 256;
const MAX_CACHED_LINKS = 256;

const OID_BASIC_CONSTRAINTS = '2.5.29.19';
const OID_KEY_USAGE = '2.5.29.15';
/** The only extensions this verifier enforces; any other one marked critical fails the chain (RFC 5280 §4.2). */
const PROCESSED_CRITICAL_EXTENSIONS: ReadonlySet<string> = new Set([OID_BASIC_CONSTRAINTS, OID_KEY_USAGE]);
const ACCEPTED_SIGNATURE_HASHES: ReadonlySet<string> = new Set(['SHA-384', 'SHA-256']);

/** One certificate as the chain check needs it: parsed once per distinct DER, then cached. */
export interface ParsedCertificate {
  readonly der: Uint8Array;
  /** Uppercase hex SHA-256 of the DER. */
  readonly fingerprint: string;
  readonly x509: X509Certificate;
  /** Decoded at parse time: Node decodes it lazily and throws a bare Error on a malformed key. */
  readonly publicKey: KeyObject;
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

const certificates = new Map<string, ParsedCertificate>();
// A link is "child's signature verifies under parent's key", a pure function of both DERs.
const verifiedLinks = new Set<string>();

/** Parses DER into a ParsedCertificate (cached by fingerprint); throws ERR_ATTESTATION_CHAIN on bad DER. */
export function parseCertificate(der: Uint8Array, label = 'certificate'): ParsedCertificate {
  const fingerprint = sha256Fingerprint(der);
  const hit = certificates.get(fingerprint);
  if (hit !== undefined) {
    // Refresh LRU position.
    certificates.delete(fingerprint);
    certificates.set(fingerprint, hit);
    return hit;
  }
  let parsed: ParsedCertificate;
  try {
    const node = new X509Certificate(der);
    const cert = new x509.X509Certificate(der);
    const basic = cert.getExtension(x509.BasicConstraintsExtension);
    const usage = cert.getExtension(x509.KeyUsagesExtension);
    const algorithm = cert.signatureAlgorithm as { name?: string; hash?: { name?: string } };
    const hash = algorithm.hash?.name;
    parsed = {
      der: new Uint8Array(der),
      fingerprint,
      x509: node,
      publicKey: node.publicKey,
      subject: cert.subject,
      notBefore: cert.notBefore,
      notAfter: cert.notAfter,
      isCa: basic?.ca === true,
      pathLength: basic?.ca === true ? basic.pathLength : undefined,
      keyUsage: usage?.usages,
      signatureAlgorithm: algorithm.name === 'ECDSA' && hash !== undefined && ACCEPTED_SIGNATURE_HASHES.has(hash) ? `ECDSA with ${hash}` : null,
      unprocessedCriticalExtensions: cert.extensions.filter((e) => e.critical && !PROCESSED_CRITICAL_EXTENSIONS.has(e.type)).map((e) => e.type),
    };
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_CHAIN', `${label} is not a valid X.509 certificate: ${(error as Error).message}`, { cause: error });
  }
  if (certificates.size >= MAX_CACHED_CERTIFICATES) certificates.delete(certificates.keys().next().value!);
  certificates.set(fingerprint, parsed);
  return parsed;
}

/** What a chain check needs: the document's signing certificate and its cabundle, root first. */
export interface ChainInput {
  readonly certificate: Uint8Array;
  readonly cabundle: readonly Uint8Array[];
}

/**
 * Checks cabundle[0] → … → cabundle[n-1] → certificate: cabundle[0] must be a pinned root
 * (exact DER), each certificate must be issued and signed (ECDSA, SHA-384/256) by the one before
 * it, CAs must carry basicConstraints cA (pathLen respected) and keyCertSign, the leaf must be
 * an end entity with digitalSignature. Only then is every certificate checked against `at`.
 * Returns the parsed leaf. Throws ERR_ATTESTATION_ROOT, _CHAIN or _EXPIRED.
 */
export function verifyCertificateChain(input: ChainInput, roots: TrustedRoots, at: Date): ParsedCertificate {
  const time = at.getTime();
  if (!Number.isFinite(time)) throw new RangeError('verification time is not a valid Date');
  const length = input.cabundle.length + 1;
  if (input.cabundle.length === 0 || length > MAX_CHAIN_LENGTH) {
    throw new AttestationError('ERR_ATTESTATION_CHAIN', `cabundle has ${input.cabundle.length} certificates, expected 1..${MAX_CHAIN_LENGTH - 1}`);
  }
  const chain = [
    ...input.cabundle.map((der, i) => parseCertificate(der, `cabundle[${i}]`)),
    parseCertificate(input.certificate, 'signing certificate'),
  ];
  // A repeated certificate (even a self-signed root issuing itself) is never part of a real path.
  if (new Set(chain.map((cert) => cert.fingerprint)).size !== chain.length) throw chainError('the chain repeats a certificate');
  const root = chain[0]!;
  if (!roots.byFingerprint.has(root.fingerprint)) {
    const pinned = [...roots.byFingerprint.values()].map((c) => c.subject.replace(/\n/g, ', ')).join('; ');
    throw new AttestationError(
      'ERR_ATTESTATION_ROOT',
      `cabundle[0] (${root.subject}, SHA-256 ${root.fingerprint.slice(0, 16)}…) is not the pinned root (${pinned})`,
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
        throw chainError(`${name} allows a path length of ${cert.pathLength}, but ${casBelow} CA certificates follow it`);
      }
    }
    if (i > 0) checkLink(cert, chain[i - 1]!, name);
  }
  // Leaf first: when several have lapsed, the short-lived signing certificate is the telling one.
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
  return chain[leafIndex]!;
}

function checkLink(child: ParsedCertificate, parent: ParsedCertificate, name: string): void {
  const key = `${child.fingerprint}:${parent.fingerprint}`;
  if (verifiedLinks.has(key)) return;
  if (child.signatureAlgorithm === null) throw chainError(`${name} is not signed with ECDSA and SHA-384 or SHA-256`);
  if (!child.x509.checkIssued(parent.x509)) throw chainError(`${name} was not issued by ${parent.subject}`);
  let ok: boolean;
  try {
    ok = child.x509.verify(parent.publicKey);
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_CHAIN', `${name}: signature could not be checked`, { cause: error });
  }
  if (!ok) throw chainError(`${name} signature does not verify with the key of ${parent.subject}`);
  if (verifiedLinks.size >= MAX_CACHED_LINKS) verifiedLinks.delete(verifiedLinks.values().next().value!);
  verifiedLinks.add(key);
}

function certificateLabel(index: number, leafIndex: number, cert: ParsedCertificate): string {
  const role = index === leafIndex ? 'signing certificate' : `cabundle[${index}]`;
  const cn = /(?:^|,\s*)CN=([^,]+)/.exec(cert.subject)?.[1];
  return `${role} ${cn === undefined ? cert.subject : `CN=${cn}`}`;
}

function chainError(reason: string): AttestationError {
  return new AttestationError('ERR_ATTESTATION_CHAIN', `certificate chain: ${reason}`);
}
