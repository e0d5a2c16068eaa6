/**
 * `enclave-runtime/browser`: attestation verification with WebCrypto and no Node built-ins,
 * bundled into one ESM file (dist/browser/enclave-runtime-browser.js) that a web page can import.
 *
 * What a page can check: the document comes from a genuine Nitro enclave (chain to the AWS root),
 * runs the expected image (PCRs), is not in debug mode, and was made for this request (the
 * nonce). What it cannot: a page never sees the TLS certificate it was served, so it cannot tie
 * the document's key to its own connection; that link rests on the public CA (see README).
 */
import { AttestationError } from '../verify/attestation-error.js';
import { bytesOption, toHex } from '../client/verify-options.js';
import {
  base64ToBytes,
  verifyAttestationDocument,
  type BrowserVerifiedAttestation,
  type BrowserVerifyOptions,
} from './webcrypto-verifier.js';
import type { webcrypto } from 'node:crypto';

export { AttestationError, isAttestationError, type AttestationErrorCode } from '../verify/attestation-error.js';
export type { AttestationDocument } from '../verify/document.js';
export type { PcrSet } from '../client/verify-options.js';
export {
  verifyAttestationDocument,
  type BrowserVerifiedAttestation,
  type BrowserVerifyOptions,
} from './webcrypto-verifier.js';

/** Default size of a fresh nonce. */
export const FRESH_NONCE_BYTES = 32;
/** A well-known answer is a ~10 KiB document in base64 JSON; anything far past that is refused, read no further. */
const MAX_RESPONSE_CHARS = 256 * 1024;

export interface FetchAttestationOptions extends BrowserVerifyOptions {
  /** The nonce to ask for (bytes or hex); default fresh random bytes. The document must carry exactly it. */
  nonce?: Uint8Array | string;
  /** Aborts the request. */
  signal?: AbortSignal;
}

export interface FetchedAttestation extends BrowserVerifiedAttestation {
  /** The nonce that was asked for and found in the document. */
  nonce: Uint8Array;
  /** The raw COSE_Sign1 bytes. */
  raw: Uint8Array;
}

/**
 * `GET <origin>/.well-known/attestation?nonce=HEX` on the enclave's ingress, then verifies the
 * answer with the nonce required. Rejects with an AttestationError: ERR_ATTESTATION_FETCH when no
 * usable answer came, otherwise the verifier's code.
 */
export async function fetchAttestation(
  origin: string,
  options: FetchAttestationOptions = {},
): Promise<FetchedAttestation> {
  const nonce = options.nonce === undefined ? freshNonce() : bytesOption(options.nonce, 'nonce');
  if (nonce.byteLength === 0 || nonce.byteLength > 1024) throw new RangeError('nonce must be 1 to 1024 bytes');
  const url = new URL('/.well-known/attestation', origin);
  url.search = `?nonce=${toHex(nonce)}`;
  let text: string;
  try {
    // No cookies (the answer is public and the ingress allows any origin without credentials), no cache.
    const init = {
      method: 'GET',
      credentials: 'omit',
      cache: 'no-store',
      redirect: 'error',
      ...(options.signal ? { signal: options.signal } : {}),
    };
    // `cache` is a browser RequestInit field that Node's typings lack.
    const response = await fetch(url, init as RequestInit);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    text = await readBounded(response);
  } catch (error) {
    throw new AttestationError(
      'ERR_ATTESTATION_FETCH',
      `GET ${url.origin}${url.pathname} failed: ${(error as Error).message}`,
      { cause: error },
    );
  }
  let encoded: unknown;
  try {
    encoded = (JSON.parse(text) as { attestation_doc?: unknown }).attestation_doc;
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_FETCH', 'the answer is not JSON', { cause: error });
  }
  if (typeof encoded !== 'string')
    throw new AttestationError('ERR_ATTESTATION_FETCH', 'the answer has no attestation_doc string');
  const raw = base64ToBytes(encoded);
  const verified = await verifyAttestationDocument(raw, { ...options, nonce });
  return { ...verified, nonce, raw };
}

/** The body as text, reading no more than MAX_RESPONSE_CHARS bytes whatever the server announces or streams. */
async function readBounded(response: Response): Promise<string> {
  const length = Number(response.headers.get('content-length') ?? '0');
  if (length > MAX_RESPONSE_CHARS) throw new Error(`the answer is ${length} bytes, more than ${MAX_RESPONSE_CHARS}`);
  if (response.body === null) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > MAX_RESPONSE_CHARS) {
      void reader.cancel().catch(() => {});
      throw new Error(`the answer is more than ${MAX_RESPONSE_CHARS} bytes`);
    }
    chunks.push(value);
  }
  const all = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    all.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return new TextDecoder().decode(all);
}

function freshNonce(): Uint8Array {
  const bytes = new Uint8Array(FRESH_NONCE_BYTES);
  (globalThis as { crypto: webcrypto.Crypto }).crypto.getRandomValues(bytes);
  return bytes;
}
