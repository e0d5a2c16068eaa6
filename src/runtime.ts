import { createAppProbe } from './app/app-probe.js';
import { startAttestationApi } from './attestation/attestation-api.js';
import type { Nsm } from './attestation/nsm.js';
import { NsmHealth } from './attestation/nsm-health.js';
import { formatAddress, type Address } from './net/address.js';
import { Ingress } from './ingress/ingress.js';
import type { IngressWorkers } from './ingress/ingress-workers.js';
import type { Mode } from './config/field.js';
import type { RuntimeConfig } from './config/schema.js';
import { version } from './core/version.js';
import { HealthMonitor, type HealthReport } from './metrics/health.js';
import { classifyAddress } from './host/address-class.js';
import { startHttpEndpoint, type Route, type RouteAnswer } from './metrics/http-endpoint.js';
import { CloserStack } from './core/lifecycle.js';
import type { Logger } from './core/log.js';
import { RuntimeMetrics } from './metrics/runtime-metrics.js';
import { prepareStateDir } from './config/state-dir.js';
import type { AcmeCertificates, AcmeFleetLink } from './tls/acme-certificates.js';
import type { CertificateSource } from './tls/certificate-source.js';
import type { TlsTerminator } from './tls/tls-terminator.js';
import type { FleetMember } from './fleet/fleet-member.js';
import { errorCode } from './core/errors.js';
import { chooseTlsEngine } from './ingress/tls-engine.js';
import { startHeapTrimmer } from './native/heap-trimmer.js';

/**
 * The data plane of one enclave: the NSM, the internal API, TLS and ingress, started in
 * dependency order and stopped in reverse. `run` and `dev` differ only in the config they pass.
 */
export class Runtime {
  readonly config: RuntimeConfig;
  readonly health: HealthMonitor;
  readonly ingress: Ingress | IngressWorkers | undefined;
  readonly nsm: Nsm;
  readonly metrics: RuntimeMetrics;
  readonly #logger: Logger;
  readonly #closers: CloserStack;

  private constructor(parts: {
    config: RuntimeConfig;
    health: HealthMonitor;
    ingress: Ingress | IngressWorkers | undefined;
    nsm: Nsm;
    metrics: RuntimeMetrics;
    logger: Logger;
    closers: CloserStack;
  }) {
    this.metrics = parts.metrics;
    this.config = parts.config;
    this.health = parts.health;
    this.ingress = parts.ingress;
    this.nsm = parts.nsm;
    this.#logger = parts.logger;
    this.#closers = parts.closers;
  }

  /**
   * Starts every enabled part; on a failure, stops what had started and rethrows. `parts.nsm`
   * replaces the NSM the config names (tests inject faults through it); it is closed on stop.
   */
  static async start(config: RuntimeConfig, mode: Mode, logger: Logger, parts: { nsm?: Nsm } = {}): Promise<Runtime> {
    const closers = new CloserStack(logger);
    try {
      await prepareStateDir(config.runtime.stateDir);
      const metrics = new RuntimeMetrics({ version: version(), mode });
      closers.push(async () => metrics.close());
      const nsm = new NsmHealth(metrics.meterNsm(parts.nsm ?? (await openNsm(config, logger))), { logger });
      closers.push(() => nsm.close());

      const { app } = config;
      const health = new HealthMonitor({
        app: config.ingress.app,
        logger,
        probe: createAppProbe(app.healthcheck, config.ingress.app),
        probeIntervalMs: app.healthcheckIntervalMs,
        probeTimeoutMs: app.healthcheckTimeoutMs,
        startupGraceMs: app.healthcheckGraceMs,
      });
      closers.push(async () => health.stop());
      health.watchAttestation(() => nsm.health());

      let fleet: FleetMember | undefined;
      if (config.fleet.enabled) {
        // Before the API (which serves /fleet/state) and TLS (which may take the fleet's ACME certificate).
        const { FleetState } = await import('./fleet/fleet-state.js');
        const { FleetMember } = await import('./fleet/fleet-member.js');
        const member = await FleetMember.start({
          settings: config.fleet,
          nsm,
          state: await FleetState.open(config.runtime.stateDir),
          stateDir: config.runtime.stateDir,
          logger: logger.child({ component: 'fleet' }),
        });
        closers.push(() => member.close(), 'fleet');
        health.watchFleet(() => member.health());
        metrics.watchFleet(() => {
          const peers = member.peers;
          return { reachable: peers.filter((peer) => peer.ok).length, known: peers.length };
        });
        fleet = member;
      }

      const api = await startAttestationApi({
        listen: { host: config.attestation.apiListen.host, port: config.attestation.apiListen.port },
        nsm,
        logger,
        health: () => health.report(),
        fleet: fleet?.state,
        limits: {
          maxBodyBytes: config.attestation.apiMaxBodyBytes,
          headersTimeoutMs: config.attestation.apiHeadersTimeoutMs,
          requestTimeoutMs: config.attestation.apiRequestTimeoutMs,
          maxConcurrentRequests: config.attestation.apiMaxConcurrentRequests,
          maxConnections: config.attestation.apiMaxConnections,
          attestTimeoutMs: config.attestation.nsmTimeoutMs,
        },
      });
      closers.push(() => api.close());
      logger.info({ listen: `tcp:${api.address.host}:${api.address.port}` }, 'internal API listening');

      if (config.kms.proxy) {
        const { startKmsProxyFromConfig } = await import('./kms/kms-proxy-config.js');
        const proxy = await startKmsProxyFromConfig(config, nsm, logger);
        closers.push(() => proxy.close());
      }

      if (config.egress.enabled) {
        if (mode === 'dev' && relaysInProcess(config)) {
          // SPEC: in dev, egress works with no second command; the relays listen where egress connects.
          const { startHostRelays } = await import('./host/host-relays.js');
          const { relay, dnsRelay } = config.egress;
          try {
            const relays = await startHostRelays(config, logger.child({ component: 'dev-host-relays' }), {
              egress: relay,
              dns: dnsRelay,
            });
            closers.push(() => relays.close());
          } catch (error) {
            if (errorCode(error) !== 'EADDRINUSE') throw error;
            logger.warn(
              { relay: formatAddress(relay), dnsRelay: formatAddress(dnsRelay), code: 'EADDRINUSE' },
              'egress relay address already in use: not running the host relays in-process; egress goes to what listens there (a separate enclave-runtime host?)',
            );
          }
        }
        const { startEgress } = await import('./egress/egress-service.js');
        const egress = await startEgress(config.egress, logger);
        closers.push(() => egress.close());
        health.watchEgress(() => egress.health());
        metrics.watchEgress(egress.counters);
      }

      let terminator: TlsTerminator | undefined;
      let acme: AcmeCertificates | undefined;
      if (config.tls.enabled) {
        const { TlsTerminator } = await import('./tls/tls-terminator.js');
        // The terminator opens the default source itself; a provisioned one is opened (and closed) here.
        let source: CertificateSource | undefined;
        if (config.tls.source === 'provisioner') {
          const { openProvisionedCertificateSource } = await import('./tls/provisioned-certificate-source.js');
          const provisioned = await openProvisionedCertificateSource({ nsm, ...config.tls.provisioner, logger });
          closers.push(() => provisioned.close());
          source = provisioned;
        }
        if (config.tls.acme.enabled) {
          const { AcmeCertificates } = await import('./tls/acme-certificates.js');
          let shared: { accountKeyPem: string; fleet: AcmeFleetLink } | undefined;
          if (fleet) {
            const member = fleet;
            const { acmeFleetLink, fleetAcmeAccountKey } = await import('./fleet/fleet-acme.js');
            const { loadAcmeAccountKey } = await import('./tls/acme-account-key.js');
            shared = {
              accountKeyPem: await fleetAcmeAccountKey(member, () =>
                loadAcmeAccountKey(config.runtime.stateDir, logger),
              ),
              fleet: acmeFleetLink(member),
            };
          }
          const opened = await AcmeCertificates.open({
            settings: config.tls.acme,
            stateDir: config.runtime.stateDir,
            nsm,
            logger,
            ...shared,
          });
          closers.push(async () => opened.close());
          acme = opened;
        }
        terminator = await TlsTerminator.create({
          ...(source ? { source } : {}),
          acme,
          nsm,
          stateDir: config.runtime.stateDir,
          serverName: config.tls.serverName,
          sniNonceEncoding: config.tls.sniNonceEncoding,
          nonceCacheSize: config.tls.nonceCacheSize,
          alpn: config.tls.alpn,
          handshakeTimeoutMs: config.tls.handshakeTimeoutMs,
          maxPendingIssues: config.tls.maxNonceIssues,
          logger,
        });
        const tls = terminator;
        closers.push(async () => tls.close());
      }

      let ingress: Ingress | IngressWorkers | undefined;
      if (config.ingress.enabled) {
        const workers = await startIngressWorkers(config, { nsm, terminator, logger });
        if (workers) metrics.watchIngressWorkers(workers);
        // Ingress workers trim for themselves (their isolates hold the connections); the main thread only without them.
        const trimmer = workers ? undefined : startHeapTrimmer(logger, () => ingress?.stats.active ?? 0);
        if (trimmer) closers.push(async () => trimmer.close());
        ingress =
          workers ??
          (await Ingress.start({
            ...config.ingress,
            logger,
            terminator: terminator && metrics.meterTerminator(terminator),
            onConnectionCount: trimmer && ((open) => trimmer.changed(open)),
          }));
        const started = ingress;
        closers.push((graceMs) => started.stop(graceMs));
      }
      // Only now: the CA validates TLS-ALPN-01 by connecting to the ingress.
      if (acme) {
        const started = acme;
        health.watchAcme(() => started.health());
        started.start();
      }
      health.watch({ ingress, nsm, tls: config.tls.enabled });
      metrics.watchIngress(ingress);
      metrics.watchHealth(() => health.report());

      // The same /health for the parent over the bridge, and /metrics, both up before "runtime ready".
      // They only observe: a port the app already holds (9090 is a favourite) costs them, not the enclave.
      const endpoints: Array<[string, Address, Record<string, Route>]> = [
        ['health endpoint', config.runtime.healthListen, { '/health': () => healthAnswer(health.report()) }],
      ];
      if (config.metrics.enabled) {
        endpoints.push([
          'metrics endpoint',
          config.metrics.listen,
          { '/metrics': () => ({ status: 200, type: PROMETHEUS_TEXT, body: metrics.registry.render() }) },
        ]);
      }
      for (const [name, listen, routes] of endpoints) {
        try {
          const endpoint = await startHttpEndpoint(name, listen, routes, logger);
          closers.push(() => endpoint.close());
        } catch (error) {
          logger.error(
            { listen: formatAddress(listen), code: errorCode(error), reason: (error as Error).message },
            `${name} not served`,
          );
        }
      }
      logger.info({ mode, nsm: nsm.kind, tls: config.tls.enabled }, 'runtime ready');
      return new Runtime({ config, health, ingress, nsm, metrics, logger, closers });
    } catch (error) {
      await closers.closeAll();
      throw error;
    }
  }

  /**
   * Stops accepting, drains ingress for up to `graceMs` (default runtime.shutdown_grace_ms; less
   * when the customer command already used part of it), then closes the rest.
   */
  async stop(graceMs = this.config.runtime.shutdownGraceMs): Promise<void> {
    this.#logger.info({ graceMs }, 'runtime stopping');
    await this.#closers.closeAll(graceMs);
    this.#logger.info('runtime stopped');
  }

  /** Where ingress listens, for tests and start-up lines. */
  get ingressAddress(): string | undefined {
    return this.ingress ? formatAddress(this.ingress.address) : undefined;
  }
}

const PROMETHEUS_TEXT = 'text/plain; version=0.0.4; charset=utf-8';

/** Whether both relays are on this machine's loopback (dev's defaults are): then dev is its own host side. */
function relaysInProcess(config: RuntimeConfig): boolean {
  return [config.egress.relay, config.egress.dnsRelay].every(
    (address) => address.transport === 'tcp' && (address.host === 'localhost' || isLoopbackIp(address.host)),
  );
}

function isLoopbackIp(host: string): boolean {
  try {
    return classifyAddress(host) === 'loopback';
  } catch {
    return false;
  }
}

/** GET /health's answer, as the internal API gives it: 200 when every part is ok, else 503. */
function healthAnswer(report: HealthReport): RouteAnswer {
  return {
    status: report.status === 'ok' ? 200 : 503,
    type: 'application/json; charset=utf-8',
    body: JSON.stringify({ status: report.status, parts: report.parts }),
  };
}

/** With `ingress.workers` other than 1 (and nothing keeping ingress in the main thread): the worker threads. */
async function startIngressWorkers(
  config: RuntimeConfig,
  parts: { nsm: Nsm; terminator: TlsTerminator | undefined; logger: Logger },
): Promise<IngressWorkers | undefined> {
  const { nativeUnavailable } = await import('./native/native-binding.js');
  const unavailable = nativeUnavailable();
  const choice = chooseTlsEngine(config, unavailable);
  if (config.tls.enabled && config.ingress.tlsEngine === 'auto')
    parts.logger.info({ engine: choice.engine, why: choice.why }, 'ingress.tls_engine "auto" chose its engine');
  // The native engine lives in worker threads only: with workers = 1 (named explicitly) it is one worker thread.
  const native = choice.engine === 'native';
  if (config.ingress.workers === 1 && !native) return undefined;
  const { IngressWorkers, ingressWorkerCount } = await import('./ingress/ingress-workers.js');
  const { count, reason } = ingressWorkerCount(config.ingress.workers, {
    acme: config.tls.enabled && config.tls.acme.enabled,
    nativeUnavailable: unavailable,
  });
  if (reason) parts.logger.warn({ workers: config.ingress.workers, reason }, 'ingress runs in the main thread only');
  if (count <= 1 && !native) return undefined;
  const { DEFAULT_ISSUE_TIMEOUT_MS } = await import('./tls/certificate-store.js');
  const { tls } = config;
  return IngressWorkers.start({
    ...config.ingress,
    tlsEngine: choice.engine,
    workers: count,
    logger: parts.logger,
    nsm: parts.nsm,
    tls: parts.terminator && {
      terminator: parts.terminator,
      settings: {
        sniNonceEncoding: tls.sniNonceEncoding,
        alpn: tls.alpn,
        handshakeTimeoutMs: tls.handshakeTimeoutMs,
        nonceCacheSize: tls.nonceCacheSize,
        maxPendingIssues: tls.maxNonceIssues,
        issueTimeoutMs: DEFAULT_ISSUE_TIMEOUT_MS,
      },
    },
  });
}

async function openNsm(config: RuntimeConfig, logger: Logger): Promise<Nsm> {
  if (config.attestation.mode === 'simulated') {
    const { openSimulatedNsm } = await import('./attestation/sim-nsm.js');
    const { simulated } = config.attestation;
    const nsm = await openSimulatedNsm({
      stateDir: config.runtime.stateDir,
      pcrs: simulated.pcrs,
      debug: simulated.debug,
      moduleId: simulated.moduleId,
    });
    logger.warn(
      { root: `${config.runtime.stateDir}/sim-nsm-root.pem` },
      'using the SIMULATED NSM: documents prove nothing outside tests',
    );
    return nsm;
  }
  const { openDeviceNsm } = await import('./attestation/nsm-device.js');
  return openDeviceNsm(config.attestation.device);
}
