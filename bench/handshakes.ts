import { randomBytes } from 'node:crypto';
import tls from 'node:tls';
import { withTimeout, type Deadline, roundsWithin } from './budget.js';
import { RoundLog, median, rotated } from './stats.js';
import { SERVER_NAME, tlsClientOptions, type Subject } from './subject.js';
import { runHandshakeClient, type HandshakeClient, type HandshakerResult } from './handshake-client.js';

/** Handshakes in flight at once: enough to keep one server core busy while each waits on round trips. */
export const HANDSHAKE_CONCURRENCY = 16;
const HANDSHAKE_TIMEOUT_MS = 10_000;

export interface HandshakeRate {
  handshakes: number;
  seconds: number;
  perSecond: number;
  /** Server CPU milliseconds per handshake (its whole process, so the upstream connect counts too). */
  serverCpuMs: number;
  resumed: number;
  errors: number;
}

/**
 * New full handshakes, no resumption: every connection is fresh, with no session, to the base
 * certificate (or a new nonce each); the client closes cleanly as soon as it is secure and opens the
 * next. The chain is not verified on the client, so the client spends its time on the handshake itself.
 * With `load.client` the C client makes them (bench/handshake-client.ts), else Node's tls.connect.
 */
export async function handshakeRate(
  subject: Subject,
  durationMs: number,
  load: HandshakeLoad = {},
): Promise<HandshakeRate> {
  const cpuBefore = subject.cpuSeconds?.() ?? Number.NaN;
  const counts =
    load.client?.kind === 'c'
      ? await runHandshakeClient(
          load.client.path,
          subject.port,
          load.concurrency ?? HANDSHAKE_CONCURRENCY,
          durationMs,
          SERVER_NAME,
          load.newNonces === true,
        )
      : await nodeHandshakes(subject.port, durationMs, load);
  await subject.settle?.();
  const cpu = (subject.cpuSeconds?.() ?? Number.NaN) - cpuBefore;
  return {
    ...counts,
    perSecond: counts.handshakes / counts.seconds,
    serverCpuMs: (cpu * 1000) / counts.handshakes,
  };
}

/** handshakeRate's loop with Node's tls.connect: what the C client counts, counted the same way. */
async function nodeHandshakes(port: number, durationMs: number, load: HandshakeLoad): Promise<HandshakerResult> {
  let handshakes = 0;
  let resumed = 0;
  let errors = 0;
  const started = process.hrtime.bigint();
  const stopAt = Date.now() + durationMs;
  const options = tlsClientOptions(port, {});
  const worker = async () => {
    while (Date.now() < stopAt && errors < 100) {
      await new Promise<void>((resolve) => {
        const socket = tls.connect(load.newNonces ? { ...options, servername: newNonceServerName() } : options);
        const timer = setTimeout(() => socket.destroy(), HANDSHAKE_TIMEOUT_MS);
        socket.once('secureConnect', () => {
          handshakes++;
          if (socket.isSessionReused()) resumed++;
          socket.end();
        });
        socket.once('error', () => {
          errors++;
          socket.destroy();
        });
        socket.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  };
  await Promise.all(Array.from({ length: load.concurrency ?? HANDSHAKE_CONCURRENCY }, worker));
  return { handshakes, seconds: Number(process.hrtime.bigint() - started) / 1e9, resumed, errors };
}

/** An SNI asking for a certificate on a nonce never asked for before. */
function newNonceServerName(): string {
  return `${randomBytes(16).toString('hex')}.attest.${SERVER_NAME}`;
}

/** Who connects: with which client, how many at once (default HANDSHAKE_CONCURRENCY), each on a new nonce or not. */
export interface HandshakeLoad {
  client?: HandshakeClient | undefined;
  concurrency?: number;
  /** Each handshake asks for `<new nonce>.attest.<SERVER_NAME>`, not the base name. */
  newNonces?: boolean;
}

/** Client counts for the new-nonce rate: one alone, then several, to see whether issuance scales. */
export const NONCE_RATE_CLIENTS: readonly number[] = [1, 8];

export interface HandshakeRateOptions {
  subjects: readonly Subject[];
  /** The client making the handshakes (Node's tls.connect when not given). */
  client?: HandshakeClient | undefined;
  rounds: number;
  durationMs: number;
  deadline: Deadline;
  log: (line: string) => void;
}

export type NonceRateOptions = Omit<HandshakeRateOptions, 'subjects'> & { subject: Subject };

/** Rounds of handshakeRate over `loads`, taken in turns; keys: `<name>` in handshakes/s, `cpu:<name>` in server CPU ms per handshake. */
async function measureRates<T>(
  options: Omit<HandshakeRateOptions, 'subjects'>,
  loads: readonly T[],
  name: (load: T) => string,
  rate: (load: T, durationMs: number) => Promise<HandshakeRate>,
): Promise<RoundLog> {
  const log = new RoundLog();
  for (const round of roundsWithin(options)) {
    const line: string[] = [];
    for (const load of rotated(loads, round)) {
      const result = await rate(load, round === 0 ? options.durationMs / 2 : options.durationMs);
      if (result.resumed > 0 || result.errors > 0)
        options.log(`  ${name(load)}: ${result.resumed} resumed, ${result.errors} failed`);
      if (round === 0) continue;
      const ok = result.handshakes > 0 && result.resumed === 0;
      log.add(name(load), ok ? result.perSecond : Number.NaN);
      log.add(`cpu:${name(load)}`, ok ? result.serverCpuMs : Number.NaN);
      line.push(`${name(load)} ${result.perSecond.toFixed(0)}/s (${result.serverCpuMs.toFixed(2)} ms CPU)`);
    }
    options.log(round === 0 ? '  warm-up done' : `  round ${round}: ${line.join(', ')}`);
  }
  return log;
}

/**
 * New full handshakes that each ask for a certificate on a nonce never seen before, so every one
 * pays a document and a leaf. Keys: `c<clients>` in handshakes/s, `cpu:c<clients>` in server CPU ms per handshake.
 */
export function measureNonceRates(options: NonceRateOptions): Promise<RoundLog> {
  return measureRates(
    options,
    NONCE_RATE_CLIENTS,
    (clients) => `c${clients}`,
    (concurrency, durationMs) =>
      handshakeRate(options.subject, durationMs, { client: options.client, concurrency, newNonces: true }),
  );
}

/** Client counts for the base-certificate rate (issue 17): one alone, then several at once. */
export const HANDSHAKE_CLIENTS: readonly number[] = [1, 8];

/** Keys: `<subject>:c<clients>` in handshakes/s, `cpu:<subject>:c<clients>` in server CPU ms per handshake. */
export function measureHandshakeRates(options: HandshakeRateOptions): Promise<RoundLog> {
  const loads = HANDSHAKE_CLIENTS.flatMap((clients) => options.subjects.map((subject) => ({ subject, clients })));
  return measureRates(
    options,
    loads,
    ({ subject, clients }) => `${subject.name}:c${clients}`,
    ({ subject, clients }, durationMs) =>
      handshakeRate(subject, durationMs, { client: options.client, concurrency: clients }),
  );
}

export type CertificateKind = 'new-nonce' | 'cached-nonce' | 'base';
const NONCE_WARM_UP_FACTOR = 4;
export const CERTIFICATE_KINDS: readonly CertificateKind[] = ['new-nonce', 'cached-nonce', 'base'];

/** One handshake, timed from connect() to secure, on an idle server; also says whether the nonce certificate came back. */
export async function timedHandshake(
  port: number,
  servername: string,
  ca: string,
): Promise<{ ms: number; gotName: boolean }> {
  const started = process.hrtime.bigint();
  const socket = tls.connect(tlsClientOptions(port, { ca, servername }));
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        socket.once('secureConnect', resolve);
        socket.once('error', reject);
      }),
      HANDSHAKE_TIMEOUT_MS,
      'handshake',
    );
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    // With the base certificate as a fallback, the hostname check would already have failed; this
    // guards against a runtime that answers every name with a wildcard some day.
    const gotName = (socket.getPeerX509Certificate()?.subjectAltName ?? '').includes(`DNS:${servername}`);
    return { ms, gotName };
  } finally {
    socket.destroy();
  }
}

export interface NonceHandshakeOptions {
  subject: Subject;
  ca: string;
  rounds: number;
  perRound: number;
  deadline: Deadline;
  log: (line: string) => void;
}

/**
 * Sequential handshakes (one at a time, so each is latency, not throughput) on the three kinds of
 * certificate, interleaved. A round's value is the median of its handshakes. Keys: the kind, in ms.
 */
export async function measureNonceHandshakes(options: NonceHandshakeOptions): Promise<RoundLog> {
  const log = new RoundLog();
  const cachedName = newNonceServerName();
  for (const round of roundsWithin(options)) {
    const times: Record<CertificateKind, number[]> = { 'new-nonce': [], 'cached-nonce': [], base: [] };
    let wrongCertificates = 0;
    // Issuing a certificate runs a lot of JS (X.509 and CBOR encoding) that the JIT needs a few dozen calls to warm.
    const count = round === 0 ? options.perRound * NONCE_WARM_UP_FACTOR : options.perRound;
    for (let i = 0; i < count; i++) {
      for (const kind of rotated(CERTIFICATE_KINDS, i)) {
        const servername = kind === 'base' ? SERVER_NAME : kind === 'cached-nonce' ? cachedName : newNonceServerName();
        try {
          const { ms, gotName } = await timedHandshake(options.subject.port, servername, options.ca);
          if (!gotName) wrongCertificates++;
          times[kind].push(gotName ? ms : Number.NaN);
        } catch (error) {
          options.log(`  ${kind}: failed (${(error as Error).message})`);
        }
      }
    }
    if (wrongCertificates > 0)
      options.log(`  ${wrongCertificates} handshakes did not get the certificate they asked for`);
    if (round === 0) continue;
    const line: string[] = [];
    for (const kind of CERTIFICATE_KINDS) {
      const good = times[kind].filter(Number.isFinite);
      const value = good.length > 0 ? median(good) : Number.NaN;
      log.add(kind, value);
      line.push(`${kind} ${value.toFixed(2)}`);
    }
    options.log(`  round ${round} (median ms): ${line.join(', ')}`);
  }
  return log;
}
