/**
 * The host's egress relay (host.egress_listen): the enclave opens a stream, sends an egress
 * header (egress-header.ts), and the relay connects out and pipes both ways with half-close.
 *
 * The enclave enforces the allowlist; the relay checks it again (defence in depth, so a
 * compromised enclave cannot use the parent as an open proxy): the name must be allowed, and
 * the IP must be allowed as an address or be one the host's DNS relay resolved that name to.
 * Private, loopback, link-local and similar destinations are refused unless host.allow_private.
 * Then the payload is inspected like in the enclave (inspection-gate.ts): every TLS SNI and HTTP
 * Host must be allowed and resolved for the IP, or the stream is cut.
 */
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { relay } from '../net/relay.js';
import { peekStream } from '../net/stream-peek.js';
import { connect, listen, type Listener, type TransportSocket } from '../net/transport.js';
import type { Allowlist } from '../egress/allowlist.js';
import {
  EgressHeaderError,
  EgressStatus,
  egressStatusName,
  encodeEgressReply,
  parseEgressHeader,
  EGRESS_HEADER_MAX_LENGTH,
  type EgressHeader,
  type EgressStatusCode,
} from '../wire/egress-header.js';
import { sightingFacts } from '../egress/egress-audit.js';
import { decideConnection } from '../egress/egress-policy.js';
import { InspectionGate, INSPECT_TIMEOUT_MS } from '../egress/inspection-gate.js';
import type { NameCache } from '../egress/name-cache.js';
import type { Logger } from '../core/log.js';
import { classifyAddress } from './address-class.js';
import { errorCode } from '../core/errors.js';

const REFUSAL_LINGER_MS = 2000;

export interface EgressRelayOptions {
  listen: Address;
  allowlist: Allowlist;
  /** The host DNS relay's cache: which IPs each name resolved to. */
  cache: NameCache;
  allowPrivate: boolean;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  maxConnections: number;
  logger: Logger;
  /** Time for the header to arrive (default 5 s). */
  headerTimeoutMs?: number;
  /** Bound on the app's bytes held undecided (egress.inspect_timeout_ms; default INSPECT_TIMEOUT_MS). */
  inspectTimeoutMs?: number;
  /** Let a ClientHello with encrypted_client_hello through (egress.allow_ech; default false). */
  allowEch?: boolean;
}

export interface EgressRelayStats {
  accepted: number;
  connected: number;
  refused: number;
  failed: number;
  active: number;
}

export interface DestinationCheck {
  status: EgressStatusCode;
  reason: string;
  rule?: string;
}

/** The host's decision for a header (pure): OK, DENIED or PRIVATE, with the reason. */
export function checkDestination(
  header: EgressHeader,
  allowlist: Allowlist,
  cache: NameCache,
  allowPrivate: boolean,
): DestinationCheck {
  const { name, ip, port } = header;
  const byIp = allowlist.allowsIp(ip, port);
  let rule = byIp.rule;
  if (name !== '') {
    const byName = allowlist.allowsName(name, port);
    if (!byName.allowed) return { status: EgressStatus.DENIED, reason: `name-${byName.reason}` };
    if (!byIp.allowed && !cache.namesFor(ip).includes(name))
      return { status: EgressStatus.DENIED, reason: 'ip-not-resolved-for-name' };
    rule = byName.rule;
  } else if (!byIp.allowed) {
    return { status: EgressStatus.DENIED, reason: `ip-${byIp.reason}` };
  }
  const kind = classifyAddress(ip);
  if (kind !== 'public' && !allowPrivate) return { status: EgressStatus.PRIVATE, reason: kind };
  return rule === undefined
    ? { status: EgressStatus.OK, reason: 'allowed' }
    : { status: EgressStatus.OK, reason: 'allowed', rule };
}

/** enclave -> internet: accepts relay streams, checks each header, connects out, relays. */
export class EgressRelay {
  readonly stats: EgressRelayStats = { accepted: 0, connected: 0, refused: 0, failed: 0, active: 0 };
  readonly #options: EgressRelayOptions;
  readonly #streams = new Set<Duplex>();
  #listener: Listener | undefined;

  private constructor(options: EgressRelayOptions) {
    this.#options = options;
  }

  /** Start listening; resolves once bound. */
  static async start(options: EgressRelayOptions): Promise<EgressRelay> {
    const relayServer = new EgressRelay(options);
    relayServer.#listener = await listen(options.listen, (stream) => relayServer.#accept(stream), { backlog: 1024 });
    options.logger.info(
      { listen: formatAddress(relayServer.#listener.address), allowPrivate: options.allowPrivate },
      'host egress relay listening',
    );
    return relayServer;
  }

  get address(): Address {
    if (!this.#listener) throw new Error('egress relay is not listening');
    return this.#listener.address;
  }

  /** Stop accepting and cut every relayed connection. */
  async close(): Promise<void> {
    const listener = this.#listener;
    this.#listener = undefined;
    await listener?.close();
    for (const stream of this.#streams) stream.destroy();
  }

  #accept(stream: TransportSocket): void {
    stream.on('error', () => {});
    if (this.#streams.size >= this.#options.maxConnections) {
      this.stats.failed++;
      endWithReply(stream, EgressStatus.OVERLOADED);
      return;
    }
    this.stats.accepted++;
    this.#streams.add(stream);
    this.stats.active = this.#streams.size;
    stream.once('close', () => {
      this.#streams.delete(stream);
      this.stats.active = this.#streams.size;
    });
    this.#serve(stream).catch((error: Error) => {
      this.#options.logger.error({ err: { message: error.message } }, 'egress relay stream failed');
      stream.destroy();
    });
  }

  async #serve(stream: TransportSocket): Promise<void> {
    const options = this.#options;
    const read = await readHeader(stream, options.headerTimeoutMs ?? 5000);
    if ('error' in read) {
      this.stats.failed++;
      options.logger.warn({ reason: read.error }, 'egress relay: bad header');
      endWithReply(stream, EgressStatus.BAD_HEADER);
      return;
    }
    const { header, rest } = read;
    const check = checkDestination(header, options.allowlist, options.cache, options.allowPrivate);
    const facts = { name: header.name || null, ip: header.ip, port: header.port };
    if (check.status !== EgressStatus.OK) {
      this.stats.refused++;
      options.logger.warn(
        { event: 'host-egress-refused', ...facts, status: egressStatusName(check.status), reason: check.reason },
        'host egress relay refused a destination',
      );
      endWithReply(stream, check.status);
      return;
    }

    let upstream: TransportSocket;
    try {
      upstream = await connect(
        { transport: 'tcp', host: header.ip, port: header.port },
        { timeoutMs: options.connectTimeoutMs },
      );
    } catch (error) {
      this.stats.failed++;
      const code = errorCode(error) ?? 'ERROR';
      options.logger.warn({ ...facts, code }, 'host egress relay could not connect');
      endWithReply(stream, code === 'ETIMEDOUT' ? EgressStatus.TIMEOUT : EgressStatus.UNREACHABLE);
      return;
    }
    if (stream.destroyed) {
      upstream.destroy();
      return;
    }
    this.stats.connected++;
    stream.write(encodeEgressReply(EgressStatus.OK));
    // The enclave inspects too, but the app may reach this relay directly (AF_VSOCK is not covered
    // by iptables): the header alone names nothing the server will see, so SNI and Host are judged here as well.
    const gate = new InspectionGate(
      stream,
      {
        port: header.port,
        allowEch: options.allowEch ?? false,
        inspectTimeoutMs: options.inspectTimeoutMs ?? INSPECT_TIMEOUT_MS,
        judge: (sighting) =>
          sighting.hostname === undefined
            ? { allowed: true, reason: 'header' }
            : decideConnection(options.allowlist, {
                ip: header.ip,
                port: header.port,
                resolvedNames: options.cache.namesFor(header.ip),
                hostname: sighting.hostname,
              }),
        onRefusal: (refusal) => {
          this.stats.refused++;
          options.logger.warn(
            {
              event: 'host-egress-refused',
              ...facts,
              ...sightingFacts(refusal.sighting),
              status: egressStatusName(EgressStatus.DENIED),
              reason: refusal.reason,
            },
            'host egress relay refused a destination',
          );
          upstream.destroy();
          stream.destroy();
        },
      },
      rest,
    );
    const outcome = await relay(gate, upstream, { idleTimeoutMs: options.idleTimeoutMs });
    options.logger.info(
      {
        event: 'host-egress-closed',
        ...facts,
        rule: check.rule ?? null,
        end: outcome.end,
        sent: outcome.aToB,
        received: outcome.bToA,
      },
      'egress connection closed',
    );
  }
}

/**
 * Send a refusal and close. Whatever the peer still sends is read and dropped, so closing does
 * not turn into a reset that could discard the reply; a peer that never closes its side is cut
 * after REFUSAL_LINGER_MS.
 */
function endWithReply(stream: Duplex, status: EgressStatusCode): void {
  if (stream.destroyed) return;
  const timer = setTimeout(() => stream.destroy(), REFUSAL_LINGER_MS);
  stream.once('close', () => clearTimeout(timer));
  stream.resume();
  stream.end(encodeEgressReply(status));
}

async function readHeader(
  stream: Duplex,
  timeoutMs: number,
): Promise<{ header: EgressHeader; rest: Buffer } | { error: string }> {
  const read = await peekStream(
    stream,
    (bytes) => {
      const parsed = parseEgressHeader(bytes);
      return parsed.kind === 'header' ? { value: parsed.header, length: parsed.length } : undefined;
    },
    { maxBytes: EGRESS_HEADER_MAX_LENGTH, timeoutMs, rest: 'return' },
  );
  switch (read.kind) {
    case 'decided':
      return { header: read.value, rest: read.rest };
    case 'invalid':
      if (!(read.error instanceof EgressHeaderError)) throw read.error;
      return { error: read.error.message };
    case 'bound':
      return { error: 'header too long' };
    case 'timeout':
      return { error: `no header within ${timeoutMs} ms` };
    case 'ended':
      return { error: 'stream ended before the header' };
    case 'failed':
      return { error: `stream failed before the header: ${read.error.message}` };
  }
}
