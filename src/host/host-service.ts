/**
 * Everything `enclave-runtime host` runs on the parent instance: TCP ingress -> enclave, the
 * egress relay -> internet and the DNS relay -> upstream resolver. The two relays share one
 * name cache, so the egress relay can check a name's IP against what DNS actually answered.
 */
import { Ingress } from '../bridge/ingress.js';
import type { RuntimeConfig } from '../config/schema.js';
import { compileAllowlist } from '../egress/allowlist.js';
import { NameCache } from '../egress/name-cache.js';
import { CloserStack } from '../lifecycle.js';
import type { Logger } from '../log.js';
import { startDnsRelay, type DnsRelay } from './dns-relay.js';
import { EgressRelay } from './egress-relay.js';
import { upstreamFromConfig } from './upstream-dns.js';

/** How long the host's ingress waits for a PROXY header; the host never expects one from clients. */
const PROXY_HEADER_TIMEOUT_MS = 5_000;

export interface HostService {
  readonly ingress: Ingress;
  readonly egressRelay: EgressRelay;
  readonly dnsRelay: DnsRelay;
  /** Stop accepting everywhere, drain ingress for up to `graceMs`, cut the rest. */
  close(graceMs: number): Promise<void>;
}

/** Start the host side; on a failure, stop what had started and rethrow. */
export async function startHost(config: Pick<RuntimeConfig, 'host' | 'egress'>, logger: Logger): Promise<HostService> {
  const { host } = config;
  const allowlist = compileAllowlist(config.egress.allow);
  const upstream = await upstreamFromConfig(host.upstreamDns);
  const cache = new NameCache();
  const started = new CloserStack(logger, 'host');
  try {
    const dnsRelay = await startDnsRelay({ listen: host.dnsListen, upstream, allowlist, cache, refusal: config.egress.dnsRefusal, logger });
    started.push(() => dnsRelay.close(), 'DNS relay');
    const egressRelay = await EgressRelay.start({
      listen: host.egressListen,
      allowlist,
      cache,
      allowPrivate: host.allowPrivate,
      connectTimeoutMs: host.connectTimeoutMs,
      idleTimeoutMs: host.idleTimeoutMs,
      maxConnections: host.maxConnections,
      logger,
    });
    started.push(() => egressRelay.close(), 'egress relay');
    const ingress = await Ingress.start({
      listen: host.ingressListen,
      app: host.enclaveIngress,
      proxyProtocol: 'off',
      sendProxyProtocol: 'off',
      maxConnections: host.maxConnections,
      connectTimeoutMs: host.connectTimeoutMs,
      idleTimeoutMs: host.idleTimeoutMs,
      proxyHeaderTimeoutMs: PROXY_HEADER_TIMEOUT_MS,
      logger,
    });
    started.push((graceMs) => ingress.stop(graceMs), 'ingress');
    return {
      ingress,
      egressRelay,
      dnsRelay,
      // Every part is stopped even when one fails to (the failure is logged).
      close: async (graceMs) => {
        await started.closeAll(graceMs);
      },
    };
  } catch (error) {
    await started.closeAll(0);
    throw error;
  }
}
