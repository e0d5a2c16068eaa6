/**
 * The egress HTTP proxy on loopback, with the real host relay behind it (allow_private on,
 * since the upstream servers are loopback) and a stand-in resolver that learns like DNS does.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseAddress } from '../src/net/address.js';
import type { TcpAddress } from '../src/net/address.js';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { EgressAudit } from '../src/egress/egress-audit.js';
import { EgressHttpProxy } from '../src/egress/http-proxy.js';
import { NameCache } from '../src/egress/name-cache.js';
import type { EgressRelay } from '../src/host/egress-relay.js';
import { captureLogs } from './helpers/log-capture.js';
import { readAll } from './helpers/net.js';
import { startLoopbackRelay } from './helpers/loopback-relay.js';

type Reply = { status: number; headers: http.IncomingHttpHeaders; body: string };

describe('egress HTTP proxy', () => {
  const cache = new NameCache();
  const hostCache = new NameCache();
  const logs = captureLogs('info');
  const audit = new EgressAudit(logs.logger);
  const seen: Array<{ method: string; url: string; headers: http.IncomingHttpHeaders; body: string }> = [];
  let upstream: http.Server;
  let port = 0;
  let relay: EgressRelay;
  let proxy: EgressHttpProxy;

  /** One request through the proxy, as an app with HTTP_PROXY set sends it. */
  const viaProxy = (
    method: string,
    target: string,
    headers: Record<string, string> = {},
    body?: string,
  ): Promise<Reply> =>
    new Promise((resolve, reject) => {
      const req = http.request(
        { host: '127.0.0.1', port: proxy.port, method, path: target, headers, agent: false },
        (res) => {
          void readAll(res as never).then((data) =>
            resolve({ status: res.statusCode!, headers: res.headers, body: data.toString() }),
          );
        },
      );
      req.on('error', reject);
      req.end(body);
    });

  /** CONNECT, then (on 200) send `inner` through the tunnel and return everything that comes back. */
  const tunnel = async (target: string, inner: string): Promise<{ head: string; rest: string; error?: string }> => {
    const socket = net.connect({ host: '127.0.0.1', port: proxy.port, allowHalfOpen: true });
    await once(socket, 'connect');
    socket.write(`CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\n`);
    let text = '';
    let sent = false;
    return new Promise((resolve) => {
      socket.on('data', (chunk: Buffer) => {
        text += chunk.toString('latin1');
        const end = text.indexOf('\r\n\r\n');
        if (!sent && end >= 0 && text.startsWith('HTTP/1.1 200')) {
          sent = true;
          socket.end(inner);
        }
      });
      const finish = (error?: string) => {
        const end = text.indexOf('\r\n\r\n');
        resolve({ head: text.slice(0, end), rest: text.slice(end + 4), ...(error ? { error } : {}) });
      };
      socket.on('end', () => finish());
      socket.on('error', (error: NodeJS.ErrnoException) => finish(error.code));
    });
  };

  before(async () => {
    upstream = http.createServer((req, res) => {
      void readAll(req as never).then((body) => {
        seen.push({ method: req.method!, url: req.url!, headers: req.headers, body: body.toString() });
        res.setHeader('x-upstream', 'yes');
        res.end(`hello ${req.method} ${req.url}`);
      });
    });
    upstream.listen(0, '127.0.0.1');
    await once(upstream, 'listening');
    port = (upstream.address() as net.AddressInfo).port;
    const allowlist = compileAllowlist(['allowed.test', 'other.allowed.test', '127.0.0.9']);
    relay = await startLoopbackRelay(allowlist, hostCache);
    proxy = await EgressHttpProxy.start({
      listen: parseAddress('tcp:127.0.0.1:0') as TcpAddress,
      allowlist,
      cache,
      // Every allowed test name lives on the loopback upstream; both sides learn it, as from DNS.
      resolve: async (name) => {
        for (const learner of [cache, hostCache]) learner.add('127.0.0.1', name, 300);
        return ['127.0.0.1'];
      },
      relay: relay.address,
      peekTimeoutMs: 100,
      connectTimeoutMs: 2000,
      idleTimeoutMs: 10_000,
      maxConnections: 64,
      // Below the 16 KiB default, so the tests below show the configured limit is the one applied.
      maxHeaderBytes: 4096,
      audit,
      logger: logs.logger,
    });
  });
  after(async () => {
    await proxy.close();
    await relay.close();
    upstream.close();
  });

  it('forwards an absolute-URI request to an allowed name, body and all, without proxy headers', async () => {
    const reply = await viaProxy(
      'POST',
      `http://allowed.test:${port}/submit?x=1`,
      { 'proxy-authorization': 'Basic c2VjcmV0', 'proxy-connection': 'keep-alive', 'x-app': '1' },
      'payload',
    );
    assert.equal(reply.status, 200);
    assert.equal(reply.body, 'hello POST /submit?x=1');
    assert.equal(reply.headers['x-upstream'], 'yes');
    const request = seen.at(-1)!;
    assert.equal(request.url, '/submit?x=1', 'origin-form upstream');
    assert.equal(request.headers.host, `allowed.test:${port}`);
    assert.equal(request.body, 'payload');
    assert.equal(request.headers['x-app'], '1');
    assert.equal(request.headers['proxy-authorization'], undefined, 'proxy credentials never leave the enclave');
    assert.equal(request.headers['proxy-connection'], undefined);
    assert.equal(audit.counters.proxyAllowed, 1);
  });

  it('answers 403 with a plain-text reason for a denied name, logged once and counted', async () => {
    const mark = logs.lines.length;
    const reply = await viaProxy('GET', `http://denied.test:${port}/`);
    assert.equal(reply.status, 403);
    assert.match(reply.headers['content-type']!, /^text\/plain/);
    assert.equal(reply.body, `egress to denied.test:${port} is not allowed (no-rule)\n`);
    const lines = logs.lines.slice(mark).filter((line) => line.msg === 'egress refused');
    assert.equal(lines.length, 1);
    assert.deepEqual(
      [lines[0]!.path, lines[0]!.name, lines[0]!.port, lines[0]!.reason],
      ['proxy', 'denied.test', port, 'no-rule'],
    );
    assert.equal(audit.counters.proxyRefused, 1);
  });

  it('refuses what it does not forward: https:// targets, origin-form requests, huge heads', async () => {
    assert.equal((await viaProxy('GET', 'https://allowed.test/')).status, 400);
    assert.equal((await viaProxy('GET', '/just-a-path')).status, 400);
    const huge = await viaProxy('GET', `http://allowed.test:${port}/`, { 'x-big': 'a'.repeat(6000) }).catch(
      (error: NodeJS.ErrnoException) => ({ status: error.code }),
    );
    assert.equal(huge.status, 431, 'egress.proxy_max_header_bytes (4 KiB here) was not applied');
    assert.equal((await viaProxy('GET', `http://allowed.test:${port}/`, { 'x-big': 'a'.repeat(2000) })).status, 200);
  });

  it('tunnels CONNECT to an allowed name, checking the Host inside the tunnel', async () => {
    const allowed = await tunnel(
      `allowed.test:${port}`,
      'GET /in-tunnel HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n',
    );
    assert.match(allowed.head, /^HTTP\/1\.1 200/);
    assert.match(allowed.rest, /hello GET \/in-tunnel$/);

    const mark = logs.lines.length;
    const smuggled = await tunnel(`allowed.test:${port}`, 'GET / HTTP/1.1\r\nHost: other.allowed.test\r\n\r\n');
    assert.equal(smuggled.error, 'ECONNRESET', 'an allowed name not the one CONNECT asked for');
    assert.deepEqual(
      logs.lines
        .slice(mark)
        .filter((line) => line.msg === 'egress refused')
        .map((line) => [line.path, line.name, line.host, line.reason]),
      [['proxy', 'allowed.test', 'other.allowed.test', 'hostname-mismatch']],
    );
  });

  it('answers 403 to CONNECT for a denied name or an address nobody resolved', async () => {
    const denied = await tunnel(`denied.test:${port}`, '');
    assert.match(denied.head, /^HTTP\/1\.1 403/);
    assert.equal(denied.rest, `egress to denied.test:${port} is not allowed (no-rule)\n`);
    const bare = await tunnel(`127.0.0.2:${port}`, '');
    assert.match(bare.head, /^HTTP\/1\.1 403/);
    assert.match(bare.rest, /not-resolved/);
    const malformed = await tunnel('no-port.test', '');
    assert.match(malformed.head, /^HTTP\/1\.1 400/);
  });

  it('answers 403 when the host relay refuses, 502 when the destination is unreachable', async () => {
    // An allowed literal the host's private check would pass (allow_private) but nothing listens on.
    const closed = net.createServer();
    closed.listen(0, '127.0.0.9');
    await once(closed, 'listening');
    const deadPort = (closed.address() as net.AddressInfo).port;
    closed.close();
    const unreachable = await viaProxy('GET', `http://127.0.0.9:${deadPort}/`);
    assert.equal(unreachable.status, 502);
    assert.match(unreachable.body, /host-unreachable/);
    // The enclave believes 127.0.0.8 is allowed.test, the host never resolved it so: refused there.
    cache.add('127.0.0.8', 'allowed.test', 300);
    const refused = await tunnel(`127.0.0.8:${port}`, '');
    assert.match(refused.head, /^HTTP\/1\.1 403/);
    assert.match(refused.rest, /host-denied/);
  });
});
