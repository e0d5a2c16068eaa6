/**
 * Where iptables sends the app's outbound TCP (egress.transparent_listen). For each connection:
 * the original destination (SO_ORIGINAL_DST), then the SNI or Host from the first bytes, then
 * the policy (egress-policy.ts). Allowed connections go to the host's relay with an egress
 * header, then both directions, the app's bytes through an InspectionGate (every ClientHello and
 * request head judged before it is forwarded, however late it comes); refused ones are reset, so
 * the app sees ECONNRESET at once rather than a connection that silently goes nowhere.
 *
 * iptables REDIRECT sends IPv6 to ::1, so when the configured host is 127.0.0.1 the listener
 * also binds [::1] on the same port, when the kernel has IPv6.
 */
import net from 'node:net';
import type { Address } from '../net/address.js';
import { getOriginalDst } from '../native/native-binding.js';
import { relay } from '../net/relay.js';
import type { TcpAddress } from '../net/address.js';
import type { Logger } from '../core/log.js';
import type { Allowlist } from './allowlist.js';
import type { EgressAudit } from './egress-audit.js';
import { egressStatusName } from '../wire/egress-header.js';
import { decideConnection } from './egress-policy.js';
import { InspectionGate, INSPECT_TIMEOUT_MS } from './inspection-gate.js';
import { refusalFacts, sightingFacts } from './egress-audit.js';
import type { Sighting } from './stream-inspector.js';
import type { NameCache } from './name-cache.js';
import { EgressRelayError, openRelayStream, resetAppOnRelayFailure } from './relay-client.js';
import { errorCode } from '../core/errors.js';

export interface TransparentListenerOptions {
  listen: TcpAddress;
  allowlist: Allowlist;
  cache: NameCache;
  relay: Address;
  peekTimeoutMs: number;
  /** Bound on bytes held undecided (a ClientHello or request head still incomplete); default INSPECT_TIMEOUT_MS. */
  inspectTimeoutMs?: number;
  /** Let a ClientHello with encrypted_client_hello through (its real SNI is hidden); default false. */
  allowEch?: boolean;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  maxConnections: number;
  audit: EgressAudit;
  logger: Logger;
  /** Look up the pre-redirect destination; the default is SO_ORIGINAL_DST through our addon. */
  originalDestination?: (socket: net.Socket) => { address: string; port: number };
}

export class TransparentListener {
  readonly #options: TransparentListenerOptions;
  readonly #servers: net.Server[] = [];
  readonly #connections = new Set<net.Socket>();
  #port = 0;

  private constructor(options: TransparentListenerOptions) {
    this.#options = options;
  }

  /** Bind the listener (and its [::1] twin when the host is 127.0.0.1). */
  static async start(options: TransparentListenerOptions): Promise<TransparentListener> {
    const listener = new TransparentListener(options);
    const primary = await listener.#bind(options.listen.host, options.listen.port);
    listener.#port = (primary.address() as net.AddressInfo).port;
    if (options.listen.host === '127.0.0.1') {
      try {
        await listener.#bind('::1', listener.#port);
      } catch (error) {
        options.logger.warn({ code: errorCode(error) }, 'no IPv6 loopback: outbound IPv6 TCP cannot be redirected');
      }
    }
    options.logger.info(
      { listen: listener.hosts.map((host) => `${host.includes(':') ? `[${host}]` : host}:${listener.#port}`) },
      'egress transparent listener listening',
    );
    return listener;
  }

  /** The bound port (the same on every host). */
  get port(): number {
    return this.#port;
  }

  /** The hosts bound: the configured one, and ::1 when that worked. */
  get hosts(): string[] {
    return this.#servers.map((server) => (server.address() as net.AddressInfo).address);
  }

  /** Whether it is still accepting. */
  get listening(): boolean {
    return this.#servers.length > 0 && this.#servers.every((server) => server.listening);
  }

  /** Connections open now. */
  get active(): number {
    return this.#connections.size;
  }

  /** Stop accepting and cut every open connection. */
  async close(): Promise<void> {
    const closed = this.#servers.map((server) => new Promise<void>((resolve) => server.close(() => resolve())));
    for (const socket of this.#connections) socket.destroy();
    await Promise.all(closed);
  }

  #bind(host: string, port: number): Promise<net.Server> {
    const server = net.createServer({ allowHalfOpen: true, noDelay: true, pauseOnConnect: true }, (socket) =>
      this.#accept(socket),
    );
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 1024, ipv6Only: host.includes(':') }, () => {
        server.off('error', reject);
        this.#servers.push(server);
        resolve(server);
      });
    });
  }

  #accept(socket: net.Socket): void {
    socket.on('error', () => {});
    if (this.#connections.size >= this.#options.maxConnections) {
      this.#options.audit.failed('transparent', { reason: 'over-capacity' });
      socket.resetAndDestroy();
      return;
    }
    this.#connections.add(socket);
    socket.once('close', () => this.#connections.delete(socket));
    this.#serve(socket).catch((error: Error) => {
      this.#options.logger.error({ err: { message: error.message } }, 'egress connection failed');
      socket.resetAndDestroy();
    });
  }

  async #serve(socket: net.Socket): Promise<void> {
    const options = this.#options;
    const { audit } = options;
    let destination: { address: string; port: number };
    try {
      destination = (options.originalDestination ?? originalDestination)(socket);
    } catch (error) {
      // Dialled the listener itself, not redirected here: there is no destination to judge.
      audit.refused('transparent', {
        reason: 'no-original-destination',
        ip: socket.localAddress,
        port: socket.localPort,
      });
      options.logger.debug({ code: errorCode(error) }, 'no original destination');
      socket.resetAndDestroy();
      return;
    }
    const { address: ip, port } = destination;
    const resolvedNames = options.cache.namesFor(ip);
    const judge = (sighting: Sighting) =>
      decideConnection(options.allowlist, { ip, port, resolvedNames, hostname: sighting.hostname });
    const gate = new InspectionGate(socket, {
      port,
      allowEch: options.allowEch ?? false,
      inspectTimeoutMs: options.inspectTimeoutMs ?? INSPECT_TIMEOUT_MS,
      judge,
      onRefusal: (refusal) => {
        audit.refused('transparent', { ...refusalFacts(refusal, resolvedNames[0]), ip, port });
        if (refusal.problem !== undefined) options.logger.debug({ problem: refusal.problem }, 'egress bytes refused');
        socket.resetAndDestroy();
      },
    });
    const first = await gate.firstDecision(options.peekTimeoutMs);
    if (first.kind === 'closed') return;
    // Nothing yet (server-first, or a late client): decide on the IP; the gate still inspects whatever the app sends later.
    const decision = first.kind === 'decided' ? first.verdict : judge({ protocol: 'other' });
    const named = first.kind === 'decided' ? sightingFacts(first.sighting) : {};
    if (!decision.allowed) {
      audit.refused('transparent', {
        name: decision.name || resolvedNames[0],
        ip,
        port,
        ...named,
        reason: decision.reason,
        rule: decision.rule,
      });
      socket.resetAndDestroy();
      return;
    }
    if (socket.destroyed) return;

    let upstream;
    try {
      upstream = await openRelayStream(
        options.relay,
        { name: decision.name ?? '', ip, port },
        { timeoutMs: options.connectTimeoutMs, watch: options.audit.relays },
      );
    } catch (error) {
      const reason =
        error instanceof EgressRelayError && error.status !== undefined
          ? `host-${egressStatusName(error.status).toLowerCase()}`
          : 'relay-unreachable';
      audit.failed('transparent', { name: decision.name, ip, port, ...named, reason });
      socket.resetAndDestroy();
      return;
    }
    if (socket.destroyed) {
      upstream.destroy();
      return;
    }
    audit.allowed('transparent', {
      name: decision.name,
      ip,
      port,
      ...named,
      reason: decision.reason,
      rule: decision.rule,
    });
    resetAppOnRelayFailure(socket, upstream, () =>
      audit.failed('transparent', { name: decision.name, ip, port, ...named, reason: 'relay-reset' }),
    );
    const outcome = await relay(gate, upstream, { idleTimeoutMs: options.idleTimeoutMs });
    options.logger.debug(
      { ip, port, end: outcome.end, sent: outcome.aToB, received: outcome.bToA },
      'egress connection closed',
    );
  }
}

/** SO_ORIGINAL_DST of an accepted, redirected socket. */
function originalDestination(socket: net.Socket): { address: string; port: number } {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('socket has no fd');
  const family = net.isIPv6(socket.localAddress ?? '') && !socket.localAddress!.startsWith('::ffff:') ? 6 : 4;
  return getOriginalDst(fd, family);
}
