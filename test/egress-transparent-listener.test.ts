/**
 * The transparent listener on loopback, without iptables: the test plays the kernel's part by
 * telling the listener each connection's "original destination". The host relay runs for real
 * (allow_private on, since the destinations are loopback servers).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { parseAddress } from '../src/net/address.js';
import type { TcpAddress } from '../src/net/address.js';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { EgressAudit } from '../src/egress/egress-audit.js';
import { NameCache } from '../src/egress/name-cache.js';
import { TransparentListener, type TransparentListenerOptions } from '../src/egress/transparent-listener.js';
import type { EgressRelay } from '../src/host/egress-relay.js';
import { captureLogs } from './helpers/log-capture.js';
import { exchange, randomPayload, readAll, sha256, startReplyServer } from './helpers/net.js';
import { startLoopbackRelay } from './helpers/loopback-relay.js';

const allowlist = compileAllowlist(['allowed.test', 'server-first.test', 'other.test']);

/** What an app sees on a connection: the bytes, and how it ended. */
function outcome(socket: net.Socket): Promise<{ data: Buffer; error?: string }> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.once('end', () => resolve({ data: Buffer.concat(chunks) }));
    socket.once('error', (error: NodeJS.ErrnoException) =>
      resolve({ data: Buffer.concat(chunks), error: error.code ?? error.message }),
    );
  });
}

describe('transparent listener', () => {
  const enclaveCache = new NameCache();
  const hostCache = new NameCache();
  const logs = captureLogs('info');
  const audit = new EgressAudit(logs.logger);
  let relay: EgressRelay;
  let app: Awaited<ReturnType<typeof startReplyServer>>;
  let banner: net.Server;
  let bannerPort = 0;
  let firstBytes: net.Server;
  let firstBytesPort = 0;
  const received: Buffer[] = [];
  let destination: { address: string; port: number } | Error = new Error('not set');
  const listeners: TransparentListener[] = [];

  const start = async (overrides: Partial<TransparentListenerOptions> = {}) => {
    const listener = await TransparentListener.start({
      listen: parseAddress('tcp:127.0.0.1:0') as TcpAddress,
      allowlist,
      cache: enclaveCache,
      relay: relay.address,
      peekTimeoutMs: 100,
      connectTimeoutMs: 2000,
      idleTimeoutMs: 10_000,
      maxConnections: 64,
      audit,
      logger: logs.logger,
      originalDestination: () => {
        if (destination instanceof Error) throw destination;
        return destination;
      },
      ...overrides,
    });
    listeners.push(listener);
    return listener;
  };
  /** Connect without waiting for 'connect': a refusal may reset the connection before node reports it. */
  const dial = (listener: TransparentListener, to: { address: string; port: number } | Error) => {
    destination = to;
    return net.connect({ port: listener.port, host: '127.0.0.1', allowHalfOpen: true });
  };
  const refusalsSince = (mark: number) => logs.lines.slice(mark).filter((line) => line.msg === 'egress refused');

  before(async () => {
    relay = await startLoopbackRelay(allowlist, hostCache);
    app = await startReplyServer((request) => Buffer.from(sha256(request)));
    banner = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => {});
      socket.write('220 banner ready\r\n');
      void readAll(socket).then((data) => socket.end(`250 got ${data.length} bytes\r\n`));
    });
    banner.listen(0, '127.0.0.1');
    await once(banner, 'listening');
    bannerPort = (banner.address() as net.AddressInfo).port;
    firstBytes = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => {});
      socket.once('data', (data: Buffer) => {
        received.push(data);
        socket.destroy();
      });
    });
    firstBytes.listen(0, '127.0.0.1');
    await once(firstBytes, 'listening');
    firstBytesPort = (firstBytes.address() as net.AddressInfo).port;
    // What DNS would have taught both sides: 127.0.0.1 is allowed.test (and server-first.test).
    for (const cache of [enclaveCache, hostCache]) {
      cache.add('127.0.0.1', 'allowed.test', 3600);
      cache.add('127.0.0.1', 'server-first.test', 3600);
    }
  });
  after(async () => {
    for (const listener of listeners) await listener.close();
    await relay.close();
    app.server.close();
    banner.close();
    firstBytes.close();
  });

  it('relays an allowed connection byte-exact with half-close (opaque protocol, decided on the IP)', async () => {
    const listener = await start();
    const request = randomPayload(2 * 1024 * 1024 + 5);
    const answer = await exchange(await dial(listener, { address: '127.0.0.1', port: app.port }), request);
    assert.equal(answer.toString(), sha256(request));
    assert.equal(app.received.at(-1)!.length, request.length);
  });

  it('forwards the peeked ClientHello first when its SNI is allowed', async () => {
    const listener = await start();
    destination = { address: '127.0.0.1', port: firstBytesPort };
    const client = tls.connect({ port: listener.port, host: '127.0.0.1', servername: 'allowed.test' });
    client.on('error', () => {});
    // The destination is no TLS server: it keeps the first bytes and hangs up.
    await new Promise((resolve) => client.once('close', resolve));
    const hello = received.at(-1)!;
    assert.equal(hello[0], 0x16, 'the destination got the TLS handshake record the app sent');
    assert.ok(hello.includes(Buffer.from('allowed.test')));
    client.destroy();
  });

  it('refuses a denied SNI with a reset, one log line and a counter', async () => {
    const listener = await start();
    const mark = logs.lines.length;
    const before = audit.counters.connectionsRefused;
    destination = { address: '127.0.0.1', port: firstBytesPort };
    const client = tls.connect({ port: listener.port, host: '127.0.0.1', servername: 'denied.test' });
    const error = await new Promise<NodeJS.ErrnoException>((resolve) => client.once('error', resolve));
    assert.equal(error.code, 'ECONNRESET');
    assert.equal(audit.counters.connectionsRefused, before + 1);
    const lines = refusalsSince(mark);
    assert.equal(lines.length, 1);
    const { path, name, ip, port, sni, host, outcome: result, reason, rule } = lines[0]!;
    assert.deepEqual(
      { path, name, ip, port, sni, host, result, reason, rule },
      {
        path: 'transparent',
        name: 'denied.test',
        ip: '127.0.0.1',
        port: firstBytesPort,
        sni: 'denied.test',
        host: null,
        result: 'refused',
        reason: 'hostname-denied',
        rule: null,
      },
    );
  });

  it('refuses an allowed Host the IP was not resolved for (hostname-mismatch)', async () => {
    const listener = await start();
    const mark = logs.lines.length;
    const socket = await dial(listener, { address: '127.0.0.1', port: app.port });
    const ended = outcome(socket);
    socket.write('GET / HTTP/1.1\r\nHost: other.test\r\n\r\n');
    assert.equal((await ended).error, 'ECONNRESET');
    assert.deepEqual(
      refusalsSince(mark).map((line) => [line.host, line.reason]),
      [['other.test', 'hostname-mismatch']],
    );
  });

  it('lets a server-first protocol speak after the peek window, on the IP alone', async () => {
    const listener = await start();
    const socket = await dial(listener, { address: '127.0.0.1', port: bannerPort });
    const greeting = await new Promise<string>((resolve) =>
      socket.once('data', (chunk: Buffer) => resolve(chunk.toString())),
    );
    assert.equal(greeting, '220 banner ready\r\n');
    const rest = readAll(socket);
    socket.end('QUIT\r\n');
    assert.equal((await rest).toString(), '250 got 6 bytes\r\n');
  });

  it('inspects bytes that come after the peek window, and every request on a keep-alive connection', async () => {
    const listener = await start();
    const mark = logs.lines.length;
    const late = await dial(listener, { address: '127.0.0.1', port: app.port });
    const lateEnd = outcome(late);
    await new Promise((resolve) => setTimeout(resolve, 300));
    late.write('GET / HTTP/1.1\r\nHost: denied.test\r\n\r\n');
    assert.deepEqual(await lateEnd, { data: Buffer.alloc(0), error: 'ECONNRESET' });
    const received = app.received.length;
    const keepAlive = await dial(listener, { address: '127.0.0.1', port: app.port });
    const keepAliveEnd = outcome(keepAlive);
    keepAlive.write('GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: denied.test\r\n\r\n');
    assert.equal((await keepAliveEnd).error, 'ECONNRESET');
    assert.ok(
      app.received.slice(received).every((data) => !data.includes('denied.test')),
      'the second request never reached the server',
    );
    assert.deepEqual(
      refusalsSince(mark).map((line) => [line.host, line.reason]),
      [
        ['denied.test', 'hostname-denied'],
        ['denied.test', 'hostname-denied'],
      ],
    );
  });

  it('refuses an IP never resolved, even server-first, and a connection with no original destination', async () => {
    const listener = await start();
    const mark = logs.lines.length;
    const unknown = await dial(listener, { address: '127.0.0.2', port: bannerPort });
    assert.deepEqual(await outcome(unknown), { data: Buffer.alloc(0), error: 'ECONNRESET' });
    const direct = await dial(listener, Object.assign(new Error('ENOENT'), { code: 'ENOENT' }));
    assert.equal((await outcome(direct)).error, 'ECONNRESET');
    assert.deepEqual(
      refusalsSince(mark).map((line) => [line.ip, line.reason]),
      [
        ['127.0.0.2', 'not-resolved'],
        ['127.0.0.1', 'no-original-destination'],
      ],
    );
  });

  it('refuses a ClientHello still incomplete when the inspection timeout ends', async () => {
    const listener = await start({ inspectTimeoutMs: 300 });
    const mark = logs.lines.length;
    const socket = await dial(listener, { address: '127.0.0.1', port: app.port });
    const ended = outcome(socket);
    socket.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01])); // a record promising 512 bytes
    assert.equal((await ended).error, 'ECONNRESET');
    assert.deepEqual(
      refusalsSince(mark).map((line) => line.reason),
      ['inspection-timeout'],
    );
  });

  it('resets the app when the host relay refuses what the enclave allowed', async () => {
    const listener = await start();
    enclaveCache.add('127.0.0.3', 'allowed.test', 3600); // the host never saw this answer
    const before = audit.counters.connectionsFailed;
    const socket = await dial(listener, { address: '127.0.0.3', port: app.port });
    const ended = outcome(socket);
    socket.write('GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\n');
    assert.equal((await ended).error, 'ECONNRESET');
    assert.equal(audit.counters.connectionsFailed, before + 1);
    assert.ok(logs.lines.some((line) => line.msg === 'egress failed' && line.reason === 'host-denied'));
  });

  it('resets connections beyond max_connections', async () => {
    const listener = await start({ maxConnections: 1 });
    const held = await dial(listener, { address: '127.0.0.1', port: bannerPort });
    await new Promise<void>((resolve) => held.once('data', () => resolve()));
    const before = audit.counters.connectionsFailed;
    const extra = await dial(listener, { address: '127.0.0.1', port: bannerPort });
    assert.equal((await outcome(extra)).error, 'ECONNRESET');
    assert.equal(audit.counters.connectionsFailed, before + 1);
    assert.equal(listener.active, 1);
    held.destroy();
  });
});
