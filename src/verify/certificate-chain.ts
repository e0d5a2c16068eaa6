// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { X509Certificate, type KeyObject } from 'node:crypto';
import { AttestationError } from './attestation-error.js';
import {
  certificateLabel,
  chainError,
  checkCabundleLength,
  checkChainShape,
  checkChainValidity,
  readCertificateFacts,
  type CertificateFacts,
} from '../attestation/chain-rules.js';
import { sha256Fingerprint, type TrustedRoots } from './root-store.js';

export { MAX_CHAIN_LENGTH } from '../attestation/chain-rules.js';
const MAX_CACHED_CERTIFICATES = 256;
const MAX_CACHED_LINKS = 256;

/** One certificate as the chain check needs it: parsed once per distinct DER, then cached. */
export interface ParsedCertificate extends CertificateFacts {
  readonly der: Uint8Array;
  readonly x509: X509Certificate;
  /** Decoded at parse time: Node decodes it lazily and throws a bare Error on a malformed key. */
  readonly publicKey: KeyObject;
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
    parsed = {
      ...readCertificateFacts(new x509.X509Certificate(der), fingerprint),
      der: new Uint8Array(der),
      x509: node,
      publicKey: node.publicKey,
    };
  } catch (error) {
    throw new AttestationError(
      'ERR_ATTESTATION_CHAIN',
      `${label} is not a valid X.509 certificate: ${(error as Error).message}`,
      { cause: error },
    );
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
 * Checks cabundle[0] → … → cabundle[n-1] → certificate: the rules of chain-rules.ts (pinned
 * root, CA flags, path length, key usage, algorithms), then each certificate's issuer and
 * signature under the one before it, and only then every certificate against `at`.
 * Returns the parsed leaf. Throws ERR_ATTESTATION_ROOT, _CHAIN or _EXPIRED.
 */
export function verifyCertificateChain(input: ChainInput, roots: TrustedRoots, at: Date): ParsedCertificate {
  if (!Number.isFinite(at.getTime())) throw new RangeError('verification time is not a valid Date');
  checkCabundleLength(input.cabundle.length);
  const chain = [
    ...input.cabundle.map((der, i) => parseCertificate(der, `cabundle[${i}]`)),
    parseCertificate(input.certificate, 'signing certificate'),
  ];
  checkChainShape(chain, roots.byFingerprint);
  const leafIndex = chain.length - 1;
  for (let i = 1; i < chain.length; i++) checkLink(chain[i]!, chain[i - 1]!, certificateLabel(i, leafIndex, chain[i]!));
  checkChainValidity(chain, at);
  return chain[leafIndex]!;
}

function checkLink(child: ParsedCertificate, parent: ParsedCertificate, name: string): void {
  const key = `${child.fingerprint}:${parent.fingerprint}`;
  if (verifiedLinks.has(key)) return;
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
