import { mkdir } from 'node:fs/promises';
import { startAttestationApi } from './attestation/attestation-api.js';
import type { Nsm } from './attestation/nsm.js';
import { formatAddress } from './bridge/address.js';
import { Ingress } from './bridge/ingress.js';
import type { Mode } from './config/field.js';
import type { RuntimeConfig } from './config/schema.js';
import { HealthMonitor } from './health.js';
import type { Logger } from './log.js';
import type { TlsTerminator } from './tls/tls-terminator.js';

type Closer = () => Promise<void>;

/**
 * The data plane of one enclave: the NSM, the internal API, TLS and ingress, started in
 * dependency order and stopped in reverse. `run` and `dev` differ only in the config they pass.
 */
export class Runtime {
  readonly config: RuntimeConfig;
  readonly health: HealthMonitor;
  readonly ingress: Ingress | undefined;
  readonly nsm: Nsm;
  readonly #logger: Logger;
  readonly #closers: Closer[];

  private constructor(parts: { config: RuntimeConfig; health: HealthMonitor; ingress: Ingress | undefined; nsm: Nsm; logger: Logger; closers: Closer[] }) {
    this.config = parts.config;
    this.health = parts.health;
    this.ingress = parts.ingress;
    this.nsm = parts.nsm;
    this.#logger = parts.logger;
    this.#closers = parts.closers;
  }

  /** Starts every enabled part; on a failure, stops what had started and rethrows. */
  static async start(config: RuntimeConfig, mode: Mode, logger: Logger): Promise<Runtime> {
    const closers: Closer[] = [];
    try {
      await mkdir(config.runtime.stateDir, { recursive: true, mode: 0o700 });
      const nsm = await openNsm(config, logger);
      closers.push(() => nsm.close());

      const health = new HealthMonitor({ app: config.ingress.app, logger });
      closers.push(async () => health.stop());

      const api = await startAttestationApi({
        listen: { host: config.attestation.apiListen.host, port: config.attestation.apiListen.port },
        nsm,
        logger,
        health: () => health.report(),
      });
      closers.push(() => api.close());
      logger.info({ listen: `tcp:${api.address.host}:${api.address.port}` }, 'internal API listening');

      if (config.egress.enabled) {
        const { startEgress } = await import('./egress/egress-service.js');
        const egress = await startEgress(config.egress, logger);
        closers.push(() => egress.close());
        health.watchEgress(() => egress.health());
      }

      let terminator: TlsTerminator | undefined;
      if (config.tls.enabled) {
        const { TlsTerminator } = await import('./tls/tls-terminator.js');
        terminator = await TlsTerminator.create({
          nsm,
          stateDir: config.runtime.stateDir,
          serverName: config.tls.serverName,
          sniNonceEncoding: config.tls.sniNonceEncoding,
          nonceCacheSize: config.tls.nonceCacheSize,
          alpn: config.tls.alpn,
          logger,
        });
        const tls = terminator;
        closers.push(async () => tls.close());
      }

      let ingress: Ingress | undefined;
      if (config.ingress.enabled) {
        ingress = await Ingress.start({ ...config.ingress, logger, terminator });
        const started = ingress;
        closers.push(() => started.stop(config.runtime.shutdownGraceMs));
      }
      health.watch({ ingress, nsm, tls: config.tls.enabled });
      logger.info({ mode, nsm: nsm.kind, tls: config.tls.enabled }, 'runtime ready');
      return new Runtime({ config, health, ingress, nsm, logger, closers });
    } catch (error) {
      await closeAll(closers, logger);
      throw error;
    }
  }

  /** Stops accepting, drains ingress for up to runtime.shutdown_grace_ms, then closes the rest. */
  async stop(): Promise<void> {
    this.#logger.info({ graceMs: this.config.runtime.shutdownGraceMs }, 'runtime stopping');
    await closeAll(this.#closers, this.#logger);
    this.#logger.info('runtime stopped');
  }

  /** Where ingress listens, for tests and start-up lines. */
  get ingressAddress(): string | undefined {
    return this.ingress ? formatAddress(this.ingress.address) : undefined;
  }
}

async function openNsm(config: RuntimeConfig, logger: Logger): Promise<Nsm> {
  if (config.attestation.mode === 'simulated') {
    const { openSimulatedNsm } = await import('./attestation/sim-nsm.js');
    const { simulated } = config.attestation;
    const nsm = await openSimulatedNsm({ stateDir: config.runtime.stateDir, pcrs: simulated.pcrs, debug: simulated.debug, moduleId: simulated.moduleId });
    logger.warn({ root: `${config.runtime.stateDir}/sim-nsm-root.pem` }, 'using the SIMULATED NSM: documents prove nothing outside tests');
    return nsm;
  }
  const { openDeviceNsm } = await import('./attestation/nsm-device.js');
  return openDeviceNsm(config.attestation.device);
}

/** Closes in reverse start order; one part failing to close does not keep the others open. */
async function closeAll(closers: Closer[], logger: Logger): Promise<void> {
  for (const close of closers.reverse()) {
    try {
      await close();
    } catch (error) {
      logger.error({ err: { message: (error as Error).message } }, 'error while stopping');
    }
  }
  closers.length = 0;
}
