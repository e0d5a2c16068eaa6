/**
 * The host's DNS relay (host.dns_listen): the enclave sends DNS-over-TCP framed queries over a
 * stream, and each is asked of the upstream resolver. The question is checked against the
 * allowlist again, as defence in depth against a compromised enclave, and the answers are
 * learned into the host's name cache, which the egress relay then uses to check that a
 * connection's IP really belongs to the name the enclave claims.
 */
import { formatAddress, type Address } from '../net/address.js';
import { listen, type Listener, type TransportSocket } from '../net/transport.js';
import type { Allowlist } from '../egress/allowlist.js';
import { buildServFail, DnsRcode, parseDnsResponse } from '../wire/dns-message.js';
import { serveDnsStream } from '../wire/dns-stream-server.js';
import { gateDnsQuery } from '../egress/dns-gate.js';
import type { NameCache } from '../egress/name-cache.js';
import type { Logger } from '../core/log.js';
import { queryUpstream, type Upstream } from './upstream-dns.js';

export interface DnsRelayOptions {
  listen: Address;
  upstream: Upstream;
  allowlist: Allowlist;
  cache: NameCache;
  refusal: 'refused' | 'nxdomain';
  logger: Logger;
  /** Questions asked upstream at once, over all streams (default 1024); more get SERVFAIL. */
  maxInFlight?: number;
  /** Bound on one upstream question, UDP and TCP fallback together (default 3.5 s). */
  timeoutMs?: number;
}

export interface DnsRelayStats {
  queries: number;
  refused: number;
  failed: number;
  malformed: number;
}

export interface DnsRelay {
  readonly address: Address;
  readonly stats: DnsRelayStats;
  close(): Promise<void>;
}

const STREAM_IDLE_MS = 30_000;
const MAX_PENDING_PER_STREAM = 64;
const MAX_STREAMS = 1024;

/** Start the relay; resolves once it listens. */
export async function startDnsRelay(options: DnsRelayOptions): Promise<DnsRelay> {
  const stats: DnsRelayStats = { queries: 0, refused: 0, failed: 0, malformed: 0 };
  const maxInFlight = options.maxInFlight ?? 1024;
  const timeoutMs = options.timeoutMs ?? 3500;
  const streams = new Set<TransportSocket>();
  let inFlight = 0;

  const answer = async (raw: Buffer): Promise<Buffer | undefined> => {
    stats.queries++;
    const gate = gateDnsQuery(raw, options.allowlist, options.refusal);
    if (gate.kind === 'malformed' || gate.kind === 'unsupported') {
      stats.malformed++;
      return gate.reply;
    }
    const { query } = gate;
    if (gate.kind === 'refused') {
      stats.refused++;
      options.logger.warn(
        {
          event: 'host-dns-refused',
          name: query.question.name,
          qtype: query.question.type,
          reason: gate.decision.reason,
        },
        'host DNS relay refused a question',
      );
      return gate.reply;
    }
    if (inFlight >= maxInFlight) {
      stats.failed++;
      return buildServFail(query);
    }
    inFlight++;
    try {
      const response = await queryUpstream(options.upstream, raw, timeoutMs);
      try {
        const parsed = parseDnsResponse(response);
        if (parsed.header.rcode === DnsRcode.NOERROR) options.cache.learn(query.question.name, parsed.answers);
      } catch {
        // An answer we cannot read teaches nothing, but it is still the resolver's answer to pass on.
      }
      return response;
    } catch (error) {
      stats.failed++;
      options.logger.warn({ name: query.question.name, reason: (error as Error).message }, 'upstream DNS failed');
      return buildServFail(query);
    } finally {
      inFlight--;
    }
  };

  const serve = (stream: TransportSocket) => {
    if (streams.size >= MAX_STREAMS) {
      stream.destroy();
      return;
    }
    streams.add(stream);
    stream.once('close', () => streams.delete(stream));
    serveDnsStream(stream, {
      answer,
      idleMs: STREAM_IDLE_MS,
      maxPending: MAX_PENDING_PER_STREAM,
      onMalformed: () => stats.malformed++,
      onError: (error) => options.logger.error({ err: { message: error.message } }, 'DNS relay failed'),
    });
  };

  const listener: Listener = await listen(options.listen, serve, { backlog: 1024 });
  options.logger.info(
    { listen: formatAddress(listener.address), upstream: `${options.upstream.host}:${options.upstream.port}` },
    'host DNS relay listening',
  );
  return {
    address: listener.address,
    stats,
    close: async () => {
      await listener.close();
      for (const stream of streams) stream.destroy();
    },
  };
}
