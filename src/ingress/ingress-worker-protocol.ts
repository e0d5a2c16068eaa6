/**
 * What the main thread and an ingress worker thread say to each other. Secure contexts cannot cross
 * threads, so certificates travel as PEM (key included: it stays inside this process) and each worker
 * rebuilds its own context. Counters travel through shared memory instead of messages, so a scrape of
 * /metrics reads exact figures without asking any worker.
 */
import type { Address } from '../net/address.js';
import type { AttestedCertificate } from '../tls/attested-certificate.js';
import type { TlsKeyPair } from '../tls/key-pair.js';
import type { IngressSettings, IngressStats } from './ingress.js';
import { DURATION_BUCKETS } from '../metrics/registry.js';

/** An AttestedCertificate and its key, as structured-clone data. */
export interface CertificateSnapshot {
  serverName: string;
  nonce: Uint8Array | null;
  document: Uint8Array;
  certPem: string;
  chainPem: string;
  keyPem: string;
  issuedAt: number;
  certificateNotAfter: number;
  documentNotAfter: number;
  expiresAt: number;
}

export interface WorkerTlsSettings {
  sniNonceEncoding: 'hex' | 'base64';
  alpn: string[];
  handshakeTimeoutMs: number;
  nonceCacheSize: number;
  maxPendingIssues: number;
  /** How long a handshake waits for the main thread's nonce certificate before it gets the base one. */
  issueTimeoutMs: number;
  nsmKind: 'device' | 'simulated';
  sourceKind: string;
  trustAnchorPem: string | undefined;
  base: CertificateSnapshot;
}

export interface WorkerInit {
  index: number;
  /** This worker's own duplicate of the listening fd. */
  fd: number;
  backlog: number;
  settings: IngressSettings;
  logLevel: string;
  tls: WorkerTlsSettings | undefined;
  /** Float64 slots, laid out as STAT_SLOTS says; written by the worker, read by the main thread. */
  stats: SharedArrayBuffer;
  /** Int32 per worker: its open connections, -1 while it does not accept (the native engine's accept balance). */
  loads: SharedArrayBuffer;
}

export interface WireError {
  code: string | undefined;
  message: string;
}

export type ToMain =
  | { type: 'ready'; address: Address }
  | { type: 'nonce'; id: number; nonce: Uint8Array }
  | { type: 'attest'; id: number; userData: Uint8Array | undefined; nonce: Uint8Array | undefined }
  | { type: 'log'; line: string }
  | { type: 'stopped' };

export type ToWorker =
  | { type: 'certificate'; id: number; cert: CertificateSnapshot }
  | { type: 'document'; id: number; document: Uint8Array }
  | { type: 'failed'; id: number; error: WireError }
  | { type: 'base'; cert: CertificateSnapshot }
  | { type: 'stop'; graceMs: number };

const INGRESS_KEYS = [
  'accepted',
  'active',
  'refusedOverCap',
  'appUnreachable',
  'badProxyHeader',
  'wellKnownAnswered',
] as const satisfies ReadonlyArray<keyof IngressStats>;

/** Where each figure sits in a worker's stats buffer. */
export const STAT_SLOTS = {
  ingress: Object.fromEntries(INGRESS_KEYS.map((key, i) => [key, i])) as Record<keyof IngressStats, number>,
  handshakesOk: INGRESS_KEYS.length,
  handshakesFailed: INGRESS_KEYS.length + 1,
  handshakeSum: INGRESS_KEYS.length + 2,
  handshakeCount: INGRESS_KEYS.length + 3,
  /** DURATION_BUCKETS.length slots from here: observations <= each bucket's bound. */
  handshakeBuckets: INGRESS_KEYS.length + 4,
} as const;

export const STAT_SLOT_COUNT = STAT_SLOTS.handshakeBuckets + DURATION_BUCKETS.length;

export function newStatsBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(STAT_SLOT_COUNT * Float64Array.BYTES_PER_ELEMENT);
}

/** An IngressStats whose fields live in `slots` (the Ingress updates it like its own object). */
export function sharedIngressStats(slots: Float64Array): IngressStats {
  const stats = {} as IngressStats;
  for (const key of INGRESS_KEYS) {
    const at = STAT_SLOTS.ingress[key];
    Object.defineProperty(stats, key, {
      enumerable: true,
      get: () => slots[at] as number,
      set: (value: number) => {
        slots[at] = value;
      },
    });
  }
  return stats;
}

/** The ingress figures of one stats buffer, as a plain object. */
export function readIngressStats(slots: Float64Array): IngressStats {
  return Object.fromEntries(
    INGRESS_KEYS.map((key) => [key, slots[STAT_SLOTS.ingress[key]] as number]),
  ) as unknown as IngressStats;
}

export function snapshotCertificate(cert: AttestedCertificate, keyPair: TlsKeyPair): CertificateSnapshot {
  return {
    serverName: cert.serverName,
    nonce: cert.nonce,
    document: cert.document,
    certPem: cert.certPem,
    chainPem: cert.chainPem,
    keyPem: keyPair.privateKeyPem,
    issuedAt: cert.issuedAt.getTime(),
    certificateNotAfter: cert.certificateNotAfter.getTime(),
    documentNotAfter: cert.documentNotAfter.getTime(),
    expiresAt: cert.expiresAt.getTime(),
  };
}
