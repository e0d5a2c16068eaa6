/**
 * The enclave's egress, composed: the allowlist, the name cache, the DNS server, the transparent
 * listener, the HTTP proxy and (egress.apply_rules) the redirect rules. Data flows one way:
 * listener -> policy -> relay transport.
 */
import { formatAddress } from '../net/address.js';
import type { RuntimeConfig } from '../config/schema.js';
import { CloserStack } from '../core/lifecycle.js';
import type { Logger } from '../core/log.js';
import { compileAllowlist } from './allowlist.js';
import { DnsForwarder, DNS_FORWARD_TIMEOUT_MS } from './dns-forwarder.js';
import { startDnsServer, type DnsServer } from './dns-server.js';
import { EgressAudit, type EgressCounters } from './egress-audit.js';
import { EgressHttpProxy } from './http-proxy.js';
import { applyRules, type AppliedRules } from './iptables-rules.js';
import { NameCache } from './name-cache.js';
import { TransparentListener } from './transparent-listener.js';

export interface EgressHealth {
  ok: boolean;
  detail: string;
  counters: Record<string, number>;
}

export interface EgressService {
  /** Live counters (the same object keeps counting). */
  readonly counters: Readonly<EgressCounters>;
  readonly cache: NameCache;
  /** Bound ports, with port 0 in the config resolved. */
  readonly ports: { dns: number; transparent: number; proxy: number };
  /** For GET /health: ok while every listener listens. */
  health(): EgressHealth;
  /** Remove the rules first (so no new connection is redirected to a closing port), then close the listeners. */
  close(): Promise<void>;
}

export type EgressConfig = RuntimeConfig['egress'];

/** Start every egress part; on a failure, stop what had started and rethrow. */
export async function startEgress(config: EgressConfig, logger: Logger): Promise<EgressService> {
  const log = logger.child({ component: 'egress' });
  const allowlist = compileAllowlist(config.allow);
  const cache = new NameCache();
  const audit = new EgressAudit(log);
  const forwarder = new DnsForwarder({
    relay: config.dnsRelay,
    cache,
    maxInFlight: config.maxDnsInFlight,
    connectTimeoutMs: config.connectTimeoutMs,
    timeoutMs: DNS_FORWARD_TIMEOUT_MS,
    watch: audit.relays,
  });
  const closers = new CloserStack(log, 'egress');
  const closeAll = async () => {
    await closers.closeAll();
  };

  try {
    const dns: DnsServer = await startDnsServer({
      listen: config.dnsListen,
      allowlist,
      forwarder,
      refusal: config.dnsRefusal,
      audit,
      logger: log,
    });
    closers.push(() => dns.close());
    const common = {
      allowlist,
      cache,
      relay: config.relay,
      peekTimeoutMs: config.peekTimeoutMs,
      inspectTimeoutMs: config.inspectTimeoutMs,
      allowEch: config.allowEch,
      connectTimeoutMs: config.connectTimeoutMs,
      idleTimeoutMs: config.idleTimeoutMs,
      maxConnections: config.maxConnections,
      audit,
      logger: log,
    };
    const transparent = await TransparentListener.start({ ...common, listen: config.transparentListen });
    closers.push(() => transparent.close());
    const proxy = await EgressHttpProxy.start({
      ...common,
      listen: config.proxyListen,
      maxHeaderBytes: config.proxyMaxHeaderBytes,
      headersTimeoutMs: config.proxyHeadersTimeoutMs,
      resolve: (name) => forwarder.resolve(name),
    });
    closers.push(() => proxy.close());

    let rules: AppliedRules | undefined;
    if (config.applyRules) {
      rules = await applyRules(
        {
          transparentPort: transparent.port,
          dnsPort: config.dnsListen.host === '127.0.0.1' ? dns.port : undefined,
          ipv6: transparent.hosts.includes('::1'),
          exclude: [config.relay, config.dnsRelay].flatMap((address) =>
            address.transport === 'tcp' ? [{ host: address.host, port: address.port }] : [],
          ),
        },
        { logger: log },
      );
      const applied = rules;
      closers.push(() => applied.remove());
    }

    log.info(
      {
        allow: allowlist.entries.length,
        relay: formatAddress(config.relay),
        dnsRelay: formatAddress(config.dnsRelay),
        rules: rules !== undefined,
      },
      'egress ready',
    );
    return {
      counters: audit.counters,
      cache,
      ports: { dns: dns.port, transparent: transparent.port, proxy: proxy.port },
      health: () => {
        const listening = transparent.listening && proxy.listening;
        const relays = audit.relays.health();
        const rulesText = rules ? `rules applied${rules.ipv6 ? ' (IPv4, IPv6)' : ' (IPv4)'}` : 'no rules';
        const { connectionsRefused, dnsRefused, proxyRefused } = audit.counters;
        return {
          ok: listening && relays.ok,
          detail: `${relays.ok ? '' : `${relays.detail}; `}${listening ? 'listening' : 'not listening'}; ${rulesText}; ${transparent.active} open; refused: ${dnsRefused} DNS, ${connectionsRefused} TCP, ${proxyRefused} proxy`,
          counters: { ...audit.counters },
        };
      },
      close: closeAll,
    };
  } catch (error) {
    await closeAll();
    throw error;
  }
}
