/**
 * Slow clients cannot hold the runtime hostage: slowloris on the TLS ingress and on the internal
 * API is cut by the handshake/header timeouts and bounded by the connection caps, without starving
 * normal clients; a slow reader is held back by backpressure (the app's writes block, memory stays
 * flat) and kept while it makes progress, and everything is released when it goes.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { describe, it } from 'node:test';
import { startAttestationApi } from '../src/attestation/attestation-api.js';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import { parseAddress } from '../src/net/address.js';
import { Ingress, type IngressOptions } from '../src/ingress/ingress.js';
import { silentLogger, type Logger } from '../src/core/log.js';
import { RuntimeMetrics } from '../src/metrics/runtime-metrics.js';
import { connectTls, duplexPair, openTerminator, type TerminatorFixture } from './helpers/attested-tls.js';
import { captureLogs } from './helpers/log-capture.js';
import { closesWithin, tcpConnect } from './helpers/net.js';

/** How long a test waits for something that must happen; far above every timeout under test. */
const EVENTUALLY_MS = 15_000;

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `condition` until it holds; fails naming `what` if it never does. */
async function eventually(what: string, condition: () => boolean): Promise<void> {
  const deadline = Date.now() + EVENTUALLY_MS;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`never happened: ${what}`);
    await sleep(20);
  }
}

/** The first flight of a real client handshake: a complete ClientHello record as OpenSSL sends it. */
async function captureClientHello(): Promise<Buffer> {
  const [clientSide, wire] = duplexPair();
  const client = tls.connect({ socket: clientSide, servername: 'localhost', rejectUnauthorized: false });
  client.on('error', () => {});
  const [hello] = (await once(wire, 'data')) as [Buffer];
  client.destroy();
  assert.equal(hello[0], 0x16, 'a TLS handshake record');
  return Buffer.from(hello);
}

/** An app that echoes every byte and counts the connections that reached it. */
async function startEchoApp(): Promise<{ port: number; connections: () => number; close(): Promise<void> }> {
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    connections: () => connections,
    async close() {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

function ingressOptions(appPort: number, logger: Logger, overrides: Partial<IngressOptions> = {}): IngressOptions {
  return {
    listen: parseAddress('tcp:127.0.0.1:0'),
    app: parseAddress(`tcp:127.0.0.1:${appPort}`),
    proxyProtocol: 'off',
    sendProxyProtocol: 'off',
    maxConnections: 4096,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 60_000,
    proxyHeaderTimeoutMs: 2000,
    logger,
    ...overrides,
  };
}

/** A client that holds a connection open, sending `drip` one byte per `everyMs` (or nothing), never all of it. */
interface Slowloris {
  socket: net.Socket;
  /** The server closed or reset the connection. */
  cut: boolean;
  /** Everything the server sent before cutting it. */
  received: () => Buffer;
}

async function slowloris(port: number, drip?: { head?: Buffer; bytes: Buffer; everyMs: number }): Promise<Slowloris> {
  const socket = await tcpConnect(port);
  const chunks: Buffer[] = [];
  const slow: Slowloris = { socket, cut: false, received: () => Buffer.concat(chunks) };
  let timer: NodeJS.Timeout | undefined;
  const onCut = () => {
    slow.cut = true;
    clearInterval(timer);
  };
  socket.on('error', () => {});
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  socket.once('end', onCut);
  socket.once('close', onCut);
  if (drip) {
    if (drip.head) socket.write(drip.head);
    let sent = 0;
    timer = setInterval(() => {
      if (sent < drip.bytes.length && socket.writable) socket.write(drip.bytes.subarray(sent, ++sent));
    }, drip.everyMs);
  }
  return slow;
}

/** A full TLS handshake through the ingress and one echoed message. */
async function tlsRoundTrip(port: number, message: string): Promise<string> {
  const socket = await connectTls({ port });
  try {
    socket.write(message);
    let answer = '';
    for await (const chunk of socket) {
      answer += (chunk as Buffer).toString();
      if (answer.length >= message.length) break;
    }
    return answer;
  } finally {
    socket.destroy();
  }
}

/** The value of `enclave_tls_handshakes_total{result}` as /metrics would show it. */
function handshakes(metrics: RuntimeMetrics, result: 'ok' | 'failed'): number {
  const line = new RegExp(`^enclave_tls_handshakes_total\\{result="${result}"\\} (\\d+)$`, 'm').exec(
    metrics.registry.render(),
  );
  return line ? Number(line[1]) : 0;
}

const handshakeTimeouts = (lines: Array<Record<string, unknown>>) =>
  lines.filter((line) => line.msg === 'TLS connection error' && line.code === 'ERR_TLS_HANDSHAKE_TIMEOUT');

/** A TLS ingress (metered like the runtime's) in front of an echo app, with logs captured at debug. */
async function tlsIngress(handshakeTimeoutMs: number, overrides: Partial<IngressOptions> = {}) {
  const logs = captureLogs('debug');
  const fixture: TerminatorFixture = await openTerminator({ terminator: { handshakeTimeoutMs }, logger: logs.logger });
  const metrics = new RuntimeMetrics({ version: 'test', mode: 'dev' });
  const app = await startEchoApp();
  const ingress = await Ingress.start({
    ...ingressOptions(app.port, logs.logger, overrides),
    terminator: metrics.meterTerminator(fixture.terminator),
  });
  return {
    logs,
    metrics,
    app,
    ingress,
    port: ingress.address.transport === 'tcp' ? ingress.address.port : assert.fail('tcp ingress'),
    async close() {
      await ingress.stop(0);
      await app.close();
      metrics.close();
      await fixture.close();
    },
  };
}

describe('slow clients on the TLS ingress', () => {
  it('slowloris handshakes are cut by the handshake timeout and the connection cap, and a normal client is served meanwhile', async () => {
    const CAP = 24;
    const SLOW = 16;
    const hello = await captureClientHello();
    const setup = await tlsIngress(4000, { maxConnections: CAP });
    const slow: Slowloris[] = [];
    try {
      // Half say nothing at all; half drip a real ClientHello one byte every 50 ms and never finish it.
      for (let i = 0; i < SLOW; i++) {
        slow.push(
          await slowloris(
            setup.port,
            i % 2 === 0 ? undefined : { bytes: hello.subarray(0, hello.length - 1), everyMs: 50 },
          ),
        );
      }
      await eventually(`${SLOW} slowloris connections open on the ingress`, () => setup.ingress.stats.active === SLOW);

      assert.equal(await tlsRoundTrip(setup.port, 'a normal request'), 'a normal request');
      assert.deepEqual(
        slow.filter((s) => s.cut),
        [],
        'the normal client was served while every slowloris connection was still open',
      );

      // Up to the cap, then one more: that one is closed at once, without a handshake.
      for (let i = SLOW; i < CAP; i++) slow.push(await slowloris(setup.port));
      await eventually('the ingress at its cap', () => setup.ingress.stats.active === CAP);
      const over = await slowloris(setup.port);
      assert.equal(await closesWithin(over.socket, EVENTUALLY_MS), true, 'the connection over the cap was closed');
      assert.equal(setup.ingress.stats.refusedOverCap, 1);
      over.socket.destroy();

      const cut = await Promise.all(slow.map((s) => closesWithin(s.socket, EVENTUALLY_MS)));
      assert.deepEqual(cut, Array<boolean>(CAP).fill(true), 'every slowloris connection was cut');
      await eventually('no ingress connection left', () => setup.ingress.stats.active === 0);
      assert.equal(handshakes(setup.metrics, 'failed'), CAP);
      assert.equal(
        handshakeTimeouts(setup.logs.lines).length,
        CAP,
        'each cut is logged with ERR_TLS_HANDSHAKE_TIMEOUT',
      );
      assert.ok(
        setup.logs.lines.some(
          (line) => line.msg === 'ingress at ingress.max_connections; connection closed' && line.maxConnections === CAP,
        ),
      );
      assert.equal(setup.app.connections(), 1, 'no unfinished handshake ever reached the app');

      // The slots are free again.
      assert.equal(await tlsRoundTrip(setup.port, 'after the flood'), 'after the flood');
      assert.equal(handshakes(setup.metrics, 'ok'), 2);
    } finally {
      for (const s of slow) s.socket.destroy();
      await setup.close();
    }
  });

  it('a client that sends the start of a valid ClientHello and stops is cut at the handshake timeout, and counters and logs show it', async () => {
    const hello = await captureClientHello();
    const setup = await tlsIngress(1000);
    try {
      const stalled = await slowloris(setup.port);
      stalled.socket.write(hello.subarray(0, Math.floor(hello.length / 2)));
      await eventually('the stalled client is on the ingress', () => setup.ingress.stats.active === 1);

      assert.equal(await closesWithin(stalled.socket, EVENTUALLY_MS), true, 'the stalled handshake was cut');
      stalled.socket.destroy();
      await eventually('the connection is released', () => setup.ingress.stats.active === 0);
      const logged = handshakeTimeouts(setup.logs.lines);
      assert.equal(logged.length, 1);
      assert.match(String(logged[0]?.message), /not done within 1000 ms/);
      assert.equal(handshakes(setup.metrics, 'failed'), 1);
      assert.equal(handshakes(setup.metrics, 'ok'), 0);
      assert.equal(setup.app.connections(), 0, 'the app was never connected');
    } finally {
      await setup.close();
    }
  });
});

describe('slow clients on the internal API', () => {
  /** GET /attestation-doc on a fresh connection that closes after the answer (no pooled keep-alive socket). */
  function getDocument(port: number): Promise<{ status: number; type: string | undefined; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const request = http.get(
        {
          host: '127.0.0.1',
          port,
          path: '/attestation-doc?nonce=0badc0de',
          agent: false,
          headers: { connection: 'close' },
        },
        (response) => {
          const chunks: Buffer[] = [];
          response.on('data', (chunk: Buffer) => chunks.push(chunk));
          response.once('end', () =>
            resolve({
              status: response.statusCode ?? 0,
              type: response.headers['content-type'],
              body: Buffer.concat(chunks),
            }),
          );
          response.once('error', reject);
        },
      );
      request.once('error', reject);
    });
  }

  it('partial headers and bodies get 408 and are cut, the cap drops the excess, and GET /attestation-doc is served meanwhile', async () => {
    const CAP = 16;
    const stateDir = await mkdtemp(join(tmpdir(), 'slow-api-'));
    const nsm = await openSimulatedNsm({ stateDir });
    const api = await startAttestationApi({
      listen: { host: '127.0.0.1', port: 0 },
      nsm,
      logger: silentLogger(),
      limits: { headersTimeoutMs: 2000, requestTimeoutMs: 3000, maxConnections: CAP },
    });
    const port = api.address.port;
    const slow: Slowloris[] = [];
    try {
      const root = await readFile(join(stateDir, 'sim-nsm-root.pem'), 'utf8');
      for (let i = 0; i < 4; i++) slow.push(await slowloris(port));
      for (let i = 0; i < 4; i++) {
        slow.push(
          await slowloris(port, {
            head: Buffer.from('GET /attestation-doc HTTP/1.1\r\nHost: x\r\nX-Slow: '),
            bytes: Buffer.alloc(4096, 'a'),
            everyMs: 100,
          }),
        );
      }
      for (let i = 0; i < 2; i++) {
        const head = Buffer.from(
          'POST /attestation-doc HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 4000\r\n\r\n{',
        );
        slow.push(await slowloris(port, { head, bytes: Buffer.alloc(3998, ' '), everyMs: 100 }));
      }
      const belowCap = slow.length;

      const served = await getDocument(port);
      assert.equal(served.status, 200);
      assert.equal(served.type, 'application/cbor');
      assert.deepEqual(
        Buffer.from(verifyAttestation(served.body, { root }).document.nonce ?? []),
        Buffer.from('0badc0de', 'hex'),
      );
      assert.deepEqual(
        slow.filter((s) => s.cut),
        [],
        'the document was served while every slow connection was still open',
      );

      while (slow.length < CAP) slow.push(await slowloris(port));
      const over = await slowloris(port);

      const cut = await Promise.all([...slow, over].map((s) => closesWithin(s.socket, EVENTUALLY_MS)));
      assert.deepEqual(cut, Array<boolean>(CAP + 1).fill(true), 'every slow connection was cut');
      assert.equal(over.received().length, 0, 'the connection over the cap was dropped without an answer');
      for (const [i, s] of slow.slice(0, belowCap).entries()) {
        assert.match(s.received().toString('latin1'), /^HTTP\/1\.1 408 /, `slow connection ${i} got 408`);
      }

      const again = await getDocument(port);
      assert.equal(again.status, 200, 'served again once the slow connections are gone');
    } finally {
      for (const s of slow) s.socket.destroy();
      await api.close();
      await nsm.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});

describe('slow readers on the TLS ingress', () => {
  const RESPONSE_BYTES = 256 * 1024 * 1024;
  const CHUNK = Buffer.alloc(1024 * 1024, 0x61);

  /**
   * An app that answers the first bytes it gets with a 256 MiB response, writing only when its
   * socket accepts more: `accepted` is what the socket took so far, `blocked` whether write()
   * returned false and 'drain' has not come since.
   */
  async function startBulkApp() {
    const state = { accepted: 0, blocked: false, connections: 0, closed: 0 };
    const server = net.createServer((socket) => {
      state.connections++;
      socket.on('error', () => {});
      socket.once('close', () => state.closed++);
      const pump = (): void => {
        while (state.accepted < RESPONSE_BYTES) {
          state.accepted += CHUNK.length;
          if (!socket.write(CHUNK)) {
            state.blocked = true;
            socket.once('drain', () => {
              state.blocked = false;
              pump();
            });
            return;
          }
        }
        socket.end();
      };
      socket.once('data', pump);
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    return {
      state,
      port: (server.address() as net.AddressInfo).port,
      close: () => new Promise((resolve) => server.close(resolve)),
    };
  }

  async function slowReaderSetup(idleTimeoutMs: number) {
    const logs = captureLogs('debug');
    const fixture = await openTerminator();
    const app = await startBulkApp();
    const ingress = await Ingress.start({
      ...ingressOptions(app.port, logs.logger, { idleTimeoutMs }),
      terminator: fixture.terminator,
    });
    const port = ingress.address.transport === 'tcp' ? ingress.address.port : assert.fail('tcp ingress');
    const client = await connectTls({ port });
    client.on('error', () => {});
    return {
      logs,
      app,
      ingress,
      client,
      async close() {
        client.destroy();
        await ingress.stop(0);
        await app.close();
        await fixture.close();
      },
    };
  }

  it('a 1-byte-per-second reader: the app write() blocks, memory stays bounded, and destroying the reader releases everything', async () => {
    const setup = await slowReaderSetup(60_000);
    const { app, client, ingress } = setup;
    try {
      const rssBefore = process.memoryUsage().rss;
      client.pause();
      client.write('GET /large HTTP/1.1\r\n\r\n');
      // The buffers along the way (the app's socket, the runtime's streams, both kernels) fill, then nothing moves.
      let last = -1;
      let unchangedSince = Date.now();
      await eventually('the app blocked in write() with nothing more accepted for 500 ms', () => {
        if (app.state.accepted !== last || !app.state.blocked) {
          last = app.state.accepted;
          unchangedSince = Date.now();
        }
        return Date.now() - unchangedSince >= 500;
      });
      const acceptedWhenBlocked = app.state.accepted;

      let read = 0;
      for (let second = 0; second < 3; second++) {
        await sleep(1000);
        read += client.read(1)?.length ?? 0;
      }
      const rssGrowth = process.memoryUsage().rss - rssBefore;

      assert.equal(read, 3, 'the reader got its byte each second');
      assert.equal(app.state.blocked, true, "the app's write() is still waiting for 'drain'");
      assert.equal(
        app.state.accepted,
        acceptedWhenBlocked,
        'nothing more was taken from the app while the reader crawled',
      );
      assert.ok(
        app.state.accepted <= 64 * 1024 * 1024,
        `only the buffers' worth was taken (${app.state.accepted} of ${RESPONSE_BYTES} bytes)`,
      );
      assert.ok(rssGrowth < 64 * 1024 * 1024, `RSS grew by ${rssGrowth} bytes`);
      assert.equal(ingress.stats.active, 1, 'the connection is still open');

      client.destroy();
      await eventually('the ingress connection is released', () => ingress.stats.active === 0);
      await eventually("the app's side is closed", () => app.state.closed === 1);
      assert.equal(app.state.accepted, acceptedWhenBlocked, 'the rest of the response was never pulled from the app');
    } finally {
      await setup.close();
    }
  });

  it('a slow reader making progress outlives the idle timeout; once it stops reading, the idle timeout cuts it', async () => {
    const IDLE_MS = 1500;
    // 512 KiB per 100 ms is far below loopback speed yet drains the socket buffers often enough
    // for the runtime to move bytes well within every idle period (see README, idle_timeout_ms).
    const BYTES_PER_TICK = 512 * 1024;
    const setup = await slowReaderSetup(IDLE_MS);
    const { app, client, ingress, logs } = setup;
    try {
      let received = 0;
      let budget = BYTES_PER_TICK;
      client.on('data', (chunk: Buffer) => {
        received += chunk.length;
        budget -= chunk.length;
        if (budget <= 0) client.pause();
      });
      const ticker = setInterval(() => {
        budget = BYTES_PER_TICK;
        client.resume();
      }, 100);
      client.write('GET /large HTTP/1.1\r\n\r\n');

      const progress: number[] = [];
      try {
        for (let period = 0; period < 3; period++) {
          await sleep(IDLE_MS);
          progress.push(received);
        }
      } finally {
        clearInterval(ticker);
        client.pause();
      }
      assert.equal(
        ingress.stats.active,
        1,
        `the connection outlived three idle timeouts while reading (${progress.join(', ')} bytes)`,
      );
      assert.ok(
        progress[0]! > 0 && progress[1]! > progress[0]! && progress[2]! > progress[1]!,
        `bytes arrived in every period: ${progress.join(', ')}`,
      );
      assert.ok(received < RESPONSE_BYTES, 'the response was still being sent');
      assert.equal(app.state.blocked, true, 'the app is held back by the reader, not the other way round');

      // No more reading: nothing moves, and the idle timeout closes both sides.
      await eventually('the stalled reader is cut', () => ingress.stats.active === 0);
      await eventually("the app's side is closed", () => app.state.closed === 1);
      const closed = logs.lines.filter((line) => line.msg === 'ingress connection closed');
      assert.deepEqual(
        closed.map((line) => line.end),
        ['idle'],
      );
    } finally {
      await setup.close();
    }
  });
});
