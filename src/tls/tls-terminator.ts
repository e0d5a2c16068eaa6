import type { Duplex } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import { decodeCoseSign1 } from '../verify/cose-sign1.js';
import { decodeAttestationPayload } from '../verify/document.js';
import type { Nsm } from '../attestation/nsm.js';
import type { Logger } from '../core/log.js';
import type { AcmeCertificates, AcmeServedCertificate } from './acme-certificates.js';
import type { AttestedCertificate } from './attested-certificate.js';
import type { CertificateSource } from './certificate-source.js';
import { CertificateStore, type CertificateStoreStats } from './certificate-store.js';
import { chooseNonceCertificate, type NonceCertificates } from './nonce-certificate-choice.js';
import type { SniNonceEncoding } from './nonce-label.js';
import { ACME_TLS_ALPN_PROTOCOL } from './tls-alpn-challenges.js';
import { TlsError } from './tls-error.js';
import { errorCode } from '../core/errors.js';

// The bytes are relayed to the app, not translated: offer h2 only when the app speaks it (tls.alpn).
export const DEFAULT_ALPN: readonly string[] = ['http/1.1'];
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;

export interface TlsTerminatorOptions {
  nsm: Nsm;
  stateDir: string;
  serverName: string;
  sniNonceEncoding: SniNonceEncoding;
  nonceCacheSize: number;
  logger: Logger;
  /** ALPN offered to clients, in server preference order. Default h2, then http/1.1. */
  alpn?: string[];
  /** Who signs the leaves; default the state dir's own CA (`tls.source = "self"`). */
  source?: CertificateSource;
  /** A handshake not finished by then is aborted. Default 10 s. */
  handshakeTimeoutMs?: number;
  /** How long one handshake waits for its nonce certificate before getting the base one. */
  issueTimeoutMs?: number;
  /** Distinct nonces issued at once; beyond that, handshakes get the base certificate. */
  maxPendingIssues?: number;
  /** The clock in ms since the epoch; tests move it. */
  now?: () => number;
  /** Certificates from an ACME CA for custom domains, and their pending TLS-ALPN-01 answers. */
  acme?: AcmeCertificates | undefined;
}

/**
 * What the terminator needs of its certificates: a CertificateStore, or an ingress worker thread's
 * view of the main thread's store (one issuance per nonce however many threads handshake).
 */
export type CertificateProvider = Pick<CertificateStore, 'base' | 'peek' | 'forNonce' | 'stats' | 'close'>;

/** Which certificate one connection was given, for GET /.well-known/attestation on it. */
type Served = { kind: 'attested'; cert: AttestedCertificate } | { kind: 'acme'; cert: AcmeServedCertificate };

interface Connection {
  served: Served;
  /** Resolves true once the handshake is done and application data may flow; false otherwise. */
  established: Promise<boolean>;
}

/**
 * Terminates TLS with attested certificates on any Duplex the ingress hands over (TCP, vsock,
 * unix). The handshake picks the certificate from SNI: a configured ACME domain gets the ACME
 * certificate (the base one until it is issued), `<nonce>.attest.<host>` one whose document
 * carries the nonce, anything else the base one. A TLS-ALPN-01 validation (ALPN `acme-tls/1` for
 * a domain with a pending challenge) gets the challenge certificate and is closed after the
 * handshake. The caller pipes the returned TLSSocket to the app; the decrypted bytes are not touched.
 */
export class TlsTerminator<S extends CertificateProvider = CertificateStore> {
  readonly store: S;
  readonly source: CertificateSource;
  readonly #logger: Logger;
  readonly #nonceCertificates: NonceCertificates<AttestedCertificate>;
  readonly #alpn: string[];
  readonly #handshakeTimeoutMs: number;
  readonly #ownsSource: boolean;
  readonly #acme: AcmeCertificates | undefined;
  readonly #nsm: Nsm;
  readonly #connections = new WeakMap<Duplex, Connection>();

  private constructor(options: TlsTerminatorOptions, store: S, source: CertificateSource, ownsSource: boolean) {
    this.store = store;
    this.source = source;
    this.#logger = options.logger;
    this.#nonceCertificates = {
      encoding: options.sniNonceEncoding,
      logger: options.logger,
      peek: (nonce) => store.peek(nonce),
      fetch: (nonce) => store.forNonce(nonce),
    };
    this.#alpn = [...(options.alpn ?? DEFAULT_ALPN)];
    this.#handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.#ownsSource = ownsSource;
    this.#acme = options.acme;
    this.#nsm = options.nsm;
  }

  /** Open the certificate source and make the first base certificate; fails if the NSM cannot attest. */
  static async create(options: TlsTerminatorOptions): Promise<TlsTerminator> {
    // Imported here, not at the top: the CA pulls in @peculiar/x509, which an ingress worker
    // thread (withCertificates) never needs and would otherwise load and compile at start.
    const source =
      options.source ??
      (await (
        await import('./certificate-source.js')
      ).openSelfCertificateSource(options.stateDir, {
        logger: options.logger,
        ...(options.now ? { now: options.now } : {}),
      }));
    const store = await CertificateStore.create({
      nsm: options.nsm,
      source,
      serverName: options.serverName,
      sniNonceEncoding: options.sniNonceEncoding,
      logger: options.logger,
      nonceCacheSize: options.nonceCacheSize,
      ...(options.maxPendingIssues === undefined ? {} : { maxPendingIssues: options.maxPendingIssues }),
      ...(options.issueTimeoutMs === undefined ? {} : { issueTimeoutMs: options.issueTimeoutMs }),
      ...(options.now ? { now: options.now } : {}),
    });
    return new TlsTerminator(options, store, source, options.source === undefined);
  }

  /**
   * A terminator serving `store`'s certificates (made elsewhere: an ingress worker's come from the
   * main thread); `options.source` only answers trustAnchorPem and is not closed here.
   */
  static withCertificates<P extends CertificateProvider>(
    options: Omit<TlsTerminatorOptions, 'stateDir' | 'nonceCacheSize' | 'serverName' | 'source'> & {
      source: CertificateSource;
    },
    store: P,
  ): TlsTerminator<P> {
    return new TlsTerminator<P>(
      { ...options, stateDir: '', nonceCacheSize: 1, serverName: '' },
      store,
      options.source,
      false,
    );
  }

  /** PEM of the CA that signs the leaves, when the source has a private one (dev clients pin it). */
  get trustAnchorPem(): string | undefined {
    return this.source.trustAnchorPem;
  }

  /** Server-side TLS over `transport`. Errors are logged here, so an unhandled handshake failure cannot crash the process. */
  wrap(transport: Duplex): TLSSocket {
    const acme = this.#acme;
    const connection: Connection = {
      served: { kind: 'attested', cert: this.store.base },
      established: Promise.resolve(false),
    };
    let validation = false;
    const socket = new TLSSocket(transport, {
      isServer: true,
      secureContext: connection.served.cert.secureContext,
      SNICallback: (servername, callback) => {
        const challenge = validation ? acme?.challenges.contextFor(servername) : undefined;
        if (challenge) callback(null, challenge);
        else this.#selectContext(servername, connection, callback);
      },
      // OpenSSL asks for ALPN before SNI, so this is where a TLS-ALPN-01 validation is recognised.
      // Both ways refuse a client with no protocol in common (no_application_protocol alert).
      ...(acme
        ? {
            ALPNCallback: ({ servername, protocols }: { servername: string; protocols: string[] }) => {
              if (protocols.includes(ACME_TLS_ALPN_PROTOCOL) && servername && acme.challenges.contextFor(servername)) {
                validation = true;
                return ACME_TLS_ALPN_PROTOCOL;
              }
              return this.#alpn.find((protocol) => protocols.includes(protocol));
            },
          }
        : { ALPNProtocols: this.#alpn }),
      requestCert: false,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy(
        new TlsError('ERR_TLS_HANDSHAKE_TIMEOUT', `TLS handshake not done within ${this.#handshakeTimeoutMs} ms`),
      );
    }, this.#handshakeTimeoutMs);
    timer.unref();
    let secured = false;
    let settle!: (established: boolean) => void;
    connection.established = new Promise<boolean>((resolve) => (settle = resolve));
    // One listener per event: these run for every connection, on the handshake's critical path.
    socket.once('secure', () => {
      secured = true;
      clearTimeout(timer);
      if (!validation) return settle(true);
      // RFC 8737: the validator only looks at the certificate; nothing is exchanged after the handshake.
      this.#logger.info(
        { sni: (socket as TLSSocket & { servername?: string | false }).servername || undefined },
        'answered an ACME TLS-ALPN-01 validation',
      );
      socket.end();
      settle(false);
    });
    socket.once('close', () => {
      clearTimeout(timer);
      settle(false);
    });
    // A peer that half-closes before finishing the handshake never will; over a half-open
    // transport (byte-exact ingress) nothing else would close this side before the timeout.
    socket.once('end', () => {
      if (!secured) socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.#logger.debug({ code: err.code, message: err.message }, 'TLS connection error');
    });
    this.#connections.set(socket, connection);
    return socket;
  }

  /**
   * Resolves true once `client` (returned by wrap) has finished its handshake and carries data for
   * the app; false when the handshake failed or timed out, or the connection was an ACME
   * validation answered here. The ingress connects to the app only after true.
   */
  established(client: Duplex): Promise<boolean> {
    return this.#connections.get(client)?.established ?? Promise.resolve(false);
  }

  /**
   * The attestation document for GET /.well-known/attestation on `client`: that of the attested
   * certificate it was served (its nonce included), or for an ACME connection one whose `user_data`
   * is the ACME key's SPKI; the base document when neither can be had. With `nonce`
   * (`?nonce=HEX`), a fresh document carrying it and binding the key of the certificate served on
   * this connection; that one has no fallback: it fails rather than answer without the nonce.
   */
  async attestationFor(client: Duplex, nonce?: Uint8Array): Promise<Uint8Array> {
    const served = this.#connections.get(client)?.served;
    if (nonce !== undefined && nonce.byteLength > 0) {
      if (served?.kind === 'acme' && this.#acme) return this.#acme.attestationFor(served.cert, nonce);
      const cert = served?.kind === 'attested' ? served.cert : this.store.base;
      // The served document's user_data is its certificate's SPKI (createAttestedCertificate).
      const spki = decodeAttestationPayload(decodeCoseSign1(cert.document).payload).userData;
      if (spki === null)
        throw new TlsError('ERR_TLS_WELL_KNOWN', 'the served certificate has no key binding to repeat');
      return this.#nsm.attest({ userData: spki, nonce });
    }
    if (served?.kind === 'attested') return served.cert.document;
    if (served?.kind === 'acme' && this.#acme) {
      try {
        return await this.#acme.attestationFor(served.cert);
      } catch (err) {
        this.#logger.warn(
          { err: { code: errorCode(err), message: (err as Error).message } },
          'could not attest the ACME certificate key; answering with the base document',
        );
      }
    }
    return this.store.base.document;
  }

  stats(): CertificateStoreStats {
    return this.store.stats();
  }

  /** Stop renewal timers (and close the source if this terminator opened it). */
  async close(): Promise<void> {
    this.store.close();
    if (this.#ownsSource) await this.source.close();
  }

  #selectContext(
    servername: string,
    connection: Connection,
    callback: (err: Error | null, ctx?: SecureContext) => void,
  ): void {
    const serveAttested = (cert: AttestedCertificate) => {
      connection.served = { kind: 'attested', cert };
      cert.handOver(callback);
    };
    if (this.#acme?.covers(servername)) {
      const acme = this.#acme.current;
      if (acme) {
        connection.served = { kind: 'acme', cert: acme };
        callback(null, acme.secureContext);
      } else {
        // Not issued yet (or expired): the attested base keeps the domain reachable for attested clients.
        serveAttested(this.store.base);
      }
      return;
    }
    chooseNonceCertificate(servername, this.#nonceCertificates, (cert) => serveAttested(cert ?? this.store.base));
  }
}
