/**
 * The ingress of one worker thread with `ingress.tls_engine = "native"`: the addon's TlsRelay
 * accepts, handshakes, connects the app and relays, with no JS per connection or chunk. This file
 * only hands it certificates (the base one, and a nonce one when a handshake asks), turns its
 * events into log lines, and stops it. Counters are written by the addon into the worker's shared
 * stats buffer, at the same slots the Node engine uses.
 */
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { DEFAULT_CIPHERS } from 'node:tls';
import { getSystemErrorName } from 'node:util';
import { errorCode, RuntimeError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { DURATION_BUCKETS } from '../metrics/registry.js';
import type { Address } from '../net/address.js';
import {
  loadNative,
  TlsRelayEvent,
  type NativeTlsCredentials,
  type NativeTlsRelay,
  type NativeTlsRelayOptions,
} from '../native/native-binding.js';
import { chooseNonceCertificate, type NonceCertificates } from '../tls/nonce-certificate-choice.js';
import { NonceFlights } from '../tls/nonce-flights.js';
import { TlsError } from '../tls/tls-error.js';
import type { IngressSettings, IngressStats } from './ingress.js';
import {
  sharedIngressStats,
  STAT_SLOTS,
  type CertificateSnapshot,
  type WorkerTlsSettings,
} from './ingress-worker-protocol.js';

/** How often the open-connection count is read for the heap trimmer and refusals are logged. */
const WATCH_INTERVAL_MS = 1000;
/** How often stop() looks whether the connections drained. */
const DRAIN_POLL_MS = 50;

export interface NativeTlsIngressOptions {
  /** This worker's duplicate of the listening fd; owned by the relay once start() resolves. */
  fd: number;
  settings: IngressSettings;
  tls: WorkerTlsSettings;
  logger: Logger;
  /** The worker's shared stats buffer. */
  slots: Float64Array;
  /** Shared with the sibling workers, so that a burst of connections is not all accepted by one. */
  balance?: NativeTlsRelayOptions['balance'];
  /** Asks the main thread for the certificate of `nonce` (it keeps the one cache and single flight). */
  ask: (nonce: Uint8Array) => Promise<CertificateSnapshot>;
  onConnectionCount?: ((open: number) => void) | undefined;
}

/** A nonce certificate as the native engine serves it. */
interface NonceCredentials {
  credentials: NativeTlsCredentials;
  issuedAt: Date;
  expiresAt: Date;
}

/** ALPN names in wire format: each prefixed with its length. */
export function alpnWire(protocols: readonly string[]): Buffer {
  return Buffer.concat(
    protocols.map((protocol) => {
      const name = Buffer.from(protocol, 'latin1');
      return Buffer.concat([Buffer.of(name.length), name]);
    }),
  );
}

/** The app's address as the addon connects to it: an IP (a host name is resolved once, here) or a path. */
async function appTarget(app: Address): Promise<NativeTlsRelayOptions['app']> {
  if (app.transport === 'unix') return { path: app.path };
  if (app.transport === 'vsock')
    throw new RuntimeError(
      'ERR_INGRESS_WORKER',
      'ingress.tls_engine = "native" connects the app over tcp or unix only',
    );
  const ip = isIP(app.host) ? app.host : (await lookup(app.host)).address;
  return { ip, port: app.port };
}

export class NativeTlsIngress {
  readonly stats: IngressStats;
  readonly address: Address;
  readonly #relay: NativeTlsRelay;
  readonly #options: NativeTlsIngressOptions;
  readonly #flights: NonceFlights<NonceCredentials>;
  readonly #nonceCertificates: NonceCertificates<NonceCredentials>;
  readonly #closed: Promise<void>;
  readonly #watch: NodeJS.Timeout;
  #base: { keyPem: string; credentials: NativeTlsCredentials };
  #stopping = false;
  #refusalsLogged = 0;

  private constructor(options: NativeTlsIngressOptions, app: NativeTlsRelayOptions['app']) {
    this.#options = options;
    this.address = options.settings.listen;
    this.stats = sharedIngressStats(options.slots);
    this.#flights = new NonceFlights<NonceCredentials>(options.tls.nonceCacheSize, options.tls.maxPendingIssues);
    this.#nonceCertificates = {
      encoding: options.tls.sniNonceEncoding,
      logger: options.logger,
      peek: (nonce) => this.#flights.peek(nonce),
      fetch: (nonce) =>
        this.#flights.get(
          nonce,
          () => this.#fetch(nonce),
          () => !this.#stopping,
        ),
    };
    const native = loadNative();
    const base = options.tls.base;
    this.#base = {
      keyPem: base.keyPem,
      credentials: parseCredentials(base.certPem, base.chainPem, base.keyPem),
    };
    const [ciphersuites, ciphers] = splitCiphers(DEFAULT_CIPHERS);
    let closed!: () => void;
    this.#closed = new Promise((resolve) => (closed = resolve));
    this.#relay = new native.TlsRelay(
      options.fd,
      {
        app,
        alpn: alpnWire(options.tls.alpn),
        ciphers,
        ciphersuites,
        nonceMarker: '.attest.',
        firstByte: options.settings.appConnect === 'first-byte',
        handshakeTimeoutMs: options.tls.handshakeTimeoutMs,
        idleTimeoutMs: options.settings.idleTimeoutMs,
        connectTimeoutMs: options.settings.connectTimeoutMs,
        maxConnections: options.settings.maxConnections,
        buckets: DURATION_BUCKETS,
        balance: options.balance,
        slots: {
          accepted: STAT_SLOTS.ingress.accepted,
          active: STAT_SLOTS.ingress.active,
          refusedOverCap: STAT_SLOTS.ingress.refusedOverCap,
          appUnreachable: STAT_SLOTS.ingress.appUnreachable,
          handshakesOk: STAT_SLOTS.handshakesOk,
          handshakesFailed: STAT_SLOTS.handshakesFailed,
          handshakeSum: STAT_SLOTS.handshakeSum,
          handshakeCount: STAT_SLOTS.handshakeCount,
          handshakeBuckets: STAT_SLOTS.handshakeBuckets,
        },
      },
      options.slots,
      (type, a, b) => this.#onEvent(type, a as number, b, closed),
    );
    if (!this.#relay.setBase(this.#base.credentials)) {
      this.#relay.close();
      throw new TlsError('ERR_TLS_CREDENTIALS', 'OpenSSL refused the base certificate and key');
    }
    this.#watch = setInterval(() => this.#look(), WATCH_INTERVAL_MS);
    this.#watch.unref();
  }

  /**
   * Starts accepting on `options.fd`. A throw before the relay exists (bad app address, bad base
   * credentials) leaves the fd to the caller; the relay's own refusal of the base closes it.
   */
  static async start(options: NativeTlsIngressOptions): Promise<NativeTlsIngress> {
    const ingress = new NativeTlsIngress(options, await appTarget(options.settings.app));
    ingress.#relay.start();
    return ingress;
  }

  /** The main thread renewed its base certificate (perhaps with a new key). */
  replaceBase(snapshot: CertificateSnapshot): void {
    const newKey = snapshot.keyPem !== this.#base.keyPem;
    let credentials: NativeTlsCredentials;
    try {
      credentials = parseCredentials(
        snapshot.certPem,
        snapshot.chainPem,
        newKey ? snapshot.keyPem : this.#base.credentials,
      );
      if (!this.#relay.setBase(credentials))
        throw new TlsError('ERR_TLS_CREDENTIALS', 'OpenSSL refused the renewed base certificate and key');
    } catch (error) {
      // The old base is still valid for a third of its life: keep serving it, and say so.
      this.#options.logger.error(
        { code: errorCode(error), reason: (error as Error).message },
        'the native TLS engine could not take the renewed base certificate; serving the previous one',
      );
      return;
    }
    this.#base = { keyPem: snapshot.keyPem, credentials };
    // Nonce leaves of the old key could not be served with the new one.
    if (newKey) this.#flights.clear();
  }

  /** Stops accepting, waits up to `graceMs` for open connections to finish, then cuts the rest. */
  async stop(graceMs: number): Promise<void> {
    if (this.#stopping) return this.#closed;
    this.#stopping = true;
    clearInterval(this.#watch);
    this.#relay.stopAccepting();
    const deadline = performance.now() + graceMs;
    if (this.stats.active > 0) this.#options.logger.info({ open: this.stats.active, graceMs }, 'ingress draining');
    while (this.stats.active > 0 && performance.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, Math.min(DRAIN_POLL_MS, deadline - performance.now())));
    }
    this.#flights.clear();
    this.#relay.close();
    return this.#closed;
  }

  #look(): void {
    this.#options.onConnectionCount?.(this.stats.active);
    const refused = this.stats.refusedOverCap;
    if (refused > this.#refusalsLogged) {
      this.#options.logger.warn(
        { maxConnections: this.#options.settings.maxConnections, refused: refused - this.#refusalsLogged },
        'ingress at ingress.max_connections; connections closed',
      );
      this.#refusalsLogged = refused;
    }
  }

  #onEvent(type: number, a: number, b: unknown, closed: () => void): void {
    switch (type) {
      case TlsRelayEvent.Certificate:
        this.#certificateFor(a, String(b));
        return;
      case TlsRelayEvent.AppUnreachable:
        this.#options.logger.warn(
          { app: this.#options.settings.app, code: errnoCode(a) },
          'app unreachable; closing the ingress connection',
        );
        return;
      case TlsRelayEvent.AcceptPaused:
        this.#options.logger.warn({ code: errnoCode(a) }, 'ingress cannot accept (out of fds or memory); retrying');
        return;
      case TlsRelayEvent.Closed:
        closed();
        return;
    }
  }

  /** Answers a handshake that asked for `<nonce>.attest.<host>`: synchronously from the cache, else once fetched. */
  #certificateFor(id: number, serverName: string): void {
    chooseNonceCertificate(serverName, this.#nonceCertificates, (cert) =>
      this.#relay.provide(id, cert?.credentials ?? null),
    );
  }

  async #fetch(nonce: Uint8Array): Promise<NonceCredentials> {
    const snapshot = await this.#options.ask(nonce);
    const key = snapshot.keyPem === this.#base.keyPem ? this.#base.credentials : snapshot.keyPem;
    const credentials = parseCredentials(snapshot.certPem, snapshot.chainPem, key);
    return { credentials, issuedAt: new Date(snapshot.issuedAt), expiresAt: new Date(snapshot.expiresAt) };
  }
}

/** The addon's credentials of a certificate; a nonce leaf passes the base credentials for their key. */
function parseCredentials(certPem: string, chainPem: string, key: string | NativeTlsCredentials): NativeTlsCredentials {
  try {
    return new (loadNative().TlsCredentials)(certPem, chainPem, key);
  } catch (error) {
    throw new TlsError('ERR_TLS_CREDENTIALS', (error as Error).message, { cause: error });
  }
}

/** Node's default cipher string split as OpenSSL takes it: TLS 1.3 suites, then the TLS 1.2 list. */
function splitCiphers(list: string): [string, string] {
  const names = list.split(':');
  return [
    names.filter((name) => name.startsWith('TLS_')).join(':'),
    names.filter((name) => !name.startsWith('TLS_')).join(':'),
  ];
}

function errnoCode(errno: number): string {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `E${errno}`;
  }
}
