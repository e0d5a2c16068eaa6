import { createHash } from 'node:crypto';

/**
 * The wire format between an enclave and a provisioner: HTTP/1.1, JSON bodies, one request per
 * connection. Binary values are base64 (standard alphabet), the nonce lowercase hex.
 *
 *   POST /challenge            -> 200 {"nonce": "<hex>", "expires": "<ISO-8601>"}
 *   POST /sign {"csr", "attestation_doc", "nonce"} -> 200 {"certificate": "<PEM>", "chain": "<PEM>"}
 *   any refusal                -> 4xx/5xx {"error": "<one line>", "code": "ERR_..."}
 */
export const CHALLENGE_PATH = '/challenge';
export const SIGN_PATH = '/sign';

/** Bytes of a challenge nonce: enough that guessing an outstanding one is hopeless. */
export const CHALLENGE_NONCE_BYTES = 32;
/** A sign request is a CSR (under 1 KiB for P-256) and a document (under 16 KiB); 64 KiB bounds both with room. */
export const MAX_REQUEST_BODY_BYTES = 64 * 1024;
/** A sign answer is two or three certificates in PEM. */
export const MAX_RESPONSE_BODY_BYTES = 64 * 1024;
export const MAX_CSR_CHARS = 16 * 1024;
export const MAX_DOCUMENT_BASE64_CHARS = 32 * 1024;

/** The body of a 200 answer to POST /challenge. */
export interface ChallengeAnswer {
  /** Lowercase hex of CHALLENGE_NONCE_BYTES random bytes: the nonce the document must carry. */
  nonce: string;
  /** When the challenge stops being accepted. */
  expires: string;
}

/** The body of POST /sign. */
export interface SignRequestBody {
  /** PKCS#10 CSR of the enclave's intermediate CA key, PEM or base64 DER. */
  csr: string;
  /** The raw COSE_Sign1 attestation document, base64. */
  attestation_doc: string;
  /** The challenge nonce, lowercase hex, as POST /challenge gave it. */
  nonce: string;
}

/** The body of a 200 answer to POST /sign. */
export interface SignAnswer {
  /** PEM of the enclave's intermediate CA certificate. */
  certificate: string;
  /** PEM of the certificates above it, the provisioner's root last. */
  chain: string;
}

/** The body of every refusal. */
export interface RefusalBody {
  error: string;
  code: string;
}

/** What a provisioning document's user_data starts with (SPEC "Reserved bindings"); the internal API refuses it to the app. */
export const PROVISIONING_BINDING_PREFIX = 'enclave-runtime/provisioner/v1:';

/**
 * What the provisioning document's `user_data` must be: `enclave-runtime/provisioner/v1:` followed by
 * the 32 raw bytes of SHA-256 of the CSR key's DER SubjectPublicKeyInfo. The prefix is one the
 * internal API never serves to the app, so the app cannot get a document that binds a key of its own
 * choosing (a bare hash it could ask for); and it keeps these apart from attested TLS leaves, whose
 * user_data is a raw SPKI.
 */
export function provisioningUserData(spkiDer: Uint8Array): Uint8Array {
  return new Uint8Array(
    Buffer.concat([Buffer.from(PROVISIONING_BINDING_PREFIX, 'ascii'), createHash('sha256').update(spkiDer).digest()]),
  );
}
