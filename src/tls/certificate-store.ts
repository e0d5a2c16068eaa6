import type { Nsm } from '../attestation/nsm.js';
import type { Logger } from '../core/log.js';
import { createAttestedCertificate, type AttestedCertificate } from './attested-certificate.js';
import type { CertificateSource } from './certificate-source.js';
import { generateTlsKeyPair, type TlsKeyPair } from './key-pair.js';
import { contextSharingWorks, LeafContexts } from './leaf-contexts.js';
import { NonceFlights, staleAt } from './nonce-flights.js';
import { TlsError } from './tls-error.js';
import { formatNonceServerName, type SniNonceEncoding } from './nonce-label.js';
import { timerDelay } from '../core/backoff.js';
import { errorCode } from '../core/errors.js';

export const DEFAULT_NONCE_CACHE_SIZE = 1024;
export const DEFAULT_MAX_PENDING_ISSUES = 256;
export const DEFAULT_ISSUE_TIMEOUT_MS = 5000;
const RETRY_MIN_MS = 1000;
const RETRY_MAX_MS = 60_000;
// Renewal never fires sooner than this after the last one, whatever a short-lived document says,
// so a misconfigured clock cannot turn the timer into a busy loop.
const RENEW_MIN_DELAY_MS = 1000;
const WARN_INTERVAL_MS = 10_000;

export interface CertificateStoreOptions {
  nsm: Nsm;
  source: CertificateSource;
  serverName: string;
  logger: Logger;
  /** How nonce labels are spelled, so a nonce certificate names `<label>.attest.<serverName>` as asked. */
  sniNonceEncoding?: SniNonceEncoding;
  /** Per-nonce certificates kept (LRU). */
  nonceCacheSize?: number;
  /** Distinct nonces being issued at once; beyond it, callers are refused at once. */
  maxPendingIssues?: number;
  /** How long one handshake waits for its nonce certificate before the caller falls back. */
  issueTimeoutMs?: number;
  /** The clock for freshness decisions, ms since the epoch; tests move it. */
  now?: () => number;
}

/** Counters for health and tests. */
export interface CertificateStoreStats {
  cached: number;
  pending: number;
  issued: number;
  failures: number;
  baseRenewals: number;
  baseExpiresAt: string;
}

/**
 * Holds the base certificate (no nonce) and the per-nonce ones.
 *
 * Nothing here runs synchronously inside a handshake: the base certificate is made ahead of time
 * and renewed on a timer, and a nonce certificate is made asynchronously once, however many
 * handshakes ask for it at the same moment (single flight), then kept in a bounded LRU. Failures
 * are never cached, so the next handshake retries.
 *
 * All certificates of one renewal period share one key: the nonce proves the document is fresh and
 * the document binds the key, so a key per nonce would add a key generation to the per-nonce path
 * without adding to what the client learns.
 */
export class CertificateStore {
  readonly #options: Required<Omit<CertificateStoreOptions, 'now'>>;
  readonly #now: () => number;
  readonly #flights: NonceFlights;
  // Which key each certificate was made with, for threads that rebuild its secure context (ingress workers).
  readonly #keys = new WeakMap<AttestedCertificate, TlsKeyPair>();
  #keyPair: TlsKeyPair;
  #contexts: LeafContexts;
  readonly #sharing: boolean;
  #base: AttestedCertificate;
  #renewing: Promise<AttestedCertificate> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #retryMs = RETRY_MIN_MS;
  #closed = false;
  #issued = 0;
  #failures = 0;
  #baseRenewals = 0;
  #lastWarnAt = 0;
  #suppressedWarnings = 0;

  private constructor(
    options: CertificateStoreOptions,
    keyPair: TlsKeyPair,
    contexts: LeafContexts,
    sharing: boolean,
    base: AttestedCertificate,
  ) {
    const nonceCacheSize = options.nonceCacheSize ?? DEFAULT_NONCE_CACHE_SIZE;
    this.#options = {
      nsm: options.nsm,
      source: options.source,
      serverName: options.serverName,
      sniNonceEncoding: options.sniNonceEncoding ?? 'hex',
      logger: options.logger,
      nonceCacheSize,
      maxPendingIssues: options.maxPendingIssues ?? DEFAULT_MAX_PENDING_ISSUES,
      issueTimeoutMs: options.issueTimeoutMs ?? DEFAULT_ISSUE_TIMEOUT_MS,
    };
    this.#now = options.now ?? Date.now;
    this.#flights = new NonceFlights(nonceCacheSize, this.#options.maxPendingIssues, this.#now);
    this.#keyPair = keyPair;
    this.#contexts = contexts;
    this.#sharing = sharing;
    this.#base = base;
  }

  /** Make the first base certificate (failing if the NSM or the source cannot), then keep it renewed. */
  static async create(options: CertificateStoreOptions): Promise<CertificateStore> {
    const keyPair = await generateTlsKeyPair();
    const sharing = await contextSharingWorks();
    const contexts = new LeafContexts(keyPair.privateKey, sharing);
    const base = await createAttestedCertificate({
      nsm: options.nsm,
      source: options.source,
      serverName: options.serverName,
      keyPair,
      contexts,
      ...(options.now ? { now: options.now } : {}),
    });
    const store = new CertificateStore(options, keyPair, contexts, sharing, base);
    store.#keys.set(base, keyPair);
    store.#logBase('base attested certificate ready');
    store.#schedule(store.#renewDelay(base));
    return store;
  }

  /** The current base certificate; always available, even while a renewal is failing. */
  get base(): AttestedCertificate {
    return this.#base;
  }

  /** The key pair `cert` (one of this store's) was made with; undefined for any other certificate. */
  keyPairOf(cert: AttestedCertificate): TlsKeyPair | undefined {
    return this.#keys.get(cert);
  }

  /** Per-nonce certificates in the cache. */
  get size(): number {
    return this.#flights.cached;
  }

  /** Distinct nonces being issued right now. */
  get pending(): number {
    return this.#flights.pending;
  }

  stats(): CertificateStoreStats {
    return {
      cached: this.#flights.cached,
      pending: this.#flights.pending,
      issued: this.#issued,
      failures: this.#failures,
      baseRenewals: this.#baseRenewals,
      baseExpiresAt: this.#base.expiresAt.toISOString(),
    };
  }

  /** The cached, fresh certificate for `nonce`, if any, without issuing. */
  peek(nonce: Uint8Array): AttestedCertificate | undefined {
    return this.#flights.peek(nonce);
  }

  /**
   * The certificate whose document carries `nonce`: from the cache, from an issuance already in
   * flight for the same nonce, or freshly issued. Rejects (TlsError) on NSM/source failure, on
   * timeout, when too many nonces are pending, or after close; the caller then serves the base.
   */
  forNonce(nonce: Uint8Array): Promise<AttestedCertificate> {
    const flight = this.#flights.get(
      nonce,
      () => this.#issue(nonce),
      () => !this.#closed,
    );
    return withTimeout(flight, this.#options.issueTimeoutMs).catch((err: unknown) => {
      // A failed issuance was logged by #issue; a slow one (stalled NSM) would otherwise go unnoticed.
      if (err instanceof TlsError && err.code === 'ERR_TLS_ISSUE_TIMEOUT')
        this.#warn(err, 'nonce certificate not ready in time; serving the base certificate instead');
      throw err;
    });
  }

  /** Replace the base certificate now (new key, new document); on failure the old one stays. Concurrent calls share one renewal. */
  renewBase(): Promise<AttestedCertificate> {
    this.#renewing ??= this.#renew().finally(() => {
      this.#renewing = undefined;
    });
    return this.#renewing;
  }

  /** Stop the renewal timer; in-flight issuances finish but their results are dropped. */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#flights.clear();
  }

  async #issue(nonce: Uint8Array): Promise<AttestedCertificate> {
    try {
      // The certificate names the nonce host the client asked for, so ordinary clients' hostname
      // checks pass; the document is still the first label of the longest SAN.
      const keyPair = this.#keyPair;
      const cert = await createAttestedCertificate({
        nsm: this.#options.nsm,
        source: this.#options.source,
        serverName: formatNonceServerName(nonce, this.#options.serverName, this.#options.sniNonceEncoding),
        keyPair,
        contexts: this.#contexts,
        nonce,
        now: this.#now,
      });
      this.#keys.set(cert, keyPair);
      this.#issued += 1;
      return cert;
    } catch (err) {
      this.#failures += 1;
      this.#warn(err, 'could not issue a nonce certificate; serving the base certificate instead');
      throw err instanceof TlsError
        ? err
        : new TlsError('ERR_TLS_ISSUE', `nonce certificate: ${(err as Error).message}`, { cause: err });
    }
  }

  async #renew(): Promise<AttestedCertificate> {
    const keyPair = await generateTlsKeyPair();
    const contexts = new LeafContexts(keyPair.privateKey, this.#sharing);
    const base = await createAttestedCertificate({
      nsm: this.#options.nsm,
      source: this.#options.source,
      serverName: this.#options.serverName,
      keyPair,
      contexts,
      now: this.#now,
    });
    this.#keys.set(base, keyPair);
    if (!this.#closed) {
      this.#keyPair = keyPair;
      this.#contexts = contexts;
      this.#base = base;
      this.#baseRenewals += 1;
      this.#logBase('base attested certificate renewed');
    }
    return base;
  }

  #schedule(delayMs: number): void {
    if (this.#closed) return;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = setTimeout(
      () => {
        this.#timer = undefined;
        this.renewBase().then(
          (base) => {
            this.#retryMs = RETRY_MIN_MS;
            this.#schedule(this.#renewDelay(base));
          },
          (err: unknown) => {
            this.#options.logger.warn(
              { err: describeError(err), retryInMs: this.#retryMs, baseExpiresAt: this.#base.expiresAt.toISOString() },
              'could not renew the base certificate; still serving the current one',
            );
            this.#schedule(this.#retryMs);
            this.#retryMs = Math.min(this.#retryMs * 2, RETRY_MAX_MS);
          },
        );
      },
      timerDelay(delayMs, RENEW_MIN_DELAY_MS),
    );
    // Renewal alone must never keep the process alive.
    this.#timer.unref();
  }

  #renewDelay(cert: AttestedCertificate): number {
    return staleAt(cert) - this.#now();
  }

  #logBase(message: string): void {
    this.#options.logger.info(
      {
        serverName: this.#options.serverName,
        expiresAt: this.#base.expiresAt.toISOString(),
        renewAt: new Date(staleAt(this.#base)).toISOString(),
      },
      message,
    );
  }

  // A flood of bad handshakes must not become a flood of log lines: one warning per interval, with a count.
  #warn(err: unknown, message: string): void {
    const now = Date.now();
    if (now - this.#lastWarnAt < WARN_INTERVAL_MS) {
      this.#suppressedWarnings += 1;
      return;
    }
    this.#options.logger.warn({ err: describeError(err), suppressed: this.#suppressedWarnings }, message);
    this.#lastWarnAt = now;
    this.#suppressedWarnings = 0;
  }
}

/**
 * A certificate is renewed (base) or re-issued (cache) once two thirds of its useful life is
 * gone: for a real NSM document valid about 3 h, that leaves about an hour of margin for clients
 * with skewed clocks and for renewal retries.
 */

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new TlsError('ERR_TLS_ISSUE_TIMEOUT', `no nonce certificate within ${ms} ms`)),
      ms,
    );
    timer.unref();
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (err: unknown) => {
        clearTimeout(timer);
        reject(err);
      },
    );
  });
}

function describeError(err: unknown): { code?: string; message: string } {
  if (err instanceof Error) {
    const code = errorCode(err);
    return typeof code === 'string' ? { code, message: err.message } : { message: err.message };
  }
  return { message: String(err) };
}
