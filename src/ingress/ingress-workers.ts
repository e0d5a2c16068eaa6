/**
 * Ingress on every core: N worker threads, each with its own Ingress and TLS terminator on its own
 * duplicate of one listening socket (shared-listener.ts), so the kernel spreads connections over
 * N event loops. Threads, not processes: an enclave's memory is fixed, and a thread shares the
 * code, the heap of the main thread's parts and the NSM.
 *
 * The main thread keeps what must be one per runtime: the NSM, the certificate store (its cache and
 * single flight, so one NSM call per nonce whichever workers ask), the internal API, health and
 * metrics. A worker that dies is logged and started again with a backoff; only its own connections
 * are lost, the others' listeners keep accepting meanwhile.
 */
import { existsSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import type { Nsm } from '../attestation/nsm.js';
import { backoffDelay } from '../core/backoff.js';
import { errorCode, RuntimeError } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { DURATION_BUCKETS, type MetricsRegistry } from '../metrics/registry.js';
import { formatAddress, type Address } from '../net/address.js';
import { openSharedListener, type SharedListener } from '../net/shared-listener.js';
import type { AttestedCertificate } from '../tls/attested-certificate.js';
import type { TlsTerminator } from '../tls/tls-terminator.js';
import { INGRESS_BACKLOG, type IngressSettings, type IngressStats } from './ingress.js';
import {
  STAT_SLOTS,
  newStatsBuffer,
  readIngressStats,
  snapshotCertificate,
  type ToMain,
  type ToWorker,
  type WireError,
  type WorkerInit,
  type WorkerTlsSettings,
} from './ingress-worker-protocol.js';

/** The most worker threads `ingress.workers` may ask for. */
export const MAX_INGRESS_WORKERS = 64;
/** First wait before a crashed worker is started again; doubles per crash in a row up to the cap. */
const RESTART_BASE_MS = 500;
const RESTART_CAP_MS = 30_000;
/** A worker that ran this long before dying starts its backoff afresh. */
const STABLE_AFTER_MS = 60_000;
/** How often a renewed base certificate is looked for, to hand it to the workers. */
const BASE_CHECK_MS = 1000;
/** Past the shutdown grace, a worker that has not finished stopping is terminated. */
const STOP_MARGIN_MS = 2000;

/**
 * The worker entry: beside this module in the single-file bundle (`lib/ingress-worker.mjs`), else
 * the compiled ingress-worker.js next to this file. Undefined when neither is there.
 */
export function ingressWorkerFile(): string | undefined {
  const here = dirname(fileURLToPath(import.meta.url));
  return [join(here, 'ingress-worker.mjs'), join(here, 'ingress-worker.js')].find((path) => existsSync(path));
}

/**
 * How many ingress threads to run for `workers` (0 = one per CPU): 1 means the single-threaded
 * ingress in the main thread. The reason is given when a larger count cannot be honoured.
 */
export function ingressWorkerCount(
  workers: number,
  constraints: { acme: boolean; nativeUnavailable: string | undefined },
): { count: number; reason?: string } {
  const wanted = workers === 0 ? Math.min(availableParallelism(), MAX_INGRESS_WORKERS) : workers;
  if (wanted <= 1) return { count: 1 };
  // ACME's certificates and TLS-ALPN-01 answers live in the main thread's AcmeCertificates.
  if (constraints.acme)
    return { count: 1, reason: 'tls.acme is enabled: its certificates are served from the main thread only' };
  if (constraints.nativeUnavailable !== undefined)
    return { count: 1, reason: `sharing the listener needs the addon: ${constraints.nativeUnavailable}` };
  if (ingressWorkerFile() === undefined) return { count: 1, reason: 'the ingress worker entry file is missing' };
  return { count: wanted };
}

export interface IngressWorkersOptions extends IngressSettings {
  /** Worker threads to run (at least 2, as 1 is the plain Ingress; or 1 with tlsEngine 'native'). */
  workers: number;
  logger: Logger;
  /** The main thread's NSM: fresh documents for GET /.well-known/attestation?nonce= in workers. */
  nsm: Nsm;
  /** With TLS: the main thread's terminator (its store issues every certificate) and the settings workers copy. */
  tls?:
    | {
        terminator: TlsTerminator;
        settings: Omit<WorkerTlsSettings, 'base' | 'nsmKind' | 'sourceKind' | 'trustAnchorPem'>;
      }
    | undefined;
  /** Restart backoff, base and cap in ms (tests shorten it). */
  restartBackoffMs?: { base: number; cap: number };
  /** The worker entry (default ingressWorkerFile()). */
  workerFile?: string;
}

/** Handshake counts summed over the workers, in the shape of RuntimeMetrics' handshake metrics. */
export interface HandshakeFigures {
  ok: number;
  failed: number;
  sum: number;
  count: number;
  /** Per DURATION_BUCKETS bound: observations at or below it. */
  buckets: number[];
}

interface Slot {
  readonly index: number;
  readonly slots: Float64Array;
  readonly stats: SharedArrayBuffer;
  worker: Worker | undefined;
  up: boolean;
  startedAt: number;
  crashes: number;
  lastError: Error | undefined;
  restartTimer: NodeJS.Timeout | undefined;
  onReady: ((error?: Error) => void) | undefined;
  exited: Promise<void>;
}

export class IngressWorkers {
  readonly #options: IngressWorkersOptions;
  readonly #listener: SharedListener;
  readonly #workerFile: string;
  readonly #slots: Slot[];
  /** Each worker's open connections, -1 while it does not accept: the native engine's accept balance. */
  readonly #loads: SharedArrayBuffer;
  readonly #logger: Logger;
  #lastBase: AttestedCertificate | undefined;
  #baseTimer: NodeJS.Timeout | undefined;
  #stopping = false;
  #started = false;
  #restarts = 0;

  private constructor(options: IngressWorkersOptions, listener: SharedListener, workerFile: string) {
    this.#options = options;
    this.#listener = listener;
    this.#workerFile = workerFile;
    this.#logger = options.logger;
    this.#loads = new SharedArrayBuffer(options.workers * Int32Array.BYTES_PER_ELEMENT);
    new Int32Array(this.#loads).fill(-1);
    this.#slots = Array.from({ length: options.workers }, (_, index) => {
      const stats = newStatsBuffer();
      return {
        index,
        stats,
        slots: new Float64Array(stats),
        worker: undefined,
        up: false,
        startedAt: 0,
        crashes: 0,
        lastError: undefined,
        restartTimer: undefined,
        onReady: undefined,
        exited: Promise.resolve(),
      };
    });
  }

  /** Binds the listener and starts every worker; resolves once all accept, fails (and cleans up) if one cannot. */
  static async start(options: IngressWorkersOptions): Promise<IngressWorkers> {
    // One thread is the plain Ingress in the main thread, except for the native engine, which lives in workers only.
    const least = options.tlsEngine === 'native' ? 1 : 2;
    if (!Number.isInteger(options.workers) || options.workers < least || options.workers > MAX_INGRESS_WORKERS) {
      throw new RuntimeError(
        'ERR_INGRESS_WORKER',
        `ingress.workers: ${options.workers} threads cannot be started (${least}..${MAX_INGRESS_WORKERS})`,
      );
    }
    const workerFile = options.workerFile ?? ingressWorkerFile();
    if (workerFile === undefined)
      throw new RuntimeError('ERR_INGRESS_WORKER', 'the ingress worker entry file is missing');
    const listener = await openSharedListener(options.listen, INGRESS_BACKLOG);
    const workers = new IngressWorkers(options, listener, workerFile);
    try {
      await Promise.all(workers.#slots.map((slot) => workers.#spawn(slot)));
    } catch (error) {
      await workers.stop(0);
      throw error;
    }
    workers.#started = true;
    if (options.tls) {
      workers.#lastBase = options.tls.terminator.store.base;
      workers.#baseTimer = setInterval(() => workers.#shareRenewedBase(), BASE_CHECK_MS);
      workers.#baseTimer.unref();
    }
    options.logger.info(
      { listen: formatAddress(listener.address), app: formatAddress(options.app), workers: options.workers },
      'ingress listening',
    );
    return workers;
  }

  get address(): Address {
    return this.#listener.address;
  }

  /** True while at least one worker accepts. */
  get listening(): boolean {
    return this.#slots.some((slot) => slot.up);
  }

  get workers(): { up: number; total: number } {
    return { up: this.#slots.filter((slot) => slot.up).length, total: this.#slots.length };
  }

  /** Workers started again after dying. */
  get restarts(): number {
    return this.#restarts;
  }

  /** The counters of all workers, summed. */
  get stats(): IngressStats {
    const total = readIngressStats(new Float64Array(STAT_SLOTS.handshakeBuckets));
    for (const one of this.workerStats()) {
      for (const key of Object.keys(total) as Array<keyof IngressStats>) total[key] += one[key];
    }
    return total;
  }

  /** Each worker's counters, by worker index. */
  workerStats(): IngressStats[] {
    return this.#slots.map((slot) => readIngressStats(slot.slots));
  }

  handshakes(): HandshakeFigures {
    const figures: HandshakeFigures = { ok: 0, failed: 0, sum: 0, count: 0, buckets: DURATION_BUCKETS.map(() => 0) };
    for (const { slots } of this.#slots) {
      figures.ok += slots[STAT_SLOTS.handshakesOk] as number;
      figures.failed += slots[STAT_SLOTS.handshakesFailed] as number;
      figures.sum += slots[STAT_SLOTS.handshakeSum] as number;
      figures.count += slots[STAT_SLOTS.handshakeCount] as number;
      figures.buckets.forEach((_, i) => {
        figures.buckets[i]! += slots[STAT_SLOTS.handshakeBuckets + i] as number;
      });
    }
    return figures;
  }

  /** Per-worker series on /metrics: threads up, restarts, connections accepted by each. */
  registerMetrics(registry: MetricsRegistry): void {
    registry.collected(
      'enclave_ingress_workers_up',
      'ingress worker threads accepting now',
      'gauge',
      () => this.workers.up,
    );
    registry.collected(
      'enclave_ingress_worker_restarts_total',
      'ingress worker threads started again after dying',
      'counter',
      () => this.#restarts,
    );
    registry.collected(
      'enclave_ingress_worker_connections_accepted_total',
      'ingress connections accepted, by worker thread',
      'counter',
      () => this.workerStats().map((stats, i) => ({ labels: { worker: String(i) }, value: stats.accepted })),
    );
  }

  /** Kills one worker as a crash would (tests: it must be logged and started again). */
  async terminateWorker(index: number): Promise<void> {
    await this.#slots[index]?.worker?.terminate();
  }

  /** Stops accepting everywhere; each worker drains within `graceMs`, then its last connections are cut. */
  async stop(graceMs: number): Promise<void> {
    this.#stopping = true;
    if (this.#baseTimer) clearInterval(this.#baseTimer);
    for (const slot of this.#slots) {
      if (slot.restartTimer) clearTimeout(slot.restartTimer);
      slot.restartTimer = undefined;
    }
    await this.#listener.close();
    await Promise.all(
      this.#slots.map(async (slot) => {
        const worker = slot.worker;
        if (!worker) return;
        worker.postMessage({ type: 'stop', graceMs } satisfies ToWorker);
        const timer = setTimeout(() => void worker.terminate(), graceMs + STOP_MARGIN_MS);
        await slot.exited;
        clearTimeout(timer);
      }),
    );
  }

  #spawn(slot: Slot): Promise<void> {
    const {
      logger: _logger,
      nsm: _nsm,
      tls,
      workers: _workers,
      restartBackoffMs: _backoff,
      workerFile: _file,
      ...settings
    } = this.#options;
    const fd = this.#listener.dup();
    const init: WorkerInit = {
      index: slot.index,
      fd,
      backlog: INGRESS_BACKLOG,
      // max_connections is the runtime's: each worker takes its share.
      settings: {
        ...settings,
        listen: this.#listener.address,
        maxConnections: Math.max(1, Math.floor(settings.maxConnections / this.#slots.length)),
      },
      logLevel: this.#logger.level,
      tls: tls && {
        ...tls.settings,
        nsmKind: this.#options.nsm.kind,
        sourceKind: tls.terminator.source.kind,
        trustAnchorPem: tls.terminator.trustAnchorPem,
        base: this.#snapshot(tls.terminator.store.base),
      },
      stats: slot.stats,
      loads: this.#loads,
    };
    // The fd belongs to the worker from here on: its listener closes it, and so does the end of the thread.
    // (A worker that dies before adopting it leaks that one fd; restarts are backed off, so these stay few.)
    const worker = new Worker(this.#workerFile, { workerData: init });
    slot.worker = worker;
    slot.up = false;
    slot.lastError = undefined;
    slot.startedAt = Date.now();
    let exited!: () => void;
    slot.exited = new Promise((resolve) => (exited = resolve));
    const ready = new Promise<void>((resolve, reject) => {
      slot.onReady = (error) => (error ? reject(error) : resolve());
    });
    worker.on('message', (message: ToMain) => this.#onMessage(slot, worker, message));
    worker.on('error', (error) => {
      slot.lastError = error;
    });
    worker.on('exit', (code) => {
      this.#onExit(slot, worker, code);
      exited();
    });
    return ready;
  }

  #onMessage(slot: Slot, worker: Worker, message: ToMain): void {
    switch (message.type) {
      case 'ready':
        slot.up = true;
        slot.onReady?.();
        slot.onReady = undefined;
        return;
      case 'log':
        this.#relayLog(slot.index, message.line);
        return;
      case 'nonce':
        this.#issue(worker, message.id, message.nonce);
        return;
      case 'attest':
        this.#options.nsm.attest({ userData: message.userData, nonce: message.nonce }).then(
          (document) => worker.postMessage({ type: 'document', id: message.id, document } satisfies ToWorker),
          (error: unknown) =>
            worker.postMessage({ type: 'failed', id: message.id, error: wireError(error) } satisfies ToWorker),
        );
        return;
      case 'stopped':
        slot.up = false;
        return;
    }
  }

  #issue(worker: Worker, id: number, nonce: Uint8Array): void {
    const tls = this.#options.tls;
    if (!tls) {
      worker.postMessage({
        type: 'failed',
        id,
        error: { code: 'ERR_INGRESS_WORKER', message: 'TLS is off' },
      } satisfies ToWorker);
      return;
    }
    tls.terminator.store.forNonce(nonce).then(
      (cert) => worker.postMessage({ type: 'certificate', id, cert: this.#snapshot(cert) } satisfies ToWorker),
      (error: unknown) => worker.postMessage({ type: 'failed', id, error: wireError(error) } satisfies ToWorker),
    );
  }

  #snapshot(cert: AttestedCertificate) {
    const keyPair = this.#options.tls?.terminator.store.keyPairOf(cert);
    if (!keyPair) throw new RuntimeError('ERR_INGRESS_WORKER', 'a certificate without its key cannot go to a worker');
    return snapshotCertificate(cert, keyPair);
  }

  #shareRenewedBase(): void {
    const base = this.#options.tls?.terminator.store.base;
    if (!base || base === this.#lastBase) return;
    this.#lastBase = base;
    const message: ToWorker = { type: 'base', cert: this.#snapshot(base) };
    for (const slot of this.#slots) slot.worker?.postMessage(message);
  }

  #onExit(slot: Slot, worker: Worker, code: number): void {
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    slot.up = false;
    // Its connections died with it, and its siblings must not leave new ones to it.
    slot.slots[STAT_SLOTS.ingress.active] = 0;
    Atomics.store(new Int32Array(this.#loads), slot.index, -1);
    const reason = slot.lastError?.message ?? `exit code ${code}`;
    if (slot.onReady) {
      slot.onReady(new RuntimeError('ERR_INGRESS_WORKER', `ingress worker ${slot.index} did not start: ${reason}`));
      slot.onReady = undefined;
    }
    // A worker failing at start fails start(), which stops the others: nothing to restart.
    if (this.#stopping || !this.#started) return;
    slot.crashes = Date.now() - slot.startedAt >= STABLE_AFTER_MS ? 1 : slot.crashes + 1;
    const { base, cap } = this.#options.restartBackoffMs ?? { base: RESTART_BASE_MS, cap: RESTART_CAP_MS };
    const delayMs = backoffDelay(slot.crashes, base, cap);
    this.#logger.error(
      { worker: slot.index, code: errorCode(slot.lastError) ?? code, reason, restartInMs: delayMs },
      'ingress worker died; its connections are lost, starting it again',
    );
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (this.#stopping) return;
      this.#restarts += 1;
      this.#spawn(slot).then(
        () => this.#logger.info({ worker: slot.index }, 'ingress worker started again'),
        () => undefined, // its exit is handled (logged, backed off) like any other
      );
    }, delayMs);
  }

  #relayLog(index: number, line: string): void {
    let entry: Record<string, unknown>;
    try {
      entry = JSON.parse(line) as Record<string, unknown>;
    } catch {
      return;
    }
    const { level, msg, time: _time, pid: _pid, ...fields } = entry;
    const name = this.#logger.levels.labels[typeof level === 'number' ? level : 30] ?? 'info';
    const log = this.#logger[name as 'info'];
    if (typeof log === 'function')
      log.call(this.#logger, { ...fields, worker: index }, typeof msg === 'string' ? msg : '');
  }
}

function wireError(error: unknown): WireError {
  const code = errorCode(error);
  return { code: typeof code === 'string' ? code : undefined, message: (error as Error)?.message ?? String(error) };
}
