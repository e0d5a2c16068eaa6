/**
 * An ingress worker thread's certificates: the main thread's base certificate, and nonce ones asked
 * of the main thread, whose CertificateStore keeps the one cache and single flight, so a nonce costs
 * one NSM call however many workers handshake with it at once. Here only a small LRU of the
 * certificates already received (each with this thread's own secure context) and one request in
 * flight per nonce.
 */
import { createPrivateKey } from 'node:crypto';
import { servingContexts, type AttestedCertificate } from '../tls/attested-certificate.js';
import { LeafContexts } from '../tls/leaf-contexts.js';
import type { CertificateStoreStats } from '../tls/certificate-store.js';
import type { CertificateProvider } from '../tls/tls-terminator.js';
import { TlsError } from '../tls/tls-error.js';
import type { CertificateSnapshot } from './ingress-worker-protocol.js';

export interface WorkerCertificatesOptions {
  nonceCacheSize: number;
  maxPendingIssues: number;
  /** Asks the main thread for the certificate of `nonce`; rejects on failure or timeout. */
  ask: (nonce: Uint8Array) => Promise<CertificateSnapshot>;
  /** contextSharingWorks() in this thread: whether fresh leaves may share one context. */
  sharing: boolean;
}

/**
 * Rebuilds a certificate sent by the main thread, served through this thread's contexts of its key: a fresh
 * nonce leaf is swapped into the shared context as in the main thread, so no context is built per nonce here.
 */
export function restoreCertificate(snapshot: CertificateSnapshot, contexts: LeafContexts): AttestedCertificate {
  const serving = servingContexts(snapshot.certPem, snapshot.chainPem, contexts, snapshot.nonce === null);
  return {
    serverName: snapshot.serverName,
    nonce: snapshot.nonce,
    document: snapshot.document,
    certPem: snapshot.certPem,
    chainPem: snapshot.chainPem,
    get secureContext() {
      return serving.secureContext();
    },
    handOver: serving.handOver,
    issuedAt: new Date(snapshot.issuedAt),
    certificateNotAfter: new Date(snapshot.certificateNotAfter),
    documentNotAfter: new Date(snapshot.documentNotAfter),
    expiresAt: new Date(snapshot.expiresAt),
  };
}

export class WorkerCertificates implements CertificateProvider {
  readonly #options: WorkerCertificatesOptions;
  readonly #cache = new Map<string, AttestedCertificate>();
  readonly #pending = new Map<string, Promise<AttestedCertificate>>();
  #base: AttestedCertificate;
  // The contexts of the current key's leaves; a renewed base certificate brings a new key.
  #contexts: { keyPem: string; contexts: LeafContexts } | undefined;
  #received = 0;
  #failures = 0;
  #baseRenewals = 0;
  #closed = false;

  constructor(base: CertificateSnapshot, options: WorkerCertificatesOptions) {
    if (!Number.isInteger(options.nonceCacheSize) || options.nonceCacheSize < 1)
      throw new RangeError('nonceCacheSize must be a positive integer');
    this.#options = options;
    this.#base = restoreCertificate(base, this.#contextsOf(base));
  }

  get base(): AttestedCertificate {
    return this.#base;
  }

  /** The main thread renewed its base certificate. */
  replaceBase(snapshot: CertificateSnapshot): void {
    this.#base = restoreCertificate(snapshot, this.#contextsOf(snapshot));
    this.#baseRenewals += 1;
  }

  peek(nonce: Uint8Array): AttestedCertificate | undefined {
    const key = cacheKey(nonce);
    const hit = this.#cache.get(key);
    if (!hit) return undefined;
    this.#cache.delete(key);
    // The main thread re-issues a stale one; asking it again gets the fresh one.
    if (Date.now() >= staleAt(hit)) return undefined;
    this.#cache.set(key, hit);
    return hit;
  }

  forNonce(nonce: Uint8Array): Promise<AttestedCertificate> {
    if (this.#closed) return Promise.reject(new TlsError('ERR_TLS_CLOSED', 'the certificate store is closed'));
    if (nonce.length === 0)
      return Promise.reject(new TlsError('ERR_TLS_NONCE', 'an empty nonce asks for the base certificate'));
    const hit = this.peek(nonce);
    if (hit) return Promise.resolve(hit);
    const key = cacheKey(nonce);
    let flight = this.#pending.get(key);
    if (!flight) {
      if (this.#pending.size >= this.#options.maxPendingIssues) {
        return Promise.reject(
          new TlsError('ERR_TLS_BUSY', `${this.#pending.size} nonce certificates are already being issued`),
        );
      }
      flight = this.#fetch(key, nonce);
      this.#pending.set(key, flight);
    }
    return flight;
  }

  stats(): CertificateStoreStats {
    return {
      cached: this.#cache.size,
      pending: this.#pending.size,
      issued: this.#received,
      failures: this.#failures,
      baseRenewals: this.#baseRenewals,
      baseExpiresAt: this.#base.expiresAt.toISOString(),
    };
  }

  close(): void {
    this.#closed = true;
    this.#cache.clear();
  }

  #contextsOf(snapshot: CertificateSnapshot): LeafContexts {
    if (this.#contexts?.keyPem !== snapshot.keyPem) {
      const contexts = new LeafContexts(createPrivateKey(snapshot.keyPem), this.#options.sharing);
      this.#contexts = { keyPem: snapshot.keyPem, contexts };
    }
    return this.#contexts.contexts;
  }

  async #fetch(key: string, nonce: Uint8Array): Promise<AttestedCertificate> {
    try {
      const snapshot = await this.#options.ask(nonce);
      const cert = restoreCertificate(snapshot, this.#contextsOf(snapshot));
      this.#received += 1;
      if (!this.#closed) {
        this.#cache.set(key, cert);
        for (const oldest of this.#cache.keys()) {
          if (this.#cache.size <= this.#options.nonceCacheSize) break;
          this.#cache.delete(oldest);
        }
      }
      return cert;
    } catch (err) {
      // The main thread's store logged why (rate-limited); the handshake gets the base certificate.
      this.#failures += 1;
      throw err;
    } finally {
      this.#pending.delete(key);
    }
  }
}

/** As CertificateStore decides: two thirds of the useful life gone. */
function staleAt(cert: AttestedCertificate): number {
  const start = cert.issuedAt.getTime();
  return start + ((cert.expiresAt.getTime() - start) * 2) / 3;
}

function cacheKey(nonce: Uint8Array): string {
  return Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString('hex');
}
