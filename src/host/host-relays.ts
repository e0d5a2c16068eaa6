/**
 * The host side's two relays, the egress relay -> internet and the DNS relay -> upstream resolver,
 * sharing one name cache so the egress relay can check a name's IP against what DNS actually
 * answered. `host` runs them on the parent; `dev` runs them in-process on loopback.
 */
import type { Address } from '../net/address.js';
import { formatAddress } from '../net/address.js';
import type { RuntimeConfig } from '../config/schema.js';
import { compileAllowlist } from '../egress/allowlist.js';
import { NameCache } from '../egress/name-cache.js';
import type { Logger } from '../core/log.js';
import { startDnsRelay, type DnsRelay } from './dns-relay.js';
import { EgressRelay } from './egress-relay.js';
import { upstreamFromConfig } from './upstream-dns.js';

export interface HostRelays {
  readonly egressRelay: EgressRelay;
  readonly dnsRelay: DnsRelay;
  close(): Promise<void>;
}

/**
 * Start both relays on `listen` (default: host.egress_listen and host.dns_listen); on a failure,
 * stop what had started and rethrow. An empty egress.allow refuses everything: said once, as a warning.
 */
export async function startHostRelays(
  config: Pick<RuntimeConfig, 'host' | 'egress'>,
  logger: Logger,
  listen: { egress: Address; dns: Address } = { egress: config.host.egressListen, dns: config.host.dnsListen },
): Promise<HostRelays> {
  const { host } = config;
  const allowlist = compileAllowlist(config.egress.allow);
  if (allowlist.entries.length === 0) {
    logger.warn(
      { egressRelay: formatAddress(listen.egress), dnsRelay: formatAddress(listen.dns) },
      'egress.allow is empty: the relays refuse every destination and every DNS question',
    );
  }
  const upstream = await upstreamFromConfig(host.upstreamDns);
  const cache = new NameCache();
  const dnsRelay = await startDnsRelay({
    listen: listen.dns,
    upstream,
    allowlist,
    cache,
    refusal: config.egress.dnsRefusal,
    logger,
  });
  let egressRelay: EgressRelay;
  try {
    egressRelay = await EgressRelay.start({
      listen: listen.egress,
      allowlist,
      cache,
      allowPrivate: host.allowPrivate,
      allowEch: config.egress.allowEch,
      inspectTimeoutMs: config.egress.inspectTimeoutMs,
      connectTimeoutMs: host.connectTimeoutMs,
      idleTimeoutMs: host.idleTimeoutMs,
      maxConnections: host.maxConnections,
      logger,
    });
  } catch (error) {
    await dnsRelay.close().catch(() => {});
    throw error;
  }
  return {
    egressRelay,
    dnsRelay,
    // Both are stopped even when one fails to stop; the first failure is then rethrown.
    close: async () => {
      const results = await Promise.allSettled([egressRelay.close(), dnsRelay.close()]);
      const failed = results.find((result): result is PromiseRejectedResult => result.status === 'rejected');
      if (failed) throw failed.reason;
    },
  };
}
