import { X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createSecureContext, type SecureContext } from 'node:tls';
import type { Nsm } from '../attestation/nsm.js';
import type { Logger } from '../core/log.js';
import { documentSigningCertificateNotAfter } from './attested-certificate.js';
import { generateAcmePrivateKeyPem, loadAcmeAccountKey } from './acme-account-key.js';
import type { AcmeIssued } from './acme-order.js';
import { RetryBackoff, renewalTime, systemClock, WakeUp, type Clock } from './renewal-schedule.js';
import {
  normalizeDomain,
  TlsAlpnChallenges,
  type ChallengeSharing,
  type SharedChallenge,
} from './tls-alpn-challenges.js';
import { TlsError } from './tls-error.js';
import { errorCode } from '../core/errors.js';

/** The `[tls.acme]` keys of enclave.toml. */
export interface AcmeSettings {
  enabled: boolean;
  directoryUrl: string;
  /** Account contact; empty for none. */
  email: string;
  domains: string[];
  /** PEM file of roots to trust for the ACME server; empty for the system roots. */
  caFile: string;
  challenge: 'tls-alpn-01';
  renewAtFraction: number;
  retryMinMs: number;
  retryMaxMs: number;
}

/** The certificate served for the ACME domains right now. */
export interface AcmeServedCertificate {
  readonly certPem: string;
  readonly chainPem: string;
  readonly notBefore: Date;
  readonly notAfter: Date;
  readonly secureContext: SecureContext;
  /** DER SubjectPublicKeyInfo of its key: what a well-known attestation document binds. */
  readonly spkiDer: Uint8Array;
}

/** What health and tests see. */
export interface AcmeStatus {
  state: 'issuing' | 'valid' | 'renewing' | 'failing' | 'expired' | 'closed';
  /** An order is in flight right now. */
  ordering: boolean;
  domains: string[];
  issued: number;
  failures: number;
  consecutiveFailures: number;
  notAfter?: string;
  nextAttemptAt?: string;
  lastError?: string;
}

/**
 * A fleet's share in the ACME certificate (src/fleet/fleet-acme.ts makes one): members take a valid
 * certificate a peer ordered instead of ordering their own, and only the member `mayOrder` names
 * orders (first issue and renewals), so the CA sees one order per renewal for the whole fleet.
 */
export interface AcmeFleetLink extends ChallengeSharing {
  /** The fleet's newest certificate with its key, if any. */
  shared(): (AcmeIssued & { keyPem: string }) | undefined;
  /** Whether this member is the one to order now. */
  mayOrder(): boolean;
  /** Hands an issued certificate and its key to the fleet. */
  publish(issued: AcmeIssued, keyPem: string): Promise<void>;
  /** Calls `listener` when a peer's newer certificate arrives. */
  onShared(listener: () => void): void;
  /** The TLS-ALPN-01 answers the fleet's orderer has pending now (its own included). */
  sharedChallenges(): SharedChallenge[];
  /** Calls `listener` when those change. */
  onChallenges(listener: () => void): void;
}

export interface AcmeCertificatesOptions {
  domains: readonly string[];
  /** Orders one certificate for the given key (PKCS#8 PEM); AcmeOrderer.order in production, a fake in tests. */
  order: (certificateKeyPem: string) => Promise<AcmeIssued>;
  challenges: TlsAlpnChallenges;
  renewAtFraction: number;
  retryMinMs: number;
  retryMaxMs: number;
  logger: Logger;
  /** Makes the documents GET /.well-known/attestation returns on ACME connections; without it, callers use the base one. */
  nsm?: Nsm | undefined;
  /** Called once a close is asked for (the orderer's cleanup). */
  onClose?: () => void;
  /** Share certificates with a fleet instead of each member ordering its own. */
  fleet?: AcmeFleetLink | undefined;
  clock?: Clock;
  /** [0, 1); jitter of renewal times and retry delays. */
  random?: () => number;
}

interface CachedDocument {
  forCertificate: AcmeServedCertificate;
  document: Uint8Array;
  staleAt: number;
}

/**
 * Certificates from an ACME CA for the configured custom domains, next to the attested ones: the
 * first is ordered at start(), then each is renewed at `renewAtFraction` of its lifetime (with
 * jitter). A failed attempt is retried with exponential backoff between retryMinMs and retryMaxMs,
 * and the current certificate keeps being served meanwhile, until its notAfter; after that, the
 * domains get the attested base certificate again until an order succeeds.
 */
export class AcmeCertificates {
  readonly domains: readonly string[];
  readonly challenges: TlsAlpnChallenges;
  readonly #options: AcmeCertificatesOptions;
  readonly #domainSet: ReadonlySet<string>;
  readonly #clock: Clock;
  readonly #random: () => number;
  readonly #backoff: RetryBackoff;
  readonly #wakeUp: WakeUp;
  #current: AcmeServedCertificate | undefined;
  #attempt: Promise<void> | undefined;
  #closed = false;
  #started = false;
  #issued = 0;
  #failures = 0;
  #lastError: string | undefined;
  #expiryLogged = false;
  #document: CachedDocument | undefined;
  #documentFlight: Promise<CachedDocument> | undefined;

  constructor(options: AcmeCertificatesOptions) {
    if (options.domains.length === 0) throw new TlsError('ERR_TLS_ACME_CONFIG', 'ACME needs at least one domain');
    if (!(options.renewAtFraction > 0 && options.renewAtFraction < 1))
      throw new RangeError('renewAtFraction must be between 0 and 1');
    this.#options = options;
    this.domains = options.domains.map(normalizeDomain);
    this.#domainSet = new Set(this.domains);
    this.challenges = options.challenges;
    this.#clock = options.clock ?? systemClock;
    this.#random = options.random ?? Math.random;
    this.#backoff = new RetryBackoff(options.retryMinMs, options.retryMaxMs, this.#random);
    this.#wakeUp = new WakeUp(this.#clock);
    options.fleet?.onShared(() => void this.#adoptShared());
    options.fleet?.onChallenges(() => this.#installSharedChallenges());
    if (options.fleet) this.#installSharedChallenges();
  }

  /**
   * The production wiring: account key from the state dir, optional CA file, acme-client orderer.
   * Nothing is ordered until start(), which must wait for the ingress to listen (the CA connects to it).
   */
  static async open(options: {
    settings: AcmeSettings;
    stateDir: string;
    nsm?: Nsm;
    logger: Logger;
    /** The fleet's account key, used instead of the state dir's. */
    accountKeyPem?: string | undefined;
    fleet?: AcmeFleetLink | undefined;
  }): Promise<AcmeCertificates> {
    const { settings, logger } = options;
    const caPem = settings.caFile ? await readCaFile(settings.caFile) : undefined;
    const accountKeyPem = options.accountKeyPem ?? (await loadAcmeAccountKey(options.stateDir, logger));
    const { AcmeOrderer } = await import('./acme-order.js');
    const challenges = new TlsAlpnChallenges();
    const orderer = new AcmeOrderer({
      directoryUrl: settings.directoryUrl,
      accountKeyPem,
      email: settings.email || undefined,
      domains: settings.domains,
      caPem,
      challenges,
      sharing: options.fleet,
      logger,
    });
    return new AcmeCertificates({
      domains: settings.domains,
      order: (keyPem) => orderer.order(keyPem),
      challenges,
      renewAtFraction: settings.renewAtFraction,
      retryMinMs: settings.retryMinMs,
      retryMaxMs: settings.retryMaxMs,
      logger,
      nsm: options.nsm,
      onClose: () => orderer.close(),
      fleet: options.fleet,
    });
  }

  /** Order the first certificate now (in the background); the attested base serves the domains until then. */
  start(): void {
    if (this.#started || this.#closed) return;
    this.#started = true;
    this.#options.logger.info({ domains: this.domains }, 'ACME: ordering a certificate');
    void this.#run();
  }

  /** Whether `serverName` is one of the ACME domains. */
  covers(serverName: string): boolean {
    return this.#domainSet.has(normalizeDomain(serverName));
  }

  /** The certificate to serve now: undefined before the first issuance and once the last one has expired. */
  get current(): AcmeServedCertificate | undefined {
    const cert = this.#current;
    if (!cert) return undefined;
    if (this.#clock.now() >= cert.notAfter.getTime()) {
      if (!this.#expiryLogged) {
        this.#expiryLogged = true;
        this.#options.logger.error(
          { domains: this.domains, notAfter: cert.notAfter.toISOString() },
          'ACME certificate expired and not renewed; serving the attested base certificate for its domains',
        );
      }
      return undefined;
    }
    return cert;
  }

  /** When the next order or renewal is due (ms since the epoch), if one is scheduled. */
  get nextAttemptAt(): number | undefined {
    return this.#wakeUp.at;
  }

  /** Order a certificate now, whatever the schedule says; concurrent calls share one attempt. */
  renewNow(): Promise<void> {
    return this.#run();
  }

  /**
   * An attestation document whose `user_data` is the DER SPKI of `cert`'s key, so a client on an
   * ACME connection can bind the document to the key it sees. Made once per certificate and
   * remade at two thirds of the document's validity; single flight. With `nonce`, a fresh one carrying it.
   */
  async attestationFor(cert: AcmeServedCertificate, nonce?: Uint8Array): Promise<Uint8Array> {
    const nsm = this.#options.nsm;
    if (!nsm) throw new TlsError('ERR_TLS_ACME_ATTESTATION', 'no NSM to attest the ACME certificate key');
    // A client's nonce makes every document unique: made on request, never cached.
    if (nonce !== undefined && nonce.byteLength > 0) return nsm.attest({ userData: cert.spkiDer, nonce });
    const cached = this.#document;
    if (cached && cached.forCertificate === cert && this.#clock.now() < cached.staleAt) return cached.document;
    this.#documentFlight ??= (async () => {
      const issuedAt = this.#clock.now();
      const document = await nsm.attest({ userData: cert.spkiDer });
      const notAfter = documentSigningCertificateNotAfter(document, issuedAt).getTime();
      return { forCertificate: cert, document, staleAt: issuedAt + ((notAfter - issuedAt) * 2) / 3 };
    })().finally(() => {
      this.#documentFlight = undefined;
    });
    const made = await this.#documentFlight;
    if (made.forCertificate === cert) this.#document = made;
    return made.document;
  }

  /** Where the certificate stands, for health, logs and tests. */
  status(): AcmeStatus {
    const current = this.current;
    let state: AcmeStatus['state'];
    if (this.#closed) state = 'closed';
    else if (!this.#current) state = this.#backoff.failures > 0 ? 'failing' : 'issuing';
    else if (!current) state = 'expired';
    else state = this.#backoff.failures > 0 ? 'failing' : this.#attempt ? 'renewing' : 'valid';
    const next = this.#wakeUp.at;
    return {
      state,
      ordering: this.#attempt !== undefined,
      domains: [...this.domains],
      issued: this.#issued,
      failures: this.#failures,
      consecutiveFailures: this.#backoff.failures,
      ...(this.#current ? { notAfter: this.#current.notAfter.toISOString() } : {}),
      ...(next !== undefined ? { nextAttemptAt: new Date(next).toISOString() } : {}),
      ...(this.#lastError ? { lastError: this.#lastError } : {}),
    };
  }

  /**
   * The `acme` part of GET /health: not ok only when the domains have no valid ACME certificate and
   * the last order failed. The first order (and a failing renewal while the current certificate is
   * valid) do not fail health, so a slow CA cannot get a working enclave restarted.
   */
  health(): { ok: boolean; detail: string; counters: Record<string, number> } {
    const status = this.status();
    const detail = [
      status.state,
      status.notAfter ? `until ${status.notAfter}` : '',
      status.lastError ? `last error: ${status.lastError}` : '',
    ]
      .filter(Boolean)
      .join('; ');
    return {
      ok: !(this.current === undefined && status.consecutiveFailures > 0),
      detail: detail.slice(0, 512),
      counters: { issued: status.issued, failures: status.failures },
    };
  }

  /** Stop scheduling; an order in flight finishes but its certificate is dropped. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wakeUp.cancel();
    this.#options.onClose?.();
  }

  #run(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#attempt ??= this.#orderOnce().finally(() => {
      this.#attempt = undefined;
    });
    return this.#attempt;
  }

  /**
   * Answers the validations the fleet's orderer has pending (the CA may reach this member instead
   * of the orderer), for this member's own domains only; what left the fleet state stops being answered.
   */
  #installSharedChallenges(): void {
    const fleet = this.#options.fleet;
    if (!fleet || this.#closed) return;
    const { installed, rejected } = this.challenges.replaceShared(fleet.sharedChallenges(), this.#domainSet);
    for (const { domain, reason } of rejected)
      this.#options.logger.warn(
        { domain: domain.slice(0, 253), reason },
        "ACME: not answering a fleet peer's challenge",
      );
    if (installed.length > 0)
      this.#options.logger.info({ domains: installed }, "ACME: answering the fleet's pending TLS-ALPN-01 challenges");
  }

  /**
   * Serves the fleet's certificate when it is newer than ours and still valid; schedules its
   * renewal as if it were our own. Returns whether it did.
   */
  #adoptShared(): boolean {
    const fleet = this.#options.fleet;
    const shared = fleet?.shared();
    if (!shared || this.#closed) return false;
    const now = this.#clock.now();
    if (now >= shared.notAfter.getTime()) return false;
    if (this.#current && shared.notAfter.getTime() <= this.#current.notAfter.getTime()) return false;
    let served: AcmeServedCertificate;
    try {
      const leaf = new X509Certificate(shared.certPem);
      const uncovered = this.domains.filter((domain) => leaf.checkHost(domain) === undefined);
      if (uncovered.length > 0) throw new Error(`it does not name ${uncovered.join(', ')}`);
      served = toServed(shared, shared.keyPem);
    } catch (error) {
      this.#options.logger.warn(
        { domains: this.domains, reason: (error as Error).message },
        "ACME: the fleet's certificate is not usable here; ignoring it",
      );
      return false;
    }
    this.#serve(served, 'ACME certificate taken from the fleet');
    return true;
  }

  /** Serves `served` from now on and plans its renewal. */
  #serve(served: AcmeServedCertificate, message: string): void {
    this.#current = served;
    this.#expiryLogged = false;
    this.#lastError = undefined;
    this.#backoff.reset();
    const renewAt = renewalTime(
      served.notBefore.getTime(),
      served.notAfter.getTime(),
      this.#options.renewAtFraction,
      this.#random,
    );
    this.#options.logger.info(
      { domains: this.domains, notAfter: served.notAfter.toISOString(), renewAt: new Date(renewAt).toISOString() },
      message,
    );
    this.#wakeUp.set(renewAt, () => void this.#run());
  }

  async #orderOnce(): Promise<void> {
    this.#wakeUp.cancel();
    const fleet = this.#options.fleet;
    if (fleet) {
      // A peer's certificate newer than ours (and not yet due for renewal) is taken instead of ordering.
      if (this.#adoptShared() && this.#clock.now() < (this.#wakeUp.at ?? 0)) return;
      if (!fleet.mayOrder()) {
        // Another member orders; its certificate arrives by onShared. Look again later in case it never does.
        const delay = this.#options.retryMinMs;
        this.#options.logger.info(
          { domains: this.domains, recheckInMs: delay },
          'ACME: another fleet member orders; waiting for its certificate',
        );
        this.#wakeUp.set(this.#clock.now() + delay, () => void this.#run());
        return;
      }
    }
    try {
      const keyPem = await generateAcmePrivateKeyPem();
      const issued = await this.#options.order(keyPem);
      if (this.#closed) return;
      const served = toServed(issued, keyPem);
      const renewed = this.#current !== undefined;
      this.#issued += 1;
      this.#serve(served, renewed ? 'ACME certificate renewed' : 'ACME certificate now served');
      await fleet
        ?.publish(issued, keyPem)
        .catch((error: unknown) =>
          this.#options.logger.warn(
            { code: errorCode(error), reason: (error as Error).message },
            'ACME: could not hand the certificate to the fleet',
          ),
        );
    } catch (error) {
      if (this.#closed) return;
      this.#failures += 1;
      this.#lastError = error instanceof Error ? error.message : String(error);
      const delay = this.#backoff.next();
      this.#options.logger.warn(
        {
          err: { code: errorCode(error), message: this.#lastError },
          domains: this.domains,
          retryInMs: delay,
          consecutiveFailures: this.#backoff.failures,
          servingUntil: this.#current?.notAfter.toISOString() ?? null,
        },
        this.#current
          ? 'ACME renewal failed; still serving the current certificate'
          : 'ACME order failed; serving the attested base certificate meanwhile',
      );
      this.#wakeUp.set(this.#clock.now() + delay, () => void this.#run());
    }
  }
}

function toServed(issued: AcmeIssued, keyPem: string): AcmeServedCertificate {
  const leaf = new X509Certificate(issued.certPem);
  return {
    certPem: issued.certPem,
    chainPem: issued.chainPem,
    notBefore: issued.notBefore,
    notAfter: issued.notAfter,
    secureContext: createSecureContext({ key: keyPem, cert: issued.certPem + issued.chainPem }),
    spkiDer: new Uint8Array(leaf.publicKey.export({ type: 'spki', format: 'der' })),
  };
}

// A CA bundle is a few certificates; a huge file is a mistake, not a bundle.
const MAX_CA_FILE_BYTES = 1024 * 1024;

async function readCaFile(path: string): Promise<string> {
  let pem: string;
  try {
    pem = await readFile(path, 'utf8');
  } catch (error) {
    throw new TlsError(
      'ERR_TLS_ACME_CONFIG',
      `tls.acme.ca_file: cannot read ${path}: ${errorCode(error) ?? (error as Error).message}`,
      { cause: error },
    );
  }
  if (pem.length > MAX_CA_FILE_BYTES || !pem.includes('-----BEGIN CERTIFICATE-----')) {
    throw new TlsError('ERR_TLS_ACME_CONFIG', `tls.acme.ca_file: ${path} is not a PEM certificate bundle`);
  }
  return pem;
}
