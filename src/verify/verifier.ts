import { verify as cryptoVerify, type KeyObject, type X509Certificate } from 'node:crypto';
import { checkPolicy, type AttestationPolicy } from '../attestation/attestation-policy.js';
import { parseCertificate, verifyCertificateChain } from './certificate-chain.js';
import { checkEs384Outcome, decodeCoseSign1, es384KeyError, sigStructure, type CoseSign1 } from './cose-sign1.js';
import { decodeAttestationPayload, type AttestationDocument } from './document.js';
import { resolveTrustedRoots, type RootInput } from './root-store.js';

export type { AttestationDocument } from './document.js';
export { checkPolicy, MAX_EXPECTED_PCR_SETS, type AttestationPolicy } from '../attestation/attestation-policy.js';

export interface VerifyOptions extends AttestationPolicy {
  /** PEM string (one or more certificates), DER bytes, or an X509Certificate; default: the bundled AWS Nitro root G1. */
  root?: RootInput;
  /** Verification time; default now. */
  at?: Date;
}

export interface VerifiedAttestation {
  document: AttestationDocument;
  /** The document's `certificate`, whose key signed it. */
  signingCertificate: X509Certificate;
}

/** Decodes and schema-checks a raw COSE_Sign1 attestation document without any cryptographic check. */
export function decodeAttestation(input: Uint8Array): AttestationDocument {
  return decodeAttestationPayload(decodeCoseSign1(input).payload);
}

/**
 * Verifies a raw COSE_Sign1 attestation document: shape and schema, the ES384 signature by its
 * certificate, the chain to the pinned root at `options.at`, then the caller's policy (debug, PCRs,
 * nonce, user_data, public_key). Throws AttestationError; returns the document when all pass.
 */
export function verifyAttestation(input: Uint8Array, options: VerifyOptions = {}): VerifiedAttestation {
  const at = options.at ?? new Date();
  if (!(at instanceof Date) || !Number.isFinite(at.getTime())) throw new RangeError('options.at must be a valid Date');
  const roots = resolveTrustedRoots(options.root);
  const cose = decodeCoseSign1(input);
  const document = decodeAttestationPayload(cose.payload);
  // Signature before chain: a tampered document is reported as tampered whatever the clock says.
  const leaf = parseCertificate(document.certificate, 'signing certificate');
  verifyCoseSign1Es384(cose, leaf.publicKey);
  verifyCertificateChain(document, roots, at);
  checkPolicy(document, options);
  return { document, signingCertificate: leaf.x509 };
}

/** Checks the ES384 signature of `cose` with `publicKey` (a P-384 key); throws ERR_ATTESTATION_SIGNATURE. */
export function verifyCoseSign1Es384(cose: CoseSign1, publicKey: KeyObject): void {
  if (publicKey.asymmetricKeyType !== 'ec' || publicKey.asymmetricKeyDetails?.namedCurve !== 'secp384r1') {
    throw es384KeyError();
  }
  checkEs384Outcome(cose, () =>
    cryptoVerify(
      'sha384',
      sigStructure(cose.protectedHeader, cose.payload),
      { key: publicKey, dsaEncoding: 'ieee-p1363' },
      cose.signature,
    ),
  );
}
