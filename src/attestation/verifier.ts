import { timingSafeEqual, type X509Certificate } from 'node:crypto';
import { AttestationError, type AttestationErrorCode } from './attestation-error.js';
import { parseCertificate, verifyCertificateChain } from './certificate-chain.js';
import { decodeCoseSign1, verifyCoseSign1Es384 } from './cose-sign1.js';
import { decodeAttestationPayload, isDebugDocument, type AttestationDocument } from './document.js';
import { resolveTrustedRoots, type RootInput } from './root-store.js';

export type { AttestationDocument } from './document.js';

/** Cap on `expectedPcrs` sets, so a policy file cannot turn one check into an unbounded loop. */
export const MAX_EXPECTED_PCR_SETS = 64;

export interface VerifyOptions {
  /** PEM string (one or more certificates), DER bytes, or an X509Certificate; default: the bundled AWS Nitro root G1. */
  root?: RootInput;
  /** Verification time; default now. */
  at?: Date;
  /** Accepted PCR sets (rolling deploys): the document must match every PCR of at least one set. */
  expectedPcrs?: ReadonlyArray<Readonly<Record<number, Uint8Array>>>;
  /** When given, the document's nonce must equal it. */
  nonce?: Uint8Array;
  /** When given, the document's user_data must equal it. */
  userData?: Uint8Array;
  /** When given, the document's public_key must equal it. */
  publicKey?: Uint8Array;
  /** Accept debug-mode documents (PCR0/1/2 all zero); default false. */
  allowDebug?: boolean;
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

/** Applies the caller's expectations to a document whose signature and chain already verified. */
export function checkPolicy(document: AttestationDocument, options: VerifyOptions): void {
  if (options.allowDebug !== true && isDebugDocument(document)) {
    throw new AttestationError(
      'ERR_ATTESTATION_DEBUG',
      'the enclave runs in debug mode (PCR0/1/2 are all zero): its memory is readable by the parent instance; allow debug mode (allowDebug, --allow-debug) to accept it',
    );
  }
  if (options.expectedPcrs !== undefined) checkPcrs(document, options.expectedPcrs);
  checkField('ERR_ATTESTATION_NONCE', 'nonce', document.nonce, options.nonce);
  checkField('ERR_ATTESTATION_USER_DATA', 'user_data', document.userData, options.userData);
  checkField('ERR_ATTESTATION_PUBLIC_KEY', 'public_key', document.publicKey, options.publicKey);
}

function checkPcrs(document: AttestationDocument, sets: ReadonlyArray<Readonly<Record<number, Uint8Array>>>): void {
  // An empty policy list is a caller mistake; failing closed beats accepting every enclave.
  if (sets.length === 0) throw new AttestationError('ERR_ATTESTATION_PCR', 'expectedPcrs is an empty list: no PCR set can match');
  if (sets.length > MAX_EXPECTED_PCR_SETS) {
    throw new AttestationError('ERR_ATTESTATION_PCR', `expectedPcrs has ${sets.length} sets, at most ${MAX_EXPECTED_PCR_SETS} are accepted`);
  }
  const reasons: string[] = [];
  for (const [i, set] of sets.entries()) {
    const entries = Object.entries(set);
    if (entries.length === 0) throw new AttestationError('ERR_ATTESTATION_PCR', `expectedPcrs[${i}] is empty: it would match any enclave`);
    const mismatched = entries.filter(([index, expected]) => !bytesEqual(document.pcrs.get(Number(index)) ?? null, expected));
    if (mismatched.length === 0) return;
    reasons.push(`set ${i + 1}: PCR${mismatched.map(([index]) => index).join(', PCR')} differ`);
  }
  throw new AttestationError('ERR_ATTESTATION_PCR', `PCRs do not match any expected set (${reasons.slice(0, 4).join('; ')}${reasons.length > 4 ? '; …' : ''})`);
}

function checkField(code: AttestationErrorCode, name: string, actual: Uint8Array | null, expected: Uint8Array | undefined): void {
  if (expected === undefined) return;
  if (actual === null) throw new AttestationError(code, `the document has no ${name}, expected ${expected.byteLength} bytes`);
  if (!bytesEqual(actual, expected)) throw new AttestationError(code, `the document's ${name} differs from the expected value`);
}

/** Constant-time for equal lengths; the lengths themselves are not secret. */
function bytesEqual(actual: Uint8Array | null, expected: Uint8Array): boolean {
  return actual !== null && actual.byteLength === expected.byteLength && timingSafeEqual(actual, expected);
}
