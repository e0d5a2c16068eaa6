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
import { NonceFlights } from '../tls/nonce-flights.js';
import type { CertificateStoreStats } from '../tls/certificate-store.js';
import type { CertificateProvider } from '../tls/tls-terminator.js';
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
  // The main thread sends only certificates createAttestedCertificate checked against the key sent with them.
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
  readonly #flights: NonceFlights;
  #base: AttestedCertificate;
  // The contexts of the current key's leaves; a renewed base certificate brings a new key.
  #contexts: { keyPem: string; contexts: LeafContexts } | undefined;
  #received = 0;
  #failures = 0;
  #baseRenewals = 0;
  #closed = false;

  constructor(base: CertificateSnapshot, options: WorkerCertificatesOptions) {
    this.#flights = new NonceFlights(options.nonceCacheSize, options.maxPendingIssues);
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
    return this.#flights.peek(nonce);
  }

  forNonce(nonce: Uint8Array): Promise<AttestedCertificate> {
    return this.#flights.get(
      nonce,
      () => this.#fetch(nonce),
      () => !this.#closed,
    );
  }

  stats(): CertificateStoreStats {
    return {
      cached: this.#flights.cached,
      pending: this.#flights.pending,
      issued: this.#received,
      failures: this.#failures,
      baseRenewals: this.#baseRenewals,
      baseExpiresAt: this.#base.expiresAt.toISOString(),
    };
  }

  close(): void {
    this.#closed = true;
    this.#flights.clear();
  }

  #contextsOf(snapshot: CertificateSnapshot): LeafContexts {
    if (this.#contexts?.keyPem !== snapshot.keyPem) {
      const contexts = new LeafContexts(createPrivateKey(snapshot.keyPem), this.#options.sharing);
      this.#contexts = { keyPem: snapshot.keyPem, contexts };
    }
    return this.#contexts.contexts;
  }

  async #fetch(nonce: Uint8Array): Promise<AttestedCertificate> {
    try {
      const snapshot = await this.#options.ask(nonce);
      const cert = restoreCertificate(snapshot, this.#contextsOf(snapshot));
      this.#received += 1;
      return cert;
    } catch (err) {
      // The main thread's store logged why (rate-limited); the handshake gets the base certificate.
      this.#failures += 1;
      throw err;
    }
  }
}
