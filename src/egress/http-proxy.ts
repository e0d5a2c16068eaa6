/**
 * An HTTP proxy for apps that honour HTTP_PROXY/HTTPS_PROXY (egress.proxy_listen): CONNECT
 * host:port tunnels and absolute-URI requests (GET http://host/path). The decision is by the
 * name the app asked for; a refusal is a 403 with a plain-text reason. Allowed traffic goes to
 * the host's relay with the same egress header as the transparent path.
 *
 * Absolute-URI requests are forwarded with the http-proxy package, over an http.Agent whose
 * connections are relay streams: it handles bodies, keep-alive towards the app and response
 * framing, one upstream connection per request so each request's host is decided on its own.
 * Inside a CONNECT tunnel, every TLS SNI and HTTP Host is judged like on the transparent path
 * (inspection-gate.ts): one naming another host than the CONNECT did is refused.
 */
import http from 'node:http';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import httpProxy from 'http-proxy';
import type { Address } from '../net/address.js';
import { relay } from '../net/relay.js';
import type { TcpAddress } from '../net/address.js';
import type { Logger } from '../core/log.js';
import type { Allowlist } from './allowlist.js';
import { tryNormaliseDomainName } from '../wire/domain-name.js';
import { refusalFacts, sightingFacts, type EgressAudit } from './egress-audit.js';
import { EgressStatus, egressStatusName, type EgressHeader } from '../wire/egress-header.js';
import { decideConnection } from './egress-policy.js';
import { InspectionGate, INSPECT_TIMEOUT_MS } from './inspection-gate.js';
import { canonicalIp, type NameCache } from './name-cache.js';
import { EgressRelayError, openRelayStream, resetAppOnRelayFailure } from './relay-client.js';
import { errorCode } from '../core/errors.js';

export interface HttpProxyOptions {
  listen: TcpAddress;
  allowlist: Allowlist;
  cache: NameCache;
  /** Resolves an allowed name through the DNS relay (learning it into the name cache). */
  resolve: (name: string) => Promise<string[]>;
  relay: Address;
  peekTimeoutMs: number;
  /** Bound on tunnelled bytes held undecided; default INSPECT_TIMEOUT_MS. */
  inspectTimeoutMs?: number;
  /** Let a tunnelled ClientHello with encrypted_client_hello through; default false. */
  allowEch?: boolean;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  maxConnections: number;
  /** Request head limits; default PROXY_MAX_HEADER_BYTES and PROXY_HEADERS_TIMEOUT_MS. */
  maxHeaderBytes?: number;
  headersTimeoutMs?: number;
  audit: EgressAudit;
  logger: Logger;
}

/** Request heads above this get 431 from node's parser. */
export const PROXY_MAX_HEADER_BYTES = 16 * 1024;
/** The whole request head must arrive within this. */
export const PROXY_HEADERS_TIMEOUT_MS = 10_000;
// Hop-by-hop headers (RFC 9110 7.6.1) and the proxy's own: never passed upstream.
const HOP_BY_HOP = [
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authorization',
  'proxy-authenticate',
  'upgrade',
];

type Authorized =
  { ok: true; header: EgressHeader; resolvedNames: string[] } | { ok: false; status: 403 | 502; reason: string };

export class EgressHttpProxy {
  readonly #options: HttpProxyOptions;
  readonly #server: http.Server;
  readonly #proxy = httpProxy.createProxyServer({ xfwd: false, changeOrigin: true });
  readonly #tunnels = new Set<Duplex>();

  private constructor(options: HttpProxyOptions) {
    this.#options = options;
    this.#server = http.createServer(
      {
        maxHeaderSize: options.maxHeaderBytes ?? PROXY_MAX_HEADER_BYTES,
        headersTimeout: options.headersTimeoutMs ?? PROXY_HEADERS_TIMEOUT_MS,
        requestTimeout: 0,
        keepAliveTimeout: 5_000,
      },
      (req, res) => void this.#onRequest(req, res).catch((error: Error) => this.#internalError(res, error)),
    );
    this.#server.maxConnections = options.maxConnections;
    this.#server.setTimeout(options.idleTimeoutMs);
    this.#server.on('connect', (req: http.IncomingMessage, socket: Duplex, head: Buffer) => {
      socket.on('error', () => {});
      this.#tunnels.add(socket);
      socket.once('close', () => this.#tunnels.delete(socket));
      this.#onConnect(req, socket as net.Socket, head).catch((error: Error) => {
        options.logger.error({ err: { message: error.message } }, 'egress proxy tunnel failed');
        socket.destroy();
      });
    });
    this.#proxy.on('error', () => {});
  }

  /** Listen on `options.listen`; resolves once bound. */
  static async start(options: HttpProxyOptions): Promise<EgressHttpProxy> {
    const proxy = new EgressHttpProxy(options);
    await new Promise<void>((resolve, reject) => {
      proxy.#server.once('error', reject);
      proxy.#server.listen({ host: options.listen.host, port: options.listen.port }, () => {
        proxy.#server.off('error', reject);
        resolve();
      });
    });
    options.logger.info({ listen: `${options.listen.host}:${proxy.port}` }, 'egress HTTP proxy listening');
    return proxy;
  }

  get port(): number {
    return (this.#server.address() as net.AddressInfo).port;
  }

  get listening(): boolean {
    return this.#server.listening;
  }

  /** Stop accepting and cut open requests and tunnels. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.#server.close(() => resolve()));
    this.#server.closeAllConnections();
    for (const tunnel of this.#tunnels) tunnel.destroy();
    this.#proxy.close();
    await closed;
  }

  async #onRequest(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const target = parseAbsoluteTarget(req.url ?? '');
    if (typeof target === 'string') return plain(res, 400, `${target}\n`);
    const authorized = await this.#authorize(target.host, target.port, req.method ?? '');
    if (!authorized.ok) return plain(res, authorized.status, `${authorized.reason}\n`);
    const { header } = authorized;
    for (const name of connectionTokens(req.headers.connection)) delete req.headers[name];
    for (const name of HOP_BY_HOP) delete req.headers[name];
    const agent = new RelayAgent(() =>
      openRelayStream(this.#options.relay, header, {
        timeoutMs: this.#options.connectTimeoutMs,
        watch: this.#options.audit.relays,
      }),
    );
    const hostText = net.isIPv6(target.host) ? `[${target.host}]` : target.host;
    this.#proxy.web(
      req,
      res,
      { target: { protocol: 'http:', host: hostText, hostname: target.host, port: target.port } as never, agent },
      (error: Error) => this.#relayFailed(res, header, error),
    );
  }

  async #onConnect(req: http.IncomingMessage, socket: net.Socket, head: Buffer): Promise<void> {
    const options = this.#options;
    const target = parseAuthority(req.url ?? '');
    if (typeof target === 'string') return rawResponse(socket, 400, `${target}\n`);
    const authorized = await this.#authorize(target.host, target.port, 'CONNECT');
    if (!authorized.ok) return rawResponse(socket, authorized.status, `${authorized.reason}\n`);
    const { header } = authorized;

    let upstream: Duplex;
    try {
      upstream = await openRelayStream(options.relay, header, {
        timeoutMs: options.connectTimeoutMs,
        watch: options.audit.relays,
      });
    } catch (error) {
      const failure = this.#failure(header, error as Error);
      return rawResponse(socket, failure.status, `${failure.reason}\n`);
    }
    if (socket.destroyed) {
      upstream.destroy();
      return;
    }
    socket.setTimeout(0);
    socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
    const facts = { name: header.name, ip: header.ip, port: header.port };
    // The tunnel's bytes are judged like on the transparent path, for as long as it lasts.
    const gate = new InspectionGate(
      socket,
      {
        port: header.port,
        allowEch: options.allowEch ?? false,
        inspectTimeoutMs: options.inspectTimeoutMs ?? INSPECT_TIMEOUT_MS,
        judge: (sighting) =>
          decideConnection(options.allowlist, {
            ip: header.ip,
            port: header.port,
            resolvedNames: authorized.resolvedNames,
            hostname: sighting.hostname,
          }),
        onRefusal: (refusal) => {
          options.audit.refused('proxy', { ...refusalFacts(refusal), ...facts, name: header.name });
          upstream.destroy();
          socket.resetAndDestroy();
        },
      },
      head,
    );
    const first = await gate.firstDecision(options.peekTimeoutMs);
    if (first.kind === 'closed') {
      upstream.destroy();
      return;
    }
    const named = first.kind === 'decided' ? sightingFacts(first.sighting) : {};
    options.audit.allowed('proxy', {
      ...facts,
      ...named,
      reason: 'connect',
      rule: first.kind === 'decided' ? first.verdict.rule : undefined,
    });
    resetAppOnRelayFailure(socket, upstream, () =>
      options.audit.failed('proxy', { ...facts, ...named, reason: 'relay-reset' }),
    );
    await relay(gate, upstream, { idleTimeoutMs: options.idleTimeoutMs });
  }

  /** The name-based decision, then the address to send the relay: the name's, resolved through our DNS. */
  async #authorize(host: string, port: number, method: string): Promise<Authorized> {
    const { allowlist, audit } = this.#options;
    const literal = canonicalIp(host);
    if (literal !== undefined) {
      // A bare address is judged like on the transparent path: an address rule, or a name we resolved it for.
      const resolvedNames = this.#options.cache.namesFor(literal);
      const decision = decideConnection(allowlist, { ip: literal, port, resolvedNames });
      if (!decision.allowed) {
        audit.refused('proxy', {
          name: decision.name,
          ip: literal,
          port,
          host,
          reason: decision.reason,
          rule: decision.rule,
        });
        return { ok: false, status: 403, reason: `egress to ${host}:${port} is not allowed (${decision.reason})` };
      }
      if (method !== 'CONNECT')
        audit.allowed('proxy', {
          name: decision.name,
          ip: literal,
          port,
          host,
          reason: decision.reason,
          rule: decision.rule,
        });
      return { ok: true, header: { name: decision.name, ip: literal, port }, resolvedNames };
    }
    const name = tryNormaliseDomainName(host);
    if (name === undefined) {
      audit.refused('proxy', { port, host, reason: 'invalid-name' });
      return { ok: false, status: 403, reason: `egress to ${host.slice(0, 64)}:${port} is not allowed (invalid-name)` };
    }
    const decision = allowlist.allowsName(name, port);
    if (!decision.allowed) {
      audit.refused('proxy', { name, port, host, reason: decision.reason, rule: decision.rule });
      return { ok: false, status: 403, reason: `egress to ${name}:${port} is not allowed (${decision.reason})` };
    }
    let addresses: string[];
    try {
      addresses = await this.#options.resolve(name);
    } catch (error) {
      audit.failed('proxy', { name, port, host, reason: errorCode(error) ?? 'dns-failed' });
      return { ok: false, status: 502, reason: `cannot resolve ${name}` };
    }
    if (addresses.length === 0) {
      audit.failed('proxy', { name, port, host, reason: 'no-address' });
      return { ok: false, status: 502, reason: `${name} has no address` };
    }
    // CONNECT is counted once the tunnel's first bytes are checked too.
    if (method !== 'CONNECT')
      audit.allowed('proxy', { name, ip: addresses[0], port, host, reason: decision.reason, rule: decision.rule });
    return { ok: true, header: { name, ip: addresses[0]!, port }, resolvedNames: [name] };
  }

  #failure(header: EgressHeader, error: Error): { status: 403 | 502; reason: string } {
    const status = error instanceof EgressRelayError ? error.status : undefined;
    const reason = status !== undefined ? `host-${egressStatusName(status).toLowerCase()}` : 'relay-unreachable';
    this.#options.audit.failed('proxy', { name: header.name, ip: header.ip, port: header.port, reason });
    const where = `${header.name || header.ip}:${header.port}`;
    if (status === EgressStatus.DENIED || status === EgressStatus.PRIVATE)
      return { status: 403, reason: `egress to ${where} was refused by the host relay (${reason})` };
    return { status: 502, reason: `cannot reach ${where} (${reason})` };
  }

  #relayFailed(res: http.ServerResponse | net.Socket, header: EgressHeader, error: Error): void {
    const failure = this.#failure(header, error);
    if (res instanceof http.ServerResponse && !res.headersSent) plain(res, failure.status, `${failure.reason}\n`);
    else res.destroy();
  }

  #internalError(res: http.ServerResponse, error: Error): void {
    this.#options.logger.error({ err: { message: error.message } }, 'egress proxy request failed');
    if (!res.headersSent) plain(res, 500, 'internal error\n');
    else res.destroy();
  }
}

/** An http.Agent whose every connection is a fresh relay stream to one destination. */
class RelayAgent extends http.Agent {
  readonly #open: () => Promise<Duplex>;

  constructor(open: () => Promise<Duplex>) {
    super({ keepAlive: false, maxSockets: 1 });
    this.#open = open;
  }

  override createConnection(
    _options: http.ClientRequestArgs,
    callback?: (error: Error | null, stream: Duplex) => void,
  ): undefined {
    this.#open().then(
      (stream) => {
        callback?.(null, stream);
        // openRelayStream leaves the stream paused and node's http client never resumes a socket
        // it is handed; its listeners are attached on the tick queued by callback(), before this flows.
        stream.resume();
      },
      (error: Error) => callback?.(error, undefined as never),
    );
    return undefined;
  }
}

/** host and port of an absolute-form `http://` target, or why it is not one. */
function parseAbsoluteTarget(target: string): { host: string; port: number } | string {
  if (!/^http:\/\//i.test(target)) {
    return /^https:\/\//i.test(target)
      ? 'https:// targets are not forwarded; use CONNECT (HTTPS_PROXY)'
      : 'this is an HTTP proxy: send an absolute http:// URI or CONNECT host:port';
  }
  let url: URL;
  try {
    url = new URL(target);
  } catch {
    return 'malformed request target';
  }
  if (url.username !== '' || url.password !== '') return 'credentials in the request target are not forwarded';
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  if (host === '') return 'the request target has no host';
  return { host, port: url.port === '' ? 80 : Number(url.port) };
}

/** host and port of a CONNECT's authority-form target (port required), or why it is not one. */
function parseAuthority(target: string): { host: string; port: number } | string {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9._-]+)):([0-9]{1,5})$/.exec(target);
  const port = match ? Number(match[3]) : 0;
  if (!match || port < 1 || port > 65535) return 'CONNECT needs host:port';
  const host = match[1] ?? match[2]!;
  if (match[1] !== undefined && !net.isIPv6(host)) return 'CONNECT needs host:port';
  return { host, port };
}

function connectionTokens(value: string | string[] | undefined): string[] {
  const text = Array.isArray(value) ? value.join(',') : (value ?? '');
  return text
    .split(',')
    .map((token) => token.trim().toLowerCase())
    .filter(
      (token) =>
        token !== '' &&
        token !== 'close' &&
        token !== 'keep-alive' &&
        /^[a-z0-9!#$%&'*+.^_`|~-]+$/.test(token) &&
        !['host', 'content-length', 'transfer-encoding'].includes(token),
    );
}

function plain(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, {
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    connection: 'close',
  });
  res.end(body);
}

function rawResponse(socket: net.Socket, status: number, body: string): void {
  const text = status === 403 ? 'Forbidden' : status === 400 ? 'Bad Request' : 'Bad Gateway';
  socket.end(
    `HTTP/1.1 ${status} ${text}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`,
  );
}
