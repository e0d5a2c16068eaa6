/**
 * The entry of one ingress worker thread (see ingress-workers.ts): its own Ingress and TLS terminator
 * on its own duplicate of the listening fd. Nonce certificates and fresh attestation documents come
 * from the main thread, which owns the NSM; logs go to the main thread's logger; counters go to the
 * shared stats buffer.
 */
import { performance } from 'node:perf_hooks';
import type { Duplex } from 'node:stream';
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import type { LevelWithSilent } from 'pino';
import type { AttestationRequest, Nsm } from '../attestation/nsm.js';
import { errorCode, RuntimeError } from '../core/errors.js';
import { createLogger } from '../core/log.js';
import { DURATION_BUCKETS } from '../metrics/registry.js';
import { formatAddress } from '../net/address.js';
import { adoptListener } from '../net/shared-listener.js';
import { startHeapTrimmer } from '../native/heap-trimmer.js';
import type { CertificateSource } from '../tls/certificate-source.js';
import { TlsError } from '../tls/tls-error.js';
import type { TlsTerminator } from '../tls/tls-terminator.js';
import type { Ingress, StreamTerminator } from './ingress.js';
import {
  STAT_SLOTS,
  sharedIngressStats,
  type CertificateSnapshot,
  type ToMain,
  type ToWorker,
  type WorkerInit,
} from './ingress-worker-protocol.js';
import type { NativeTlsIngress } from './native-tls-ingress.js';
import type { WorkerCertificates } from './worker-certificates.js';

/** A fresh document for GET /.well-known/attestation?nonce= waits at most this long for the main thread. */
const ATTEST_TIMEOUT_MS = 30_000;
/** Beyond the main thread's own issue timeout, so its answer (a certificate or a failure) normally comes first. */
const ISSUE_TIMEOUT_MARGIN_MS = 1000;

if (parentPort === null) throw new RuntimeError('ERR_INGRESS_WORKER', 'ingress-worker.js runs only as a worker thread');
const port: MessagePort = parentPort;
const init = workerData as WorkerInit;
const send = (message: ToMain): void => port.postMessage(message);

const logger = createLogger(init.logLevel as LevelWithSilent, {
  write(line: string) {
    send({ type: 'log', line });
  },
});

const waiting = new Map<
  number,
  { resolve: (value: CertificateSnapshot | Uint8Array) => void; reject: (error: Error) => void; timer: NodeJS.Timeout }
>();
let nextId = 1;

function request<T extends CertificateSnapshot | Uint8Array>(
  message: (id: number) => ToMain,
  timeoutMs: number,
): Promise<T> {
  const id = nextId++;
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => {
      waiting.delete(id);
      reject(new TlsError('ERR_TLS_ISSUE_TIMEOUT', `no answer from the main thread within ${timeoutMs} ms`));
    }, timeoutMs);
    timer.unref();
    waiting.set(id, { resolve: resolve as (value: CertificateSnapshot | Uint8Array) => void, reject, timer });
    send(message(id));
  });
}

function settle(id: number, outcome: { value: CertificateSnapshot | Uint8Array } | { error: Error }): void {
  const waiter = waiting.get(id);
  if (!waiter) return;
  waiting.delete(id);
  clearTimeout(waiter.timer);
  if ('value' in outcome) waiter.resolve(outcome.value);
  else waiter.reject(outcome.error);
}

const slots = new Float64Array(init.stats);
let certificates: WorkerCertificates | undefined;
let stopping = false;
let ingress: Ingress | NativeTlsIngress | undefined;
// A base renewed while this worker starts (its certificates and ingress not made yet) is applied
// once they are: the main thread sends each renewal once.
let renewedBase: CertificateSnapshot | undefined;

function applyRenewedBase(): void {
  if (!renewedBase) return;
  certificates?.replaceBase(renewedBase);
  if (ingress && 'replaceBase' in ingress) ingress.replaceBase(renewedBase);
}
// This worker's closed sockets are freed only by a collection of its own isolate: the main thread's trimmer cannot.
const trimmer = startHeapTrimmer(logger, () => ingress?.stats.active ?? 0);

port.on('message', (message: ToWorker) => {
  switch (message.type) {
    case 'certificate':
      settle(message.id, { value: message.cert });
      return;
    case 'document':
      settle(message.id, { value: message.document });
      return;
    case 'failed':
      settle(message.id, {
        error: new RuntimeError(message.error.code ?? 'ERR_INGRESS_WORKER', message.error.message),
      });
      return;
    case 'base':
      renewedBase = message.cert;
      applyRenewedBase();
      return;
    case 'stop':
      void stop(message.graceMs);
      return;
  }
});

async function stop(graceMs: number): Promise<void> {
  if (stopping) return;
  stopping = true;
  try {
    // Asked to stop while still starting: the listener must not outlive the stop.
    await starting.catch(() => undefined);
    await ingress?.stop(graceMs);
  } finally {
    trimmer?.close();
    certificates?.close();
    send({ type: 'stopped' });
    port.close();
  }
}

/** The main thread's NSM, for fresh documents only: certificates are asked for whole. */
function mainThreadNsm(kind: Nsm['kind']): Nsm {
  const elsewhere = () =>
    Promise.reject(new RuntimeError('ERR_INGRESS_WORKER', 'only attest() reaches the NSM from an ingress worker'));
  return {
    kind,
    attest: (attestation: AttestationRequest) =>
      request<Uint8Array>(
        (id) => ({ type: 'attest', id, userData: attestation.userData, nonce: attestation.nonce }),
        ATTEST_TIMEOUT_MS,
      ),
    describePcr: elsewhere,
    getRandom: elsewhere,
    close: async () => undefined,
  };
}

/** The main thread's RuntimeMetrics.meterTerminator, counting into shared memory. */
function meterHandshakes(terminator: TlsTerminator<WorkerCertificates>): StreamTerminator {
  return {
    wrap: (socket: Duplex) => {
      const started = performance.now();
      const tls = terminator.wrap(socket);
      let secured = false;
      tls.once('secure', () => {
        secured = true;
        const seconds = (performance.now() - started) / 1000;
        slots[STAT_SLOTS.handshakesOk]! += 1;
        slots[STAT_SLOTS.handshakeSum]! += seconds;
        slots[STAT_SLOTS.handshakeCount]! += 1;
        DURATION_BUCKETS.forEach((bound, i) => {
          if (seconds <= bound) slots[STAT_SLOTS.handshakeBuckets + i]! += 1;
        });
      });
      tls.once('close', () => {
        if (!secured) slots[STAT_SLOTS.handshakesFailed]! += 1;
      });
      return tls;
    },
    established: (client) => terminator.established(client),
    attestationFor: (client, nonce) => terminator.attestationFor(client, nonce),
  };
}

/** A nonce certificate from the main thread, which keeps the one cache and single flight of the runtime. */
function askMainThread(issueTimeoutMs: number): (nonce: Uint8Array) => Promise<CertificateSnapshot> {
  return (nonce) =>
    request<CertificateSnapshot>((id) => ({ type: 'nonce', id, nonce }), issueTimeoutMs + ISSUE_TIMEOUT_MARGIN_MS);
}

async function start(): Promise<void> {
  let terminator: StreamTerminator | undefined;
  const tls = init.tls;
  // Each engine's modules are imported only by the workers that run it: a worker thread's heap
  // is its own, and Node's engine would add 1.7 MiB to each native worker for nothing.
  if (tls && init.settings.tlsEngine === 'native') {
    const { NativeTlsIngress } = await import('./native-tls-ingress.js');
    ingress = await NativeTlsIngress.start({
      fd: init.fd,
      settings: init.settings,
      tls,
      logger,
      slots,
      balance: { loads: new Int32Array(init.loads), index: init.index },
      ask: askMainThread(tls.issueTimeoutMs),
      onConnectionCount: trimmer && ((open) => trimmer.changed(open)),
    });
    applyRenewedBase();
    logger.info(
      { listen: formatAddress(ingress.address), app: formatAddress(init.settings.app), engine: 'native' },
      `ingress worker ${init.index} listening`,
    );
    send({ type: 'ready', address: ingress.address });
    return;
  }
  const { Ingress } = await import('./ingress.js');
  if (tls) {
    const [{ WorkerCertificates }, { TlsTerminator }, { contextSharingWorks }] = await Promise.all([
      import('./worker-certificates.js'),
      import('../tls/tls-terminator.js'),
      import('../tls/leaf-contexts.js'),
    ]);
    certificates = new WorkerCertificates(tls.base, {
      nonceCacheSize: tls.nonceCacheSize,
      maxPendingIssues: tls.maxPendingIssues,
      sharing: await contextSharingWorks(),
      ask: askMainThread(tls.issueTimeoutMs),
    });
    applyRenewedBase();
    const source: CertificateSource = {
      kind: tls.sourceKind,
      trustAnchorPem: tls.trustAnchorPem,
      issue: () => Promise.reject(new TlsError('ERR_TLS_ISSUE', 'ingress workers issue nothing themselves')),
      close: async () => undefined,
    };
    const terminatorForWorker = TlsTerminator.withCertificates(
      {
        nsm: mainThreadNsm(tls.nsmKind),
        logger,
        sniNonceEncoding: tls.sniNonceEncoding,
        alpn: tls.alpn,
        handshakeTimeoutMs: tls.handshakeTimeoutMs,
        source,
      },
      certificates,
    );
    terminator = meterHandshakes(terminatorForWorker);
  }
  ingress = await Ingress.start({
    ...init.settings,
    logger,
    name: `ingress worker ${init.index}`,
    terminator,
    stats: sharedIngressStats(slots),
    listener: (onConnection) => adoptListener(init.settings.listen, init.fd, onConnection, init.backlog),
    onConnectionCount: trimmer && ((open) => trimmer.changed(open)),
  });
  send({ type: 'ready', address: ingress.address });
}

const starting = start();
starting.catch((error: unknown) => {
  logger.error({ code: errorCode(error), reason: (error as Error).message }, 'ingress worker could not start');
  // An 'error' for the main thread, which logs it and restarts this worker with a backoff.
  throw error;
});
