import { X509Certificate } from 'node:crypto';
import { createSecureContext, type SecureContext } from 'node:tls';
import { TlsError } from './tls-error.js';

/** The ALPN protocol of TLS-ALPN-01 validation connections (RFC 8737). */
export const ACME_TLS_ALPN_PROTOCOL = 'acme-tls/1';
/** Pending validations at once; an order never has more than one per domain, and a CA caps domains at 100. */
export const MAX_PENDING_CHALLENGES = 256;
/**
 * Challenges a fleet shares at once: the orderer validates one authorization at a time, so one is
 * the normal count; a few more cover a split (two orderers) without letting a peer grow the table.
 */
export const MAX_SHARED_CHALLENGES = 8;
/** The longest a shared challenge is answered: an order is given up after 10 minutes (ACME_ORDER_TIMEOUT_MS). */
export const MAX_SHARED_CHALLENGE_LIFETIME_MS = 10 * 60_000;
/** A challenge certificate is one small self-signed certificate; its key one EC key. */
export const MAX_CHALLENGE_PEM_CHARS = 8 * 1024;

/** A pending TLS-ALPN-01 answer as it travels between fleet members. */
export interface SharedChallenge {
  domain: string;
  certPem: string;
  keyPem: string;
  /** ms since the epoch; not answered after it. */
  expiresAt: number;
}

/**
 * How an orderer hands its pending answers to the other members of a fleet, so the CA's validation
 * connection succeeds whichever member the load balancer sends it to.
 */
export interface ChallengeSharing {
  /** Hands `challenge` to every reachable peer before it resolves; resolves with how many have it. */
  share(challenge: SharedChallenge): Promise<{ peersReached: number; peers: number }>;
  /** The validation of `domain` is over: peers drop it (at their next sync, or at its expiry). */
  withdraw(domain: string): Promise<void>;
}

interface SharedAnswer {
  context: SecureContext;
  expiresAt: number;
}

/**
 * The TLS-ALPN-01 answers pending right now, by domain: while the CA validates, a handshake that
 * offers ALPN `acme-tls/1` with SNI = that domain gets the challenge certificate (self-signed,
 * carrying the acmeIdentifier extension) and nothing else happens on that connection. Two sources:
 * this member's own orders (`add`), and a fleet peer's (`replaceShared`), each shared one with an expiry.
 */
export class TlsAlpnChallenges {
  readonly #byDomain = new Map<string, SecureContext>();
  #shared = new Map<string, SharedAnswer>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

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

  /**
   * Answer exactly these challenges from the fleet (the ones not listed any more are dropped). Only
   * names in `allowed` are taken, only unexpired ones whose expiry is within the lifetime bound, and
   * only a certificate that names the domain and matches its key; the rest are returned with why.
   */
  replaceShared(
    challenges: readonly SharedChallenge[],
    allowed: ReadonlySet<string>,
  ): { installed: string[]; rejected: { domain: string; reason: string }[] } {
    const now = this.#now();
    const next = new Map<string, SharedAnswer>();
    const rejected: { domain: string; reason: string }[] = [];
    for (const challenge of challenges) {
      const name = normalizeDomain(challenge.domain);
      const reason = sharedProblem(challenge, name, allowed, now);
      if (reason === undefined && next.size >= MAX_SHARED_CHALLENGES) {
        rejected.push({ domain: name, reason: `over ${MAX_SHARED_CHALLENGES} shared challenges` });
        continue;
      }
      if (reason !== undefined) {
        rejected.push({ domain: name, reason });
        continue;
      }
      let context: SecureContext;
      try {
        context = createSecureContext({ key: challenge.keyPem, cert: challenge.certPem });
      } catch (error) {
        rejected.push({ domain: name, reason: `unusable certificate or key: ${(error as Error).message}` });
        continue;
      }
      next.set(name, { context, expiresAt: challenge.expiresAt });
    }
    this.#shared = next;
    return { installed: [...next.keys()], rejected };
  }

  /** The challenge certificate for this SNI, while a validation is pending. */
  contextFor(serverName: string): SecureContext | undefined {
    if (this.#byDomain.size === 0 && this.#shared.size === 0) return undefined;
    const name = normalizeDomain(serverName);
    const own = this.#byDomain.get(name);
    if (own) return own;
    const shared = this.#shared.get(name);
    if (!shared) return undefined;
    if (this.#now() >= shared.expiresAt) {
      this.#shared.delete(name);
      return undefined;
    }
    return shared.context;
  }

  /** Challenges pending now (this member's own). */
  get size(): number {
    return this.#byDomain.size;
  }

  /** Domains a fleet peer's challenges are answered for now (unexpired). */
  get sharedDomains(): string[] {
    const now = this.#now();
    return [...this.#shared].filter(([, answer]) => now < answer.expiresAt).map(([name]) => name);
  }
}

function sharedProblem(
  challenge: SharedChallenge,
  name: string,
  allowed: ReadonlySet<string>,
  now: number,
): string | undefined {
  if (!allowed.has(name)) return 'not one of tls.acme.domains here';
  if (!Number.isSafeInteger(challenge.expiresAt) || challenge.expiresAt <= now) return 'expired';
  // A peer's clock may be a little ahead; an expiry far beyond one order's length is not a challenge's.
  if (challenge.expiresAt > now + MAX_SHARED_CHALLENGE_LIFETIME_MS + 60_000) return 'expiry too far ahead';
  if (challenge.certPem.length > MAX_CHALLENGE_PEM_CHARS || challenge.keyPem.length > MAX_CHALLENGE_PEM_CHARS)
    return 'certificate or key too large';
  try {
    const leaf = new X509Certificate(challenge.certPem);
    if (leaf.checkHost(name, { wildcards: false }) === undefined) return 'the certificate does not name it';
  } catch {
    return 'unreadable certificate';
  }
  return undefined;
}

/** DNS names compare case-insensitively, and a trailing root dot names the same host. */
export function normalizeDomain(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}
