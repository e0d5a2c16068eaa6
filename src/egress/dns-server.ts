/**
 * The app's DNS server (egress.dns_listen, UDP and TCP on one port): the enclave's resolv.conf
 * points here. A question for an allowed name is forwarded to the host's DNS relay and its
 * addresses are learned; any other question is answered at once with REFUSED (or NXDOMAIN, per
 * egress.dns_refusal), so a denied name fails fast instead of timing out. Malformed packets get
 * FORMERR when they have a header to answer, and are dropped otherwise.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import type { TcpAddress } from '../net/address.js';
import type { Logger } from '../core/log.js';
import type { Allowlist } from './allowlist.js';
import { buildErrorResponse, buildServFail, DnsType, parseDnsQuery } from '../wire/dns-message.js';
import { serveDnsStream } from '../wire/dns-stream-server.js';
import type { DnsForwarder } from './dns-forwarder.js';
import type { EgressAudit } from './egress-audit.js';
import { gateDnsQuery } from './dns-gate.js';
import { errorCode } from '../core/errors.js';

export interface DnsServerOptions {
  listen: TcpAddress;
  allowlist: Allowlist;
  forwarder: DnsForwarder;
  refusal: 'refused' | 'nxdomain';
  audit: EgressAudit;
  logger: Logger;
}

export interface DnsServer {
  /** The bound host and port (a port 0 resolved), the same for UDP and TCP. */
  readonly host: string;
  readonly port: number;
  close(): Promise<void>;
}

/** Without EDNS a UDP answer is at most 512 bytes; with it, 1232 is what resolvers use since DNS Flag Day 2020. */
const UDP_PLAIN_MAX = 512;
const UDP_EDNS_MAX = 1232;
const TCP_MAX_CONNECTIONS = 256;
const TCP_IDLE_MS = 10_000;
const TCP_MAX_PENDING_PER_CONNECTION = 16;
const TYPE_NAMES = new Map<number, string>(Object.entries(DnsType).map(([name, code]) => [code, name]));

/** Answer one DNS message (wire bytes); undefined means drop it. Shared by UDP and TCP. */
export async function answerDnsQuery(
  raw: Buffer,
  options: Omit<DnsServerOptions, 'listen'>,
): Promise<Buffer | undefined> {
  const { audit, allowlist, forwarder, logger } = options;
  audit.counters.dnsQueries++;
  const gate = gateDnsQuery(raw, allowlist, options.refusal);
  if (gate.kind === 'malformed' || gate.kind === 'unsupported') {
    audit.counters.dnsMalformed++;
    if (gate.kind === 'malformed') logger.debug({ reason: gate.reason, bytes: raw.length }, 'malformed DNS query');
    return gate.reply;
  }
  const { question } = gate.query;
  const qtype = TYPE_NAMES.get(question.type) ?? String(question.type);
  const { decision } = gate;
  if (gate.kind === 'refused') {
    audit.refused('dns', { name: question.name, qtype, reason: decision.reason, rule: decision.rule });
    return gate.reply;
  }
  try {
    const answer = await forwarder.forward(raw, question);
    audit.allowed('dns', { name: question.name, qtype, rule: decision.rule });
    return answer;
  } catch (error) {
    audit.failed('dns', { name: question.name, qtype, reason: errorCode(error) ?? (error as Error).message });
    return buildServFail(gate.query);
  }
}

/** Listen on `listen` for UDP and TCP; resolves once both are bound. */
export async function startDnsServer(options: DnsServerOptions): Promise<DnsServer> {
  const { listen, logger } = options;
  const tcp = net.createServer({ allowHalfOpen: true }, (socket) =>
    serveDnsStream(socket, {
      answer: (message) => answerDnsQuery(message, options),
      idleMs: TCP_IDLE_MS,
      maxPending: TCP_MAX_PENDING_PER_CONNECTION,
      onMalformed: () => options.audit.counters.dnsMalformed++,
      onError: (error) => logger.error({ err: { message: error.message } }, 'DNS query failed'),
    }),
  );
  tcp.maxConnections = TCP_MAX_CONNECTIONS;
  await new Promise<void>((resolve, reject) => {
    tcp.once('error', reject);
    tcp.listen({ host: listen.host, port: listen.port }, () => {
      tcp.off('error', reject);
      resolve();
    });
  });
  const port = (tcp.address() as net.AddressInfo).port;
  const udp = dgram.createSocket({ type: net.isIPv6(listen.host) ? 'udp6' : 'udp4' });
  try {
    await new Promise<void>((resolve, reject) => {
      udp.once('error', reject);
      udp.bind({ address: listen.host, port }, () => {
        udp.off('error', reject);
        resolve();
      });
    });
  } catch (error) {
    tcp.close();
    throw error;
  }
  udp.on('error', (error) => logger.warn({ err: { message: error.message } }, 'DNS UDP socket error'));
  udp.on('message', (message, peer) => {
    void answerDnsQuery(message, options).then(
      (answer) => {
        if (answer) udp.send(truncateForUdp(answer, message), peer.port, peer.address);
      },
      (error: Error) => logger.error({ err: { message: error.message } }, 'DNS query failed'),
    );
  });
  logger.info({ listen: `${listen.host}:${port}`, transports: ['udp', 'tcp'] }, 'egress DNS listening');
  return {
    host: listen.host,
    port,
    close: async () => {
      udp.close();
      await new Promise<void>((resolve) => tcp.close(() => resolve()));
    },
  };
}

/**
 * A UDP answer bigger than the client can take becomes header and question with TC set, which
 * tells the client to ask again over TCP (RFC 1035 4.2.1). A query with an additional record
 * is taken to carry EDNS; its advertised size is not parsed, 1232 is assumed.
 */
export function truncateForUdp(answer: Buffer, query: Buffer): Buffer {
  const limit = query.length >= 12 && query.readUInt16BE(10) > 0 ? UDP_EDNS_MAX : UDP_PLAIN_MAX;
  if (answer.length <= limit) return answer;
  try {
    const truncated = buildErrorResponse(parseDnsQuery(query), answer[3]! & 0x0f);
    truncated[2] = answer[2]! | 0x02;
    truncated[3] = answer[3]!;
    return truncated;
  } catch {
    return answer.subarray(0, 12);
  }
}
