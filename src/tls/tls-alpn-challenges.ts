import { createSecureContext, type SecureContext } from 'node:tls';
import { TlsError } from './tls-error.js';

/** The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737). */
export const ACME_TLS_ALPN_PROTOCOL = 'acme-tls/1';
/** Pending validations at once; an order never has more than one per domain, and a CA caps domains at 100. */
export const MAX_PENDING_CHALLENGES = 256;

/**
 * The TLS-ALPN-01 answers pending right now, by domain: while the CA validates, a handshake that
 * offers ALPN `acme-tls/1` with SNI = that domain gets the challenge certificate (self-signed,
 * carrying the acmeIdentifier extension) and nothing else happens on that connection.
 */
export class TlsAlpnChallenges {
  readonly #byDomain = new Map<string, SecureContext>();

  /** Answer validations of `domain` with this certificate until `remove(domain)`. */
  add(domain: string, certPem: string, keyPem: string): void {
    const name = normalizeDomain(domain);
    if (!this.#byDomain.has(name) && this.#byDomain.size >= MAX_PENDING_CHALLENGES) {
      throw new TlsError(
        'ERR_TLS_ACME_CHALLENGE',
        `${MAX_PENDING_CHALLENGES} TLS-ALPN-01 challenges are already pending`,
      );
    }
    this.#byDomain.set(name, createSecureContext({ key: keyPem, cert: certPem }));
  }

  /** Stop answering validations of `domain`. */
  remove(domain: string): void {
    this.#byDomain.delete(normalizeDomain(domain));
  }

  /** The challenge certificate for this SNI, while a validation is pending. */
  contextFor(serverName: string): SecureContext | undefined {
    return this.#byDomain.size === 0 ? undefined : this.#byDomain.get(normalizeDomain(serverName));
  }

  /** Challenges pending now. */
  get size(): number {
    return this.#byDomain.size;
  }
}

/** DNS names compare case-insensitively, and a trailing root dot names the same host. */
export function normalizeDomain(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}
