import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from '../core/log.js';
import { formatAddress, type Address } from '../net/address.js';
import { encodeProxyHeader, readProxyHeader, type ProxyHeader } from '../net/proxy-protocol.js';
import { relay } from '../net/relay.js';
import { peekStream } from '../net/stream-peek.js';
import { connect, listen, type Listener, type TransportSocket } from '../net/transport.js';
import {
  answerWellKnown,
  readFirstRequest,
  wellKnownErrorResponse,
  wellKnownResponse,
} from './well-known-attestation.js';
import { errorCode } from '../core/errors.js';

/** Turns the raw transport stream into the stream whose bytes go to the app (TLS termination). */
export interface StreamTerminator {
  wrap(socket: Duplex): Duplex;
  /** Resolves true once the wrapped stream may go to the app (handshake done); false to close it unrelayed. */
  established?(client: Duplex): Promise<boolean>;
  /** The attestation document GET /.well-known/attestation answers with on this wrapped stream (a fresh one carrying `nonce` when given). */
  attestationFor?(client: Duplex, nonce?: Uint8Array): Promise<Uint8Array>;
}

/** The ingress keys of enclave.toml, as the bridge uses them. */
export interface IngressSettings {
  listen: Address;
  app: Address;
  proxyProtocol: 'off' | 'v1' | 'v2' | 'any';
  sendProxyProtocol: 'off' | 'v1' | 'v2';
  maxConnections: number;
  /**
   * 'eager' connects the app as soon as the connection is accepted (after the handshake), as
   * server-first protocols need; 'first-byte' waits for the client's first byte (at most
   * idleTimeoutMs), so an idle connection holds no app socket. Default 'eager'.
   */
  appConnect?: 'eager' | 'first-byte';
  /**
   * 'native': the addon's TLS relay in each worker thread (native-tls-ingress.ts) instead of this class;
   * anything else is this class ('auto' is decided by the runtime before: tls-engine.ts).
   */
  tlsEngine?: 'auto' | 'node' | 'native';
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  proxyHeaderTimeoutMs: number;
  /** Answer GET /.well-known/attestation when it is a connection's first request (needs a terminator with attestationFor). */
  httpAware?: boolean;
  /** With httpAware: bytes and time the first request head may take before the connection goes on as it is. */
  httpHeadMaxBytes?: number;
  httpHeadTimeoutMs?: number;
}

export interface IngressOptions extends IngressSettings {
  logger: Logger;
  /** What the start-up line calls this listener (default "ingress"; the host's relays reuse the bridge). */
  name?: string;
  terminator?: StreamTerminator | undefined;
  /** Told the open-connection count on every open and close (the runtime trims the C heap after many close). */
  onConnectionCount?: ((open: number) => void) | undefined;
  /** Listens instead of listening on `listen` (an ingress worker adopts its copy of the shared listener). */
  listener?: ((onConnection: (socket: TransportSocket) => void) => Promise<Listener>) | undefined;
  /** The counters to update (an ingress worker's live in memory the main thread reads). */
  stats?: IngressStats | undefined;
}

export interface IngressStats {
  accepted: number;
  active: number;
  refusedOverCap: number;
  appUnreachable: number;
  badProxyHeader: number;
  /** GET /.well-known/attestation requests answered by the ingress itself. */
  wellKnownAnswered: number;
}

/** The listen(2) queue of the ingress socket, shared by its worker threads when there are several. */
export const INGRESS_BACKLOG = 1024;
/** What health and metrics read of the ingress, whether one Ingress or several worker threads. */
export interface IngressView {
  readonly listening: boolean;
  readonly stats: IngressStats;
  /** With worker threads: how many accept now, of how many. */
  readonly workers?: { up: number; total: number };
}

/** Refusals over the cap are logged at most this often, so a flood cannot flood the log too. */
const CAP_LOG_INTERVAL_MS = 1000;
/**
 * HTTP-aware ingress waits at most this long (and never past idle_timeout_ms) for the first request
 * to show whether it is GET /.well-known/attestation; then the connection goes to the app as it is.
 * Waiting costs nothing for HTTP: the app has nothing to say before the request arrives anyway.
 */
const FIRST_REQUEST_TIMEOUT_MS = 30_000;
/** After the well-known answer, how long the client may take to close before it is cut. */
const WELL_KNOWN_LINGER_MS = 5000;

/** Parent -> enclave -> app: accepts on `listen`, connects to `app`, relays both ways. */
export class Ingress {
  readonly stats: IngressStats;
  readonly #options: IngressOptions;
  readonly #connections = new Set<Duplex>();
  readonly #drained = new Set<() => void>();
  #listener: Listener | undefined;
  #lastCapLog = 0;
  #capSuppressed = 0;

  private constructor(options: IngressOptions) {
    this.#options = options;
    this.stats = options.stats ?? {
      accepted: 0,
      active: 0,
      refusedOverCap: 0,
      appUnreachable: 0,
      badProxyHeader: 0,
      wellKnownAnswered: 0,
    };
  }

  /** Starts listening; resolves once the address is bound. */
  static async start(options: IngressOptions): Promise<Ingress> {
    const ingress = new Ingress(options);
    const onConnection = (socket: TransportSocket) => ingress.#accept(socket);
    ingress.#listener = options.listener
      ? await options.listener(onConnection)
      : await listen(options.listen, onConnection, { backlog: INGRESS_BACKLOG });
    options.logger.info(
      { listen: formatAddress(ingress.#listener.address), app: formatAddress(options.app) },
      `${options.name ?? 'ingress'} listening`,
    );
    return ingress;
  }

  /** The bound address (with the real port when 0 was asked for). */
  get address(): Address {
    if (!this.#listener) throw new Error('ingress is not listening');
    return this.#listener.address;
  }

  get listening(): boolean {
    return this.#listener !== undefined;
  }

  /** Stops accepting, waits up to `graceMs` for open connections to finish, then cuts the rest. */
  async stop(graceMs: number): Promise<void> {
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.close();
    if (this.#connections.size > 0) {
      this.#options.logger.info({ open: this.#connections.size, graceMs }, 'ingress draining');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceMs);
        this.#drained.add(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    for (const socket of this.#connections) socket.destroy();
  }

  #accept(socket: TransportSocket): void {
    const { logger, maxConnections } = this.#options;
    if (this.#connections.size >= maxConnections) {
      this.stats.refusedOverCap++;
      socket.destroy();
      this.#logCapRefusal(logger, maxConnections);
      return;
    }
    this.stats.accepted++;
    this.#connections.add(socket);
    this.stats.active = this.#connections.size;
    this.#options.onConnectionCount?.(this.#connections.size);
    // Until relay() owns the socket, an early reset must not become an uncaught 'error'.
    socket.on('error', () => {});
    socket.once('close', () => {
      this.#connections.delete(socket);
      this.stats.active = this.#connections.size;
      this.#options.onConnectionCount?.(this.#connections.size);
      if (this.#connections.size === 0) for (const done of this.#drained) done();
    });
    this.#serve(socket).catch((error: Error) => {
      logger.error({ err: { message: error.message, code: errorCode(error) } }, 'ingress connection failed');
      socket.destroy();
    });
  }

  async #serve(socket: TransportSocket): Promise<void> {
    const options = this.#options;
    let header: ProxyHeader | undefined;
    if (options.proxyProtocol !== 'off') {
      try {
        // The default bound is the largest header the parser accepts (a v2 header with a 1 KiB payload).
        const read = await readProxyHeader(socket, options.proxyProtocol, { timeoutMs: options.proxyHeaderTimeoutMs });
        header = read.header;
        if (read.rest.length > 0) socket.unshift(read.rest);
      } catch (error) {
        this.stats.badProxyHeader++;
        options.logger.warn(
          { reason: (error as Error).message },
          'ingress refused a connection: bad PROXY protocol header',
        );
        socket.destroy();
        return;
      }
    }

    const terminator = options.terminator;
    const client = terminator ? terminator.wrap(socket) : socket;
    if (client !== socket) client.on('error', () => {});
    // The app is connected only once the handshake is done: a failed handshake or an ACME
    // validation answered by the terminator never reaches it.
    if (terminator?.established && !(await terminator.established(client))) {
      client.destroy();
      socket.destroy();
      return;
    }
    if (options.httpAware && terminator?.attestationFor) {
      const first = await readFirstRequest(client, {
        timeoutMs: Math.min(options.httpHeadTimeoutMs ?? FIRST_REQUEST_TIMEOUT_MS, options.idleTimeoutMs),
        ...(options.httpHeadMaxBytes === undefined ? {} : { maxBytes: options.httpHeadMaxBytes }),
      });
      if (typeof first === 'object') {
        let response: Buffer;
        if ('error' in first) response = wellKnownErrorResponse(first.error, first.field);
        else {
          try {
            response = wellKnownResponse(await terminator.attestationFor(client, first.nonce));
          } catch (error) {
            options.logger.warn(
              { code: errorCode(error), message: (error as Error).message },
              'could not attest for GET /.well-known/attestation',
            );
            client.destroy();
            socket.destroy();
            return;
          }
        }
        this.stats.wellKnownAnswered++;
        await answerWellKnown(client, response, WELL_KNOWN_LINGER_MS);
        socket.destroy();
        return;
      }
      if (first === 'closed') {
        client.destroy();
        socket.destroy();
        return;
      }
    }
    if (options.appConnect === 'first-byte' && !(await firstByte(client, options.idleTimeoutMs))) {
      client.destroy();
      socket.destroy();
      return;
    }
    let app: TransportSocket;
    try {
      app = await connect(options.app, { timeoutMs: options.connectTimeoutMs });
    } catch (error) {
      this.stats.appUnreachable++;
      const code = errorCode(error) ?? (error as Error).message;
      options.logger.warn({ app: formatAddress(options.app), code }, 'app unreachable; closing the ingress connection');
      client.destroy();
      socket.destroy();
      return;
    }
    if (socket.destroyed) {
      app.destroy();
      return;
    }
    if (options.sendProxyProtocol !== 'off') {
      app.write(encodeProxyHeader(options.sendProxyProtocol === 'v1' ? 1 : 2, proxyInfo(header, socket)));
    }
    const outcome = await relay(client, app, { idleTimeoutMs: options.idleTimeoutMs });
    socket.destroy();
    options.logger.debug({ end: outcome.end, toApp: outcome.aToB, fromApp: outcome.bToA }, 'ingress connection closed');
  }

  #logCapRefusal(logger: Logger, maxConnections: number): void {
    const now = Date.now();
    if (now - this.#lastCapLog < CAP_LOG_INTERVAL_MS) {
      this.#capSuppressed++;
      return;
    }
    logger.warn(
      { maxConnections, suppressed: this.#capSuppressed },
      'ingress at ingress.max_connections; connection closed',
    );
    this.#lastCapLog = now;
    this.#capSuppressed = 0;
  }
}

/**
 * Resolves true once the client has sent a byte (put back for the relay), false when it closed,
 * failed or stayed silent for `timeoutMs` first: such a connection never reaches the app.
 */
async function firstByte(client: Duplex, timeoutMs: number): Promise<boolean> {
  const read = await peekStream(client, () => ({ value: true, length: 0 }), {
    maxBytes: 1,
    timeoutMs,
    rest: 'unshift',
  });
  return read.kind === 'decided';
}

/** The addresses to pass on: the parent's PROXY header when it sent one, else the tcp peer, else unknown. */
function proxyInfo(header: ProxyHeader | undefined, socket: Duplex) {
  if (header?.source && header.destination) return { source: header.source, destination: header.destination };
  const tcp = socket as Partial<Socket>;
  if (tcp.remoteAddress && tcp.remotePort !== undefined && tcp.localAddress && tcp.localPort !== undefined) {
    return {
      source: { address: tcp.remoteAddress, port: tcp.remotePort },
      destination: { address: tcp.localAddress, port: tcp.localPort },
    };
  }
  return null;
}
