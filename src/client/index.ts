/**
 * `enclave-runtime/client`: verify an enclave from Node before trusting it (SPEC "Client
 * library"). A thin, typed face over the runtime's own verifier (src/attestation) and attesting
 * undici connector (src/tls/attested-client.ts); nothing here verifies on its own.
 */
import type { X509Certificate } from 'node:crypto';
import { fetch, type Agent, type Dispatcher, type RequestInit, type Response } from 'undici';
import { verifyCertificateAttestation } from '../verify/certificate-binding.js';
import type { RootInput } from '../verify/root-store.js';
import { verifyAttestation, type VerifiedAttestation, type VerifyOptions } from '../verify/verifier.js';
import {
  createAttestedAgent,
  type AttestedAgentOptions as ConnectorAgentOptions,
  type PeerAttestation,
} from '../tls/attested-client.js';
import { policyFromOptions, type ClientPolicyOptions } from './verify-options.js';

export { AttestationError, isAttestationError, type AttestationErrorCode } from '../verify/attestation-error.js';
export { attestationDocumentToJson, type AttestationDocument } from '../verify/document.js';
export { extractAttestationFromCertificate } from '../verify/certificate-binding.js';
export { TlsError } from '../tls/tls-error.js';
export { generateSniNonce, isCaseStableNonce, type SniNonceEncoding } from '../tls/nonce-label.js';
export type { PcrSet, ClientPolicyOptions } from './verify-options.js';
export type { VerifiedAttestation, PeerAttestation };

export interface ClientVerifyOptions extends ClientPolicyOptions {
  /** The root to pin: PEM text, DER bytes or an X509Certificate. Default: the bundled AWS Nitro root G1. */
  root?: RootInput;
}

function verifyOptions(options: ClientVerifyOptions): VerifyOptions {
  return { ...policyFromOptions(options), ...(options.root === undefined ? {} : { root: options.root }) };
}

/** Verifies a raw COSE_Sign1 attestation document; throws AttestationError (ERR_ATTESTATION_*). */
export function verifyAttestationDocument(bytes: Uint8Array, options: ClientVerifyOptions = {}): VerifiedAttestation {
  return verifyAttestation(bytes, verifyOptions(options));
}

/**
 * Verifies the document a TLS certificate embeds (SPEC "Attested TLS certificates") and that it
 * binds the certificate's own key. Only meaningful for a certificate whose key the peer proved it
 * holds, i.e. the one of a finished handshake. Throws AttestationError.
 */
export function verifyAttestedCertificate(
  certificate: Uint8Array | X509Certificate,
  options: ClientVerifyOptions = {},
): VerifiedAttestation {
  return verifyCertificateAttestation(certificate, verifyOptions(options));
}

/**
 * The connector's options (src/tls/attested-client.ts: `sniNonceEncoding`, `servername`, `ca`,
 * `verifyChain`, `timeoutMs`, `onAttested`, `agent`, …) with the policy given flat, as in
 * verifyAttestationDocument, and `freshNonce` on by default: each connection then asks for a
 * certificate carrying a random nonce, so a replayed one is refused. That costs the server one
 * attestation per connection; undici keeps connections alive, so not one per request.
 */
export interface AttestedAgentOptions extends ClientVerifyOptions, Omit<ConnectorAgentOptions, 'verify'> {}

/**
 * An undici Dispatcher whose every connection is verified before undici may write to it: the
 * certificate's document must verify and bind the certificate key (and carry the connection's
 * fresh nonce). A connection that fails is destroyed and the request rejects with the
 * AttestationError; no request byte was sent.
 */
export function attestedAgent(options: AttestedAgentOptions = {}): Agent {
  const {
    root: _root,
    pcrs: _pcrs,
    nonce: _nonce,
    userData: _userData,
    publicKey: _publicKey,
    allowDebug: _allowDebug,
    at: _at,
    ...connector
  } = options;
  return createAttestedAgent({ ...connector, verify: verifyOptions(options), freshNonce: options.freshNonce ?? true });
}

export interface AttestedFetchOptions extends AttestedAgentOptions {
  /** The request (method, headers, body…); its `dispatcher` is ours. */
  init?: Omit<RequestInit, 'dispatcher'>;
  /** Reuse this attested agent (from attestedAgent) instead of making one for this call. */
  dispatcher?: Dispatcher;
}

/**
 * fetch() over an attested connection. Without `dispatcher`, a one-off agent is made for the call
 * and closed once the response body has been read (or the request failed). Rejects with the
 * AttestationError when the server does not attest as required.
 */
export async function attestedFetch(url: string | URL, options: AttestedFetchOptions = {}): Promise<Response> {
  const own = options.dispatcher === undefined ? attestedAgent(options) : undefined;
  const dispatcher = options.dispatcher ?? own!;
  try {
    const response = await fetch(url, { ...options.init, dispatcher });
    // close() waits for the request in flight, body included, then frees the pool.
    if (own) void own.close().catch(() => {});
    return response;
  } catch (error) {
    if (own) void own.destroy().catch(() => {});
    throw unwrapFetchError(error);
  }
}

/** undici's fetch wraps connector errors in a TypeError("fetch failed"); callers branch on our code. */
function unwrapFetchError(error: unknown): unknown {
  const cause = (error as { cause?: unknown }).cause;
  const code = (cause as { code?: unknown } | undefined)?.code;
  return cause instanceof Error && typeof code === 'string' && /^ERR_(ATTESTATION|TLS)_/.test(code) ? cause : error;
}
