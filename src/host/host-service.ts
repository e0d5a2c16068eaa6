/**
 * Everything `enclave-runtime host` runs on the parent instance: TCP ingress -> enclave, the
 * egress relay -> internet and the DNS relay -> upstream resolver. The two relays share one
 * name cache, so the egress relay can check a name's IP against what DNS actually answered.
 */
import { Ingress } from '../ingress/ingress.js';
import type { RuntimeConfig } from '../config/schema.js';
import { CloserStack } from '../core/lifecycle.js';
import type { Logger } from '../core/log.js';
import type { DnsRelay } from './dns-relay.js';
import type { EgressRelay } from './egress-relay.js';
import { startHostRelays } from './host-relays.js';
import { startHostOperability, type HostOperability } from './host-operability.js';

/** How long the host's ingress waits for a PROXY header; the host never expects one from clients. */
const PROXY_HEADER_TIMEOUT_MS = 5_000;

export interface HostService {
  readonly ingress: Ingress;
  readonly egressRelay: EgressRelay;
  readonly dnsRelay: DnsRelay;
  /** The log sink and the health, metrics, provisioner and credentials relays that are configured. */
  readonly operability: HostOperability;
  /** Stop accepting everywhere, drain ingress for up to `graceMs`, cut the rest. */
  close(graceMs: number): Promise<void>;
}

/** Start the host side; on a failure, stop what had started and rethrow. */
export async function startHost(
  config: Pick<RuntimeConfig, 'host' | 'egress'> & Partial<Pick<RuntimeConfig, 'fleet'>>,
  logger: Logger,
): Promise<HostService> {
  const { host } = config;
  const started = new CloserStack(logger, 'host');
  try {
    const { dnsRelay, egressRelay, close } = await startHostRelays(config, logger);
    started.push(close, 'egress and DNS relays');
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
    const operability = await startHostOperability(config.host, logger);
    started.push((graceMs) => operability.close(graceMs), 'operability relays');
    if (config.fleet && (host.fleetListen || host.fleetRelayListen)) {
      const { startHostFleetRelays } = await import('./fleet-relay.js');
      const fleetRelays = await startHostFleetRelays({ host, fleet: config.fleet }, logger);
      for (const part of fleetRelays) started.push(() => part.close(), part.name);
    }
    return {
      ingress,
      egressRelay,
      dnsRelay,
      operability,
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
