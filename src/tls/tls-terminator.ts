import type { Duplex } from 'node:stream';
import { TLSSocket, type SecureContext } from 'node:tls';
import type { Nsm } from '../attestation/nsm.js';
import type { Logger } from '../log.js';
import type { CertificateSource } from './certificate-source.js';
import { openSelfCertificateSource } from './certificate-source.js';
import { CertificateStore, type CertificateStoreStats } from './certificate-store.js';
import { parseNonceServerName, type SniNonceEncoding } from './nonce-label.js';
import { TlsError } from './tls-error.js';

export const DEFAULT_ALPN: readonly string[] = ['h2', 'http/1.1'];
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
// SNI is at most 255 bytes on the wire, but only a prefix is useful in a log line.
const LOGGED_SNI_MAX = 96;

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
}

/**
 * Terminates TLS with attested certificates on any Duplex the ingress hands over (TCP, vsock,
 * unix). The handshake picks the certificate from SNI: `<nonce>.attest.<host>` gets one whose
 * document carries the nonce, anything else the base one. The caller pipes the returned TLSSocket
 * to the app; the decrypted bytes are not touched.
 */
export class TlsTerminator {
  readonly store: CertificateStore;
  readonly source: CertificateSource;
  readonly #logger: Logger;
  readonly #encoding: SniNonceEncoding;
  readonly #alpn: string[];
  readonly #handshakeTimeoutMs: number;
  readonly #ownsSource: boolean;

  private constructor(options: TlsTerminatorOptions, store: CertificateStore, source: CertificateSource, ownsSource: boolean) {
    this.store = store;
    this.source = source;
    this.#logger = options.logger;
    this.#encoding = options.sniNonceEncoding;
    this.#alpn = [...(options.alpn ?? DEFAULT_ALPN)];
    this.#handshakeTimeoutMs = options.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    this.#ownsSource = ownsSource;
  }

  /** Open the certificate source and make the first base certificate; fails if the NSM cannot attest. */
  static async create(options: TlsTerminatorOptions): Promise<TlsTerminator> {
    const source = options.source ?? (await openSelfCertificateSource(options.stateDir, { logger: options.logger, ...(options.now ? { now: options.now } : {}) }));
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

  /** PEM of the CA that signs the leaves, when the source has a private one (dev clients pin it). */
  get trustAnchorPem(): string | undefined {
    return this.source.trustAnchorPem;
  }

  /** Server-side TLS over `transport`. Errors are logged here, so an unhandled handshake failure cannot crash the process. */
  wrap(transport: Duplex): TLSSocket {
    const socket = new TLSSocket(transport, {
      isServer: true,
      secureContext: this.store.base.secureContext,
      SNICallback: (servername, callback) => this.#selectContext(servername, callback),
      ALPNProtocols: this.#alpn,
      requestCert: false,
      rejectUnauthorized: false,
    });
    const timer = setTimeout(() => {
      socket.destroy(new TlsError('ERR_TLS_HANDSHAKE_TIMEOUT', `TLS handshake not done within ${this.#handshakeTimeoutMs} ms`));
    }, this.#handshakeTimeoutMs);
    timer.unref();
    let secured = false;
    socket.once('secure', () => {
      secured = true;
      clearTimeout(timer);
    });
    socket.once('close', () => clearTimeout(timer));
    // A peer that half-closes before finishing the handshake never will; over a half-open
    // transport (byte-exact ingress) nothing else would close this side before the timeout.
    socket.once('end', () => {
      if (!secured) socket.destroy();
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      this.#logger.debug({ code: err.code, message: err.message }, 'TLS connection error');
    });
    return socket;
  }

  /** The body of GET /.well-known/attestation: the base certificate's document. */
  wellKnownAttestation(): { attestation_doc: string } {
    return { attestation_doc: Buffer.from(this.store.base.document).toString('base64') };
  }

  stats(): CertificateStoreStats {
    return this.store.stats();
  }

  /** Stop renewal timers (and close the source if this terminator opened it). */
  async close(): Promise<void> {
    this.store.close();
    if (this.#ownsSource) await this.source.close();
  }

  #selectContext(servername: string, callback: (err: Error | null, ctx?: SecureContext) => void): void {
    const request = parseNonceServerName(servername, this.#encoding);
    if (request.kind === 'base') {
      callback(null, this.store.base.secureContext);
      return;
    }
    if (request.kind === 'invalid') {
      this.#logger.debug({ sni: servername.slice(0, LOGGED_SNI_MAX), reason: request.reason }, 'SNI nonce label does not decode; serving the base certificate');
      callback(null, this.store.base.secureContext);
      return;
    }
    const cached = this.store.peek(request.nonce);
    if (cached) {
      callback(null, cached.secureContext);
      return;
    }
    this.store.forNonce(request.nonce).then(
      (cert) => callback(null, cert.secureContext),
      // The store has logged the cause; the client gets a document without its nonce and can tell.
      () => callback(null, this.store.base.secureContext),
    );
  }
}
