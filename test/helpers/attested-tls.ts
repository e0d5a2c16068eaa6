import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import tls from 'node:tls';
import type { AttestationRequest, Nsm, PcrReading } from '../../src/attestation/nsm.js';
import { parseAddress } from '../../src/net/address.js';
import { Ingress } from '../../src/ingress/ingress.js';
import { openSimulatedNsm, type SimulatedNsmOptions } from '../../src/attestation/sim-nsm.js';
import { silentLogger, type Logger } from '../../src/core/log.js';
import { TlsTerminator, type TlsTerminatorOptions } from '../../src/tls/tls-terminator.js';

/**
 * Wraps the simulated NSM to count attest calls and to inject failures or stalls, so tests can
 * prove single flight and fallback behaviour against a real document chain.
 */
export class ControlledNsm implements Nsm {
  readonly kind = 'simulated' as const;
  readonly inner: Nsm;
  calls = 0;
  nonceCalls = 0;
  /** When set, attest throws it (after counting the call). */
  failWith: Error | undefined;
  /** When set, attest waits for it before answering. */
  gate: Promise<void> | undefined;

  constructor(inner: Nsm) {
    this.inner = inner;
  }

  async attest(request: AttestationRequest): Promise<Uint8Array> {
    this.calls += 1;
    if (request.nonce) this.nonceCalls += 1;
    if (this.gate) await this.gate;
    if (this.failWith) throw this.failWith;
    return this.inner.attest(request);
  }

  describePcr(index: number): Promise<PcrReading> {
    return this.inner.describePcr(index);
  }

  getRandom(): Promise<Uint8Array> {
    return this.inner.getRandom();
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

export interface TerminatorFixture {
  stateDir: string;
  nsm: ControlledNsm;
  terminator: TlsTerminator;
  /** PEM of the simulated NSM root (`<state>/sim-nsm-root.pem`). */
  simRootPem: string;
  /** PEM of the TLS CA (`<state>/ca.pem`). */
  caPem: string;
  close(): Promise<void>;
}

/** A TlsTerminator for `localhost` over a fresh state dir and the simulated NSM. */
export async function openTerminator(
  options: {
    sim?: Omit<SimulatedNsmOptions, 'stateDir'>;
    terminator?: Partial<TlsTerminatorOptions>;
    logger?: Logger;
  } = {},
): Promise<TerminatorFixture> {
  const stateDir = await mkdtemp(join(tmpdir(), 'enclave-tls-'));
  const sim = await openSimulatedNsm({ stateDir, ...options.sim });
  const nsm = new ControlledNsm(sim);
  const terminator = await TlsTerminator.create({
    nsm,
    stateDir,
    serverName: 'localhost',
    sniNonceEncoding: 'hex',
    nonceCacheSize: 1024,
    logger: options.logger ?? silentLogger(),
    ...options.terminator,
  });
  return {
    stateDir,
    nsm,
    terminator,
    simRootPem: await readFile(join(stateDir, 'sim-nsm-root.pem'), 'utf8'),
    caPem: await readFile(join(stateDir, 'ca.pem'), 'utf8'),
    async close() {
      await terminator.close();
      await nsm.close();
      await rm(stateDir, { recursive: true, force: true });
    },
  };
}

/** IngressWorkers' `tls` option for the fixture's terminator: hex nonces, http/1.1, small caches. */
export function workerTls(fx: TerminatorFixture, handshakeTimeoutMs = 10_000) {
  return {
    terminator: fx.terminator,
    settings: {
      sniNonceEncoding: 'hex' as const,
      alpn: ['http/1.1'],
      handshakeTimeoutMs,
      nonceCacheSize: 16,
      maxPendingIssues: 16,
      issueTimeoutMs: 5000,
    },
  };
}

/** A loopback TCP server whose connections go through `terminator.wrap`; `onSecure` gets each TLSSocket. */
export async function listenTls(
  terminator: TlsTerminator,
  onSecure: (socket: tls.TLSSocket) => void,
): Promise<{ server: net.Server; port: number; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (raw) => {
    sockets.add(raw);
    raw.on('close', () => sockets.delete(raw));
    raw.on('error', () => {});
    const secure = terminator.wrap(raw);
    onSecure(secure);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    server,
    port: (server.address() as net.AddressInfo).port,
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Echo every decrypted byte back; the bytes the app sees are exactly the client's. */
export function echo(socket: tls.TLSSocket): void {
  socket.pipe(socket);
}

/** Complete a client handshake over TCP or over a given Duplex; resolves once secure. */
export async function connectTls(
  target: { port: number } | { socket: Duplex },
  options: { servername?: string; ca?: string; alpn?: string[]; checkName?: string } = {},
): Promise<tls.TLSSocket> {
  const socket = tls.connect({
    ...('port' in target ? { port: target.port, host: '127.0.0.1' } : { socket: target.socket }),
    ...(options.servername ? { servername: options.servername } : {}),
    ...(options.ca ? { ca: options.ca } : {}),
    // Trust is checked by the assertions (chain and attestation), not by Node's default policy;
    // the name is checked against the base host, never against a nonce SNI.
    rejectUnauthorized: false,
    checkServerIdentity: (_host, cert) =>
      tls.checkServerIdentity(options.checkName ?? options.servername ?? 'localhost', cert),
    ALPNProtocols: options.alpn ?? ['http/1.1'],
  });
  await new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  return socket;
}

/** The in-memory socket pair the runtime's own self-test uses; tests hand it where a native vsock/unix Duplex goes. */
export { duplexPair } from '../../src/net/duplex-pair.js';

/** The peer's leaf, read via getPeerCertificate() (Node 20's getPeerX509Certificate() works only once per client socket). */
export function peerLeaf(socket: tls.TLSSocket): X509Certificate {
  return new X509Certificate(socket.getPeerCertificate().raw);
}

/** The first label of the longest DNS SAN, hex-decoded: the evervault way of finding the document. */
export function documentFromSan(cert: { subjectAltName: string | undefined }): Uint8Array {
  const names = (cert.subjectAltName ?? '')
    .split(', ')
    .filter((n) => n.startsWith('DNS:'))
    .map((n) => n.slice(4));
  const longest = names.reduce((a, b) => (b.length > a.length ? b : a), '');
  return new Uint8Array(Buffer.from(longest.slice(0, longest.indexOf('.')), 'hex'));
}

/** A TCP ingress on a free loopback port, terminating TLS with `terminator` and relaying to the app on `appPort`. */
export function startTlsIngress(
  terminator: TlsTerminator,
  appPort: number,
  options: { httpAware: boolean; logger?: Logger },
): Promise<Ingress> {
  return Ingress.start({
    listen: parseAddress('tcp:127.0.0.1:0'),
    app: parseAddress(`tcp:127.0.0.1:${appPort}`),
    proxyProtocol: 'off',
    sendProxyProtocol: 'off',
    maxConnections: 100,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 30_000,
    proxyHeaderTimeoutMs: 2000,
    logger: options.logger ?? silentLogger(),
    terminator,
    httpAware: options.httpAware,
  });
}
