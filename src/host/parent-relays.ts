/**
 * The parent's plain byte relays to and from the enclave, each off unless configured: the
 * enclave's /health (host.health_listen -> host.enclave_health, vsock 7779) and /metrics
 * (host.metrics_listen -> host.enclave_metrics) for checkers and scrapers on the parent, and the
 * provisioner (host.provisioner_listen, vsock 8444 -> host.provisioner) for the enclave. They are
 * the ingress bridge without TLS or PROXY headers; what passes is HTTP that each end checks itself
 * (the provisioner verifies the attestation in every request, so the relay needs to trust nothing).
 */
import { Ingress } from '../ingress/ingress.js';
import type { Address } from '../net/address.js';
import type { RuntimeConfig } from '../config/schema.js';
import type { Logger } from '../core/log.js';

/** Health checkers, scrapers and one enclave's provisioning calls: a few connections each. */
const MAX_RELAY_CONNECTIONS = 64;
const PROXY_HEADER_TIMEOUT_MS = 5_000;

export interface ParentRelay {
  readonly name: 'health relay' | 'metrics relay' | 'provisioner relay';
  readonly ingress: Ingress;
}

/** The relays `host` configures; on a failure, the ones started are stopped and the error rethrown. */
export async function startParentRelays(host: RuntimeConfig['host'], logger: Logger): Promise<ParentRelay[]> {
  const wanted: Array<[ParentRelay['name'], Address | undefined, Address]> = [
    ['health relay', host.healthListen, host.enclaveHealth],
    ['metrics relay', host.metricsListen, host.enclaveMetrics],
    ['provisioner relay', host.provisioner && host.provisionerListen, host.provisioner ?? host.provisionerListen],
  ];
  const started: ParentRelay[] = [];
  try {
    for (const [name, listen, target] of wanted) {
      if (!listen) continue;
      const ingress = await Ingress.start({
        name,
        listen,
        app: target,
        proxyProtocol: 'off',
        sendProxyProtocol: 'off',
        maxConnections: Math.min(MAX_RELAY_CONNECTIONS, host.maxConnections),
        connectTimeoutMs: host.connectTimeoutMs,
        idleTimeoutMs: host.idleTimeoutMs,
        proxyHeaderTimeoutMs: PROXY_HEADER_TIMEOUT_MS,
        logger: logger.child({ relay: name }),
      });
      started.push({ name, ingress });
    }
    return started;
  } catch (error) {
    for (const relay of started) await relay.ingress.stop(0).catch(() => {});
    throw error;
  }
}
