import type { AttestedCertificate } from './attested-certificate.js';
import { TlsError } from './tls-error.js';

/** What a cache entry needs for its staleness: an AttestedCertificate, or the native engine's credentials of one. */
export type Freshness = Pick<AttestedCertificate, 'issuedAt' | 'expiresAt'>;

/**
 * Nonce certificates by nonce: a bounded LRU of fresh ones and at most one fetch in flight per nonce, so
 * clients handshaking with the same nonce at once share one NSM call. The main thread's CertificateStore
 * fetches by issuing; an ingress worker fetches by asking the main thread.
 */
export class NonceFlights<T extends Freshness = AttestedCertificate> {
  readonly #cache = new Map<string, T>();
  readonly #pending = new Map<string, Promise<T>>();
  readonly #capacity: number;
  readonly #maxPending: number;
  readonly #now: () => number;

  constructor(capacity: number, maxPending: number, now: () => number = Date.now) {
    if (!Number.isInteger(capacity) || capacity < 1) throw new RangeError('nonceCacheSize must be a positive integer');
    this.#capacity = capacity;
    this.#maxPending = maxPending;
    this.#now = now;
  }

  get cached(): number {
    return this.#cache.size;
  }

  get pending(): number {
    return this.#pending.size;
  }

  /** The cached certificate for `nonce` while fresh (a stale one is dropped), without fetching. */
  peek(nonce: Uint8Array): T | undefined {
    const key = nonceKey(nonce);
    const hit = this.#cache.get(key);
    if (!hit) return undefined;
    this.#cache.delete(key);
    if (this.#now() >= staleAt(hit)) return undefined;
    // Re-inserting moves the entry to the young end of the Map's insertion order: that is the LRU.
    this.#cache.set(key, hit);
    return hit;
  }

  /**
   * The cached certificate, the fetch already in flight for `nonce`, or `fetch()` started now. Rejects
   * with ERR_TLS_CLOSED once `open()` is false, ERR_TLS_NONCE for an empty nonce and ERR_TLS_BUSY when
   * as many fetches as allowed are in flight. A fetched certificate is cached only while `open()`.
   */
  get(nonce: Uint8Array, fetch: () => Promise<T>, open: () => boolean): Promise<T> {
    if (!open()) return Promise.reject(new TlsError('ERR_TLS_CLOSED', 'the certificate store is closed'));
    if (nonce.length === 0)
      return Promise.reject(new TlsError('ERR_TLS_NONCE', 'an empty nonce asks for the base certificate'));
    const hit = this.peek(nonce);
    if (hit) return Promise.resolve(hit);
    const key = nonceKey(nonce);
    let flight = this.#pending.get(key);
    if (!flight) {
      if (this.#pending.size >= this.#maxPending) {
        return Promise.reject(
          new TlsError('ERR_TLS_BUSY', `${this.#pending.size} nonce certificates are already being issued`),
        );
      }
      flight = fetch()
        .then((cert) => {
          if (open()) this.#remember(key, cert);
          return cert;
        })
        .finally(() => this.#pending.delete(key));
      this.#pending.set(key, flight);
    }
    return flight;
  }

  clear(): void {
    this.#cache.clear();
  }

  #remember(key: string, cert: T): void {
    this.#cache.set(key, cert);
    // Evict from the old end until back at the cap; one pass at most, as we add one at a time.
    for (const oldest of this.#cache.keys()) {
      if (this.#cache.size <= this.#capacity) break;
      this.#cache.delete(oldest);
    }
  }
}

/** When a certificate is renewed (or no longer served from a cache): two thirds into its useful life. */
export function staleAt(cert: Freshness): number {
  const start = cert.issuedAt.getTime();
  return start + ((cert.expiresAt.getTime() - start) * 2) / 3;
}

function nonceKey(nonce: Uint8Array): string {
  return Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString('hex');
}
