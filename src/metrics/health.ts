import { createAppProbe, type AppProbe } from '../app/app-probe.js';
import type { Nsm } from '../attestation/nsm.js';
import { formatAddress, type Address } from '../net/address.js';
import type { IngressView } from '../ingress/ingress.js';
import type { Logger } from '../core/log.js';

export interface PartHealth {
  ok: boolean;
  detail: string;
  /** Running totals a part keeps (egress: queries and connections allowed and refused). */
  counters?: Record<string, number>;
}

export interface HealthReport {
  status: 'ok' | 'degraded';
  parts: Record<string, PartHealth>;
}

export interface HealthOptions {
  app: Address;
  logger: Logger;
  probeIntervalMs?: number;
  probeTimeoutMs?: number;
  /** How the app is probed (`[app] healthcheck`); default: a connect to `app`. */
  probe?: AppProbe;
  /**
   * From watch() on, how long an app that has never been up is still starting, not down: no
   * warning is logged for it meanwhile (`[app] healthcheck_grace_ms`). /health says "starting".
   */
  startupGraceMs?: number;
}

/**
 * Tracks each part's state for GET /health. The app is probed by a plain connect on its port,
 * so an unmodified app needs no health endpoint; a transition is logged once, not every probe.
 * The first probe runs before the app can have bound its port, so "app is down" is only said of
 * an app that has been up once, or that is still not up when the start-up grace is over.
 */
export class HealthMonitor {
  readonly #options: Required<HealthOptions>;
  #ingress: IngressView | undefined;
  #nsm: Nsm | undefined;
  #appUp: boolean | undefined;
  #appDetail = 'not probed yet';
  /** When start-up grace ends; undefined once the app has been up, or the grace has run out. */
  #graceEndsAt: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #probing = false;
  #egress: (() => PartHealth) | undefined;
  #acme: (() => PartHealth) | undefined;
  #fleet: (() => PartHealth) | undefined;
  #attestation: (() => PartHealth) | undefined;

  constructor(options: HealthOptions) {
    this.#options = {
      probeIntervalMs: 2000,
      probeTimeoutMs: 1000,
      probe: createAppProbe('', options.app),
      startupGraceMs: 30_000,
      ...options,
    };
  }

  /** Starts probing the app and reporting on the given parts. */
  watch(parts: { ingress: IngressView | undefined; nsm: Nsm; tls: boolean }): void {
    this.#ingress = parts.ingress;
    this.#nsm = parts.nsm;
    this.#graceEndsAt = Date.now() + this.#options.startupGraceMs;
    void this.probeApp();
    this.#timer = setInterval(() => void this.probeApp(), this.#options.probeIntervalMs);
    this.#timer.unref();
  }

  /** Reports egress from `provider` instead of 'disabled'. */
  watchEgress(provider: () => PartHealth): void {
    this.#egress = provider;
  }

  /** Reports attestation from `provider` (the NSM's recent calls) instead of just naming the NSM. */
  watchAttestation(provider: () => PartHealth): void {
    this.#attestation = provider;
  }

  /** Adds an `acme` part (only when [tls.acme] is on) reported by `provider`. */
  watchAcme(provider: () => PartHealth): void {
    this.#acme = provider;
  }

  /** Adds a `fleet` part (only when [fleet] is on): peers reachable, last sync, joined or not. */
  watchFleet(provider: () => PartHealth): void {
    this.#fleet = provider;
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  /** One probe of the app (connect, or `[app] healthcheck`); the result is the app's health until the next probe. */
  async probeApp(): Promise<boolean> {
    if (this.#probing) return this.#appUp ?? false;
    this.#probing = true;
    let up: boolean;
    try {
      const result = await this.#options.probe.probe(this.#options.probeTimeoutMs);
      up = result.up;
      this.#appDetail = result.detail;
    } finally {
      this.#probing = false;
    }
    const starting = !up && this.#graceEndsAt !== undefined && Date.now() < this.#graceEndsAt;
    if (starting) {
      this.#appDetail = `starting: ${this.#appDetail}`;
      return false;
    }
    const log = { app: formatAddress(this.#options.app), probe: this.#options.probe.target, detail: this.#appDetail };
    if (!up && this.#graceEndsAt !== undefined) {
      this.#options.logger.warn({ ...log, graceMs: this.#options.startupGraceMs }, 'app is down');
    } else if (up !== this.#appUp) {
      this.#options.logger[up ? 'info' : 'warn'](log, up ? 'app is up' : 'app is down');
    }
    this.#graceEndsAt = undefined;
    this.#appUp = up;
    return up;
  }

  /** The state of each part; any part not ok makes the whole degraded (503). */
  report(): HealthReport {
    const parts: Record<string, PartHealth> = {
      ingress: this.#ingress
        ? { ok: this.#ingress.listening, detail: ingressDetail(this.#ingress) }
        : { ok: true, detail: 'disabled' },
      attestation: this.#nsm
        ? (this.#attestation?.() ?? { ok: true, detail: `${this.#nsm.kind} NSM` })
        : { ok: false, detail: 'starting' },
      egress: this.#egress ? this.#egress() : { ok: true, detail: 'disabled' },
      app: { ok: this.#appUp === true, detail: this.#appDetail },
      ...(this.#acme ? { acme: this.#acme() } : {}),
      ...(this.#fleet ? { fleet: this.#fleet() } : {}),
    };
    const status = Object.values(parts).every((part) => part.ok) ? 'ok' : 'degraded';
    return { status, parts };
  }
}

function ingressDetail(ingress: IngressView): string {
  const open = `${ingress.stats.active} open connections`;
  return ingress.workers ? `${open}, ${ingress.workers.up}/${ingress.workers.total} worker threads up` : open;
}
