/**
 * The runtime's metrics: the registry, and the meters wrapped around its parts (the NSM, the TLS
 * terminator) or read from them at scrape time (ingress stats, egress counters, health, the app).
 */
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import type { Nsm } from '../attestation/nsm.js';
import type { IngressView, StreamTerminator } from '../ingress/ingress.js';
import type { HandshakeFigures, IngressWorkers } from '../ingress/ingress-workers.js';
import type { EgressCounters } from '../egress/egress-audit.js';
import type { HealthReport } from './health.js';
import { registerEgressMetrics } from './egress-metrics.js';
import { registerFleetMetrics } from './fleet-metrics.js';
import { registerProcessMetrics } from './process-metrics.js';
import { MetricsRegistry, type Counter, type Histogram } from './registry.js';

export interface AppFigures {
  restarts: number;
  running: boolean;
}

export class RuntimeMetrics {
  readonly registry = new MetricsRegistry();
  readonly #handshakes: Counter;
  readonly #handshakeSeconds: Histogram;
  readonly #attestations: Counter;
  readonly #attestationSeconds: Histogram;
  readonly #stopProcess: () => void;
  #ingress: IngressView | undefined;
  #egress: Readonly<EgressCounters> | undefined;
  #fleet: (() => { reachable: number; known: number }) | undefined;
  #health: (() => HealthReport) | undefined;
  #app: (() => AppFigures) | undefined;
  #orphans: (() => number) | undefined;

  constructor(info: { version: string; mode: string }) {
    const r = this.registry;
    r.collected('enclave_runtime_info', 'the runtime version and mode (always 1)', 'gauge', () => [
      { labels: info, value: 1 },
    ]);
    r.collected(
      'enclave_ingress_connections_accepted_total',
      'ingress connections accepted',
      'counter',
      () => this.#ingress?.stats.accepted ?? 0,
    );
    r.collected(
      'enclave_ingress_connections_active',
      'ingress connections open now',
      'gauge',
      () => this.#ingress?.stats.active ?? 0,
    );
    r.collected(
      'enclave_ingress_connections_refused_total',
      'ingress connections closed without reaching the app, by reason',
      'counter',
      () => {
        const stats = this.#ingress?.stats;
        return [
          { labels: { reason: 'max_connections' }, value: stats?.refusedOverCap ?? 0 },
          { labels: { reason: 'bad_proxy_header' }, value: stats?.badProxyHeader ?? 0 },
          { labels: { reason: 'app_unreachable' }, value: stats?.appUnreachable ?? 0 },
        ];
      },
    );
    this.#handshakes = r.counter('enclave_tls_handshakes_total', 'TLS handshakes on ingress by result (ok, failed)', [
      'result',
    ]);
    this.#handshakeSeconds = r.histogram(
      'enclave_tls_handshake_duration_seconds',
      'time from accepting to a finished TLS handshake',
    );
    this.#attestations = r.counter(
      'enclave_attestation_requests_total',
      'NSM attestation calls (API and certificates) by result (ok, error)',
      ['result'],
    );
    this.#attestationSeconds = r.histogram(
      'enclave_attestation_duration_seconds',
      'time one NSM attestation call takes',
    );
    registerEgressMetrics(r, () => this.#egress);
    registerFleetMetrics(r, () => this.#fleet?.());
    r.collected('enclave_health_up', 'each part of /health: 1 ok, 0 not', 'gauge', () => {
      const report = this.#health?.();
      return report
        ? Object.entries(report.parts).map(([part, health]) => ({ labels: { part }, value: health.ok ? 1 : 0 }))
        : undefined;
    });
    r.collected(
      'enclave_app_restarts_total',
      "restarts of the customer's command",
      'counter',
      () => this.#app?.().restarts ?? 0,
    );
    r.collected('enclave_app_running', "1 while the customer's command runs", 'gauge', () =>
      this.#app?.().running ? 1 : 0,
    );
    r.collected(
      'enclave_init_orphans_reaped_total',
      'orphaned processes reaped by the runtime as PID 1',
      'counter',
      () => this.#orphans?.() ?? 0,
    );
    this.#stopProcess = registerProcessMetrics(r);
  }

  /** An Nsm whose attest() calls are counted and timed. */
  meterNsm(nsm: Nsm): Nsm {
    const attest: Nsm['attest'] = async (request) => {
      const started = performance.now();
      try {
        const document = await nsm.attest(request);
        this.#attestations.inc({ result: 'ok' });
        return document;
      } catch (error) {
        this.#attestations.inc({ result: 'error' });
        throw error;
      } finally {
        this.#attestationSeconds.observe((performance.now() - started) / 1000);
      }
    };
    return {
      kind: nsm.kind,
      attest,
      describePcr: (index) => nsm.describePcr(index),
      getRandom: () => nsm.getRandom(),
      close: () => nsm.close(),
    };
  }

  /** A terminator whose handshakes are counted and timed: 'secure' is ok, closing before it is failed. */
  meterTerminator(terminator: StreamTerminator): StreamTerminator {
    return {
      wrap: (socket: Duplex) => {
        const started = performance.now();
        const tls = terminator.wrap(socket);
        let secured = false;
        tls.once('secure', () => {
          secured = true;
          this.#handshakes.inc({ result: 'ok' });
          this.#handshakeSeconds.observe((performance.now() - started) / 1000);
        });
        tls.once('close', () => {
          if (!secured) this.#handshakes.inc({ result: 'failed' });
        });
        return tls;
      },
      ...(terminator.established ? { established: terminator.established.bind(terminator) } : {}),
      ...(terminator.attestationFor ? { attestationFor: terminator.attestationFor.bind(terminator) } : {}),
    };
  }

  /** Reads the ingress counters at scrape time. */
  watchIngress(ingress: IngressView | undefined): void {
    this.#ingress = ingress;
  }

  /**
   * Ingress worker threads: their handshakes are folded into the handshake metrics at each scrape,
   * and their per-thread series registered.
   */
  watchIngressWorkers(workers: IngressWorkers): void {
    workers.registerMetrics(this.registry);
    let last: HandshakeFigures = { ok: 0, failed: 0, sum: 0, count: 0, buckets: [] };
    this.registry.beforeRender(() => {
      const now = workers.handshakes();
      this.#handshakes.inc({ result: 'ok' }, Math.max(0, now.ok - last.ok));
      this.#handshakes.inc({ result: 'failed' }, Math.max(0, now.failed - last.failed));
      this.#handshakeSeconds.add({
        buckets: now.buckets.map((n, i) => n - (last.buckets[i] ?? 0)),
        sum: now.sum - last.sum,
        count: now.count - last.count,
      });
      last = now;
    });
  }

  /** Reads egress's live counters at scrape time. */
  /** Reads the fleet's peer counts at scrape time (exchanges are counted from the diagnostics channel). */
  watchFleet(peers: () => { reachable: number; known: number }): void {
    this.#fleet = peers;
  }

  watchEgress(counters: Readonly<EgressCounters>): void {
    this.#egress = counters;
  }

  /** Reads /health's parts at scrape time. */
  watchHealth(report: () => HealthReport): void {
    this.#health = report;
  }

  /** Reads the customer command's restarts and state at scrape time. */
  watchApp(figures: () => AppFigures): void {
    this.#app = figures;
  }

  /** Reads the PID 1 reaper's count at scrape time. */
  watchOrphans(reaped: () => number): void {
    this.#orphans = reaped;
  }

  /** Stops the event loop sampler. */
  close(): void {
    this.#stopProcess();
  }
}
