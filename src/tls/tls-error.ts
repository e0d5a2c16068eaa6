import { RuntimeError } from '../core/errors.js';

/**
 * Failures of attested TLS, server side (CA state, certificate issuance) and client side
 * (the peer's certificate or attestation did not check out). Codes are ERR_TLS_*.
 */
export class TlsError extends RuntimeError {}
