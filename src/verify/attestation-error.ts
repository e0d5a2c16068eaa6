import { RuntimeError } from '../core/errors.js';

/** Every way an attestation document can be rejected; callers branch on these, never on messages. */
export type AttestationErrorCode =
  | 'ERR_ATTESTATION_FORMAT'
  | 'ERR_ATTESTATION_SCHEMA'
  | 'ERR_ATTESTATION_SIGNATURE'
  | 'ERR_ATTESTATION_CHAIN'
  | 'ERR_ATTESTATION_EXPIRED'
  | 'ERR_ATTESTATION_ROOT'
  | 'ERR_ATTESTATION_PCR'
  | 'ERR_ATTESTATION_NONCE'
  | 'ERR_ATTESTATION_USER_DATA'
  | 'ERR_ATTESTATION_PUBLIC_KEY'
  | 'ERR_ATTESTATION_DEBUG'
  | 'ERR_ATTESTATION_BINDING'
  /** A client could not get a document at all (network, HTTP status, not JSON). */
  | 'ERR_ATTESTATION_FETCH';

/**
 * A document that did not verify. The message is one line (the CLI prints it as is) and never
 * contains document bytes beyond short hex prefixes.
 */
export class AttestationError extends RuntimeError {
  declare readonly code: AttestationErrorCode;

  constructor(code: AttestationErrorCode, message: string, options?: { cause?: unknown }) {
    super(code, message.replace(/\s+/g, ' ').trim(), options);
  }
}

/** True when `error` is an AttestationError, optionally with the given code (the client library exports it). */
export function isAttestationError(error: unknown, code?: AttestationErrorCode): error is AttestationError {
  return error instanceof AttestationError && (code === undefined || error.code === code);
}
