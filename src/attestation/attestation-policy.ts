import { AttestationError, type AttestationErrorCode } from '../verify/attestation-error.js';
import { isDebugDocument, type AttestationDocument } from '../verify/document.js';

/** Cap on `expectedPcrs` sets, so a policy file cannot turn one check into an unbounded loop. */
export const MAX_EXPECTED_PCR_SETS = 64;

/** What a caller expects of a document whose signature and chain verified. No Node built-ins: the browser build shares it. */
export interface AttestationPolicy {
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

/** Applies the caller's expectations to a document whose signature and chain already verified. */
export function checkPolicy(document: AttestationDocument, options: AttestationPolicy): void {
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
  if (sets.length === 0)
    throw new AttestationError('ERR_ATTESTATION_PCR', 'expectedPcrs is an empty list: no PCR set can match');
  if (sets.length > MAX_EXPECTED_PCR_SETS) {
    throw new AttestationError(
      'ERR_ATTESTATION_PCR',
      `expectedPcrs has ${sets.length} sets, at most ${MAX_EXPECTED_PCR_SETS} are accepted`,
    );
  }
  const reasons: string[] = [];
  for (const [i, set] of sets.entries()) {
    const entries = Object.entries(set);
    if (entries.length === 0)
      throw new AttestationError('ERR_ATTESTATION_PCR', `expectedPcrs[${i}] is empty: it would match any enclave`);
    const mismatched = entries.filter(
      ([index, expected]) => !bytesEqual(document.pcrs.get(Number(index)) ?? null, expected),
    );
    if (mismatched.length === 0) return;
    reasons.push(`set ${i + 1}: PCR${mismatched.map(([index]) => index).join(', PCR')} differ`);
  }
  throw new AttestationError(
    'ERR_ATTESTATION_PCR',
    `PCRs do not match any expected set (${reasons.slice(0, 4).join('; ')}${reasons.length > 4 ? '; …' : ''})`,
  );
}

function checkField(
  code: AttestationErrorCode,
  name: string,
  actual: Uint8Array | null,
  expected: Uint8Array | undefined,
): void {
  if (expected === undefined) return;
  if (actual === null)
    throw new AttestationError(code, `the document has no ${name}, expected ${expected.byteLength} bytes`);
  if (!bytesEqual(actual, expected))
    throw new AttestationError(code, `the document's ${name} differs from the expected value`);
}

/**
 * Constant-time for equal lengths (the lengths themselves are not secret): every byte is looked
 * at whatever the first difference, with no Node built-in so browsers run the same comparison.
 */
export function bytesEqual(actual: Uint8Array | null, expected: Uint8Array): boolean {
  if (actual === null || actual.byteLength !== expected.byteLength) return false;
  let difference = 0;
  for (let i = 0; i < actual.byteLength; i++) difference |= actual[i]! ^ expected[i]!;
  return difference === 0;
}
