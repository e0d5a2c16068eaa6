import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAddress, type Address } from '../src/net/address.js';
import { Ingress, type IngressOptions } from '../src/ingress/ingress.js';
import { encodeProxyHeader, parseProxyHeader } from '../src/net/proxy-protocol.js';
import { captureLogs } from './helpers/log-capture.js';
import { closesWithin, exchange, randomPayload, readAll, sha256, startReplyServer, tcpConnect } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'ingress-test-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function options(listen: Address, app: Address, overrides: Partial<IngressOptions> = {}): IngressOptions {
  return {
    listen,
    app,
    proxyProtocol: 'off',
    sendProxyProtocol: 'off',
    maxConnections: 4096,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 30_000,
    proxyHeaderTimeoutMs: 2000,
    logger: captureLogs().logger,
    ...overrides,
  };
}

function clientFor(ingress: Ingress): Promise<net.Socket> {
  const address = ingress.address;
  if (address.transport === 'tcp') return tcpConnect(address.port);
  if (address.transport !== 'unix') throw new Error('vsock is never connected on a dev machine');
  const socket = net.connect({ path: address.path, allowHalfOpen: true });
  return once(socket, 'connect').then(() => socket);
}

/** The app answers with the SHA-256 of what it got, then its own 4 MiB: both directions checked. */
const appReply = randomPayload(4 * 1024 * 1024);
const replyWithHash = (request: Buffer) => Buffer.concat([Buffer.from(sha256(request)), appReply]);

describe('ingress bridge', () => {
  let app: Awaited<ReturnType<typeof startReplyServer>>;
  before(async () => {
    app = await startReplyServer(replyWithHash);
  });
  after(() => app.server.close());

  const transports: Array<[string, () => Address]> = [
    ['tcp', () => parseAddress('tcp:127.0.0.1:0')],
    ['unix (native stream code)', () => parseAddress(`unix:${join(dir, 'ingress.sock')}`)],
  ];
  for (const [name, listenAddress] of transports) {
    it(`is byte-exact both ways with half-close over ${name}`, async () => {
      const ingress = await Ingress.start(options(listenAddress(), parseAddress(`tcp:127.0.0.1:${app.port}`)));
      try {
        const request = randomPayload(8 * 1024 * 1024 + 17);
        const answer = await exchange(await clientFor(ingress), request);
        assert.equal(answer.subarray(0, 64).toString(), sha256(request), 'the app did not get the exact request');
        assert.equal(sha256(answer.subarray(64)), sha256(appReply), 'the client did not get the exact reply');
      } finally {
        await ingress.stop(0);
      }
    });
  }

  it('forwards to an app on a unix socket', async () => {
    const path = join(dir, 'app.sock');
    const unixApp = net.createServer(
      { allowHalfOpen: true },
      (socket) => void readAll(socket).then((data) => socket.end(Buffer.concat([Buffer.from('unix:'), data]))),
    );
    unixApp.listen(path);
    await once(unixApp, 'listening');
    const ingress = await Ingress.start(options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`unix:${path}`)));
    try {
      const answer = await exchange(await clientFor(ingress), Buffer.from('ping'));
      assert.equal(answer.toString(), 'unix:ping');
    } finally {
      await ingress.stop(0);
      unixApp.close();
    }
  });

  it('reports the open-connection count on every open and close (the heap trimmer watches it)', async () => {
    const echo = await startReplyServer((request) => request);
    const counts: number[] = [];
    const ingress = await Ingress.start(
      options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${echo.port}`), {
        onConnectionCount: (open) => counts.push(open),
      }),
    );
    try {
      const first = await clientFor(ingress);
      const second = await clientFor(ingress);
      assert.equal((await exchange(first, Buffer.from('a'))).toString(), 'a');
      assert.equal((await exchange(second, Buffer.from('b'))).toString(), 'b');
      // The ingress sees each close a moment after the client has its answer.
      for (let i = 0; i < 500 && counts.length < 4; i++) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.deepEqual(counts, [1, 2, 1, 0]);
    } finally {
      await ingress.stop(0);
      echo.server.close();
    }
  });

  it('serves 1,000 concurrent connections, each getting its own bytes', async () => {
    const echo = await startReplyServer((request) => request);
    const ingress = await Ingress.start(
      options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${echo.port}`)),
    );
    try {
      const clients = await Promise.all(Array.from({ length: 1000 }, () => clientFor(ingress)));
      assert.equal(ingress.stats.accepted >= 1, true);
      const answers = await Promise.all(
        clients.map((client, i) => exchange(client, Buffer.from(`connection ${i} `.repeat(50)))),
      );
      answers.forEach((answer, i) => assert.equal(answer.toString(), `connection ${i} `.repeat(50)));
      assert.equal(ingress.stats.accepted, 1000);
      assert.equal(echo.received.length, 1000);
    } finally {
      await ingress.stop(0);
      echo.server.close();
    }
  });

  it('closes promptly with one log line when the app is down', async () => {
    const unused = net.createServer().listen(0, '127.0.0.1');
    await once(unused, 'listening');
    const port = (unused.address() as net.AddressInfo).port;
    await new Promise((resolve) => unused.close(resolve));
    const logs = captureLogs();
    const ingress = await Ingress.start(
      options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${port}`), { logger: logs.logger }),
    );
    try {
      const client = await clientFor(ingress);
      client.on('error', () => {});
      assert.equal(await closesWithin(client, 1500), true, 'the client was left open');
      const lines = logs.lines.filter((line) => line.msg === 'app unreachable; closing the ingress connection');
      assert.equal(lines.length, 1);
      assert.equal(lines[0]?.code, 'ECONNREFUSED');
      assert.equal(lines[0]?.app, `tcp:127.0.0.1:${port}`);
      assert.equal(ingress.stats.appUnreachable, 1);
    } finally {
      await ingress.stop(0);
    }
  });

  it('closes connections over max_connections and serves again once under it', async () => {
    const logs = captureLogs();
    const hold = net.createServer({ allowHalfOpen: true }, (socket) =>
      socket.on('data', () => {}).on('end', () => socket.end('bye')),
    );
    hold.listen(0, '127.0.0.1');
    await once(hold, 'listening');
    const holdPort = (hold.address() as net.AddressInfo).port;
    const ingress = await Ingress.start(
      options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${holdPort}`), {
        maxConnections: 2,
        logger: logs.logger,
      }),
    );
    try {
      const first = await clientFor(ingress);
      const second = await clientFor(ingress);
      while (ingress.stats.active < 2) await new Promise((resolve) => setImmediate(resolve));
      const third = await clientFor(ingress);
      third.on('error', () => {});
      assert.equal(await closesWithin(third, 1500), true, 'the connection over the cap stayed open');
      assert.equal(ingress.stats.refusedOverCap, 1);
      assert.ok(
        logs.lines.some(
          (line) => line.msg === 'ingress at ingress.max_connections; connection closed' && line.maxConnections === 2,
        ),
      );
      assert.equal((await exchange(first, Buffer.from('x'))).toString(), 'bye');
      while (ingress.stats.active > 1) await new Promise((resolve) => setImmediate(resolve));
      const fourth = await clientFor(ingress);
      assert.equal((await exchange(fourth, Buffer.from('y'))).toString(), 'bye');
      second.destroy();
    } finally {
      await ingress.stop(0);
      hold.close();
    }
  });

  it('closes a connection idle for idle_timeout_ms, both sides', async () => {
    let appSide: net.Socket | undefined;
    const quiet = net.createServer((socket) => {
      appSide = socket;
      socket.on('error', () => {});
    });
    quiet.listen(0, '127.0.0.1');
    await once(quiet, 'listening');
    const ingress = await Ingress.start(
      options(
        parseAddress('tcp:127.0.0.1:0'),
        parseAddress(`tcp:127.0.0.1:${(quiet.address() as net.AddressInfo).port}`),
        { idleTimeoutMs: 200 },
      ),
    );
    try {
      const client = await clientFor(ingress);
      client.on('error', () => {});
      assert.equal(await closesWithin(client, 5000), true, 'the idle client was not closed');
      assert.ok(appSide, 'the app never got the connection');
      assert.equal(await closesWithin(appSide, 5000), true, 'the idle app side was not closed');
    } finally {
      await ingress.stop(0);
      quiet.close();
    }
  });

  it('drains open connections on stop, then cuts what is left after the grace period', async () => {
    const hold = net.createServer((socket) => socket.on('error', () => {}));
    hold.listen(0, '127.0.0.1');
    await once(hold, 'listening');
    const ingress = await Ingress.start(
      options(
        parseAddress('tcp:127.0.0.1:0'),
        parseAddress(`tcp:127.0.0.1:${(hold.address() as net.AddressInfo).port}`),
      ),
    );
    const client = await clientFor(ingress);
    client.on('error', () => {});
    while (ingress.stats.active < 1) await new Promise((resolve) => setImmediate(resolve));
    await ingress.stop(100);
    assert.equal(await closesWithin(client, 2000), true);
    assert.equal(ingress.listening, false);
    hold.close();
  });

  describe('app_connect', () => {
    /** An app that counts its connections, greets each at once (server-first) and echoes what it gets. */
    async function greetingApp() {
      const accepted: net.Socket[] = [];
      const server = net.createServer({ allowHalfOpen: true }, (socket) => {
        accepted.push(socket);
        socket.on('error', () => {});
        socket.write('220 ready\r\n');
        socket.pipe(socket);
      });
      server.listen(0, '127.0.0.1');
      await once(server, 'listening');
      const address = parseAddress(`tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}`);
      return { accepted, address, close: () => server.close() };
    }
    /** Reads from `socket` until `length` bytes arrived. */
    function readBytes(socket: net.Socket, length: number): Promise<Buffer> {
      return new Promise((resolve, reject) => {
        const chunks: Buffer[] = [];
        let got = 0;
        const onData = (chunk: Buffer) => {
          chunks.push(chunk);
          got += chunk.length;
          if (got >= length) {
            socket.off('data', onData);
            resolve(Buffer.concat(chunks));
          }
        };
        socket.on('data', onData);
        socket.once('error', reject);
        socket.once('close', () => reject(new Error(`closed after ${got} of ${length} bytes`)));
      });
    }
    const settled = async (ingress: Ingress, active: number) => {
      while (ingress.stats.active !== active) await new Promise((resolve) => setImmediate(resolve));
    };

    /** An ingress in front of a greeting app, with `settings` over the defaults; both stopped after `body`. */
    async function withGreetingIngress(
      settings: Partial<IngressOptions>,
      body: (ingress: Ingress, app: Awaited<ReturnType<typeof greetingApp>>) => Promise<void>,
    ): Promise<void> {
      const app = await greetingApp();
      const ingress = await Ingress.start(options(parseAddress('tcp:127.0.0.1:0'), app.address, settings));
      try {
        await body(ingress, app);
      } finally {
        await ingress.stop(0);
        app.close();
      }
    }

    it('eager (the default) connects the app before the client speaks: a server-first app greets it', async () => {
      await withGreetingIngress({}, async (ingress) => {
        const client = await clientFor(ingress);
        assert.equal((await readBytes(client, 11)).toString(), '220 ready\r\n');
        client.write('HELO x\r\n');
        assert.equal((await readBytes(client, 8)).toString(), 'HELO x\r\n');
        client.destroy();
      });
    });

    it('first-byte connects the app only when the client sends, with the bytes intact', async () => {
      await withGreetingIngress({ appConnect: 'first-byte' }, async (ingress, app) => {
        const silent = await clientFor(ingress);
        silent.on('error', () => {});
        await settled(ingress, 1);
        // A second client that speaks goes all the way to the app and back while the first holds nothing there.
        const speaker = await clientFor(ingress);
        speaker.write('x');
        assert.equal((await readBytes(speaker, 12)).toString(), '220 ready\r\nx');
        assert.equal(app.accepted.length, 1, 'the silent client reached the app');
        assert.equal(ingress.stats.active, 2);
        const payload = randomPayload(256 * 1024);
        silent.write(payload);
        const echoed = await readBytes(silent, 11 + payload.length);
        assert.equal(echoed.subarray(0, 11).toString(), '220 ready\r\n');
        assert.equal(sha256(echoed.subarray(11)), sha256(payload), 'the bytes reached the app altered');
        assert.equal(app.accepted.length, 2);
        silent.destroy();
        speaker.destroy();
      });
    });

    it('first-byte: a client that closes without sending never reaches the app', async () => {
      await withGreetingIngress({ appConnect: 'first-byte' }, async (ingress, app) => {
        for (const close of ['end', 'destroy'] as const) {
          const client = await clientFor(ingress);
          client.on('error', () => {});
          await settled(ingress, 1);
          if (close === 'end') client.end();
          else client.destroy();
          await settled(ingress, 0);
        }
        assert.equal(app.accepted.length, 0);
        assert.equal(ingress.stats.appUnreachable, 0);
      });
    });

    it('first-byte: a silent client is closed after idle_timeout_ms, never reaching the app', async () => {
      await withGreetingIngress({ appConnect: 'first-byte', idleTimeoutMs: 200 }, async (ingress, app) => {
        const client = await clientFor(ingress);
        client.on('error', () => {});
        assert.equal(await closesWithin(client, 5000), true, 'the silent client was not closed');
        await settled(ingress, 0);
        assert.equal(app.accepted.length, 0);
      });
    });
  });

  describe('PROXY protocol', () => {
    let raw: Awaited<ReturnType<typeof startReplyServer>>;
    before(async () => {
      raw = await startReplyServer((request) => request);
    });
    after(() => raw.server.close());
    const source = { address: '203.0.113.7', port: 51234 };
    const destination = { address: '198.51.100.1', port: 443 };

    for (const version of [1, 2] as const) {
      it(`strips a v${version} header from the parent and passes a v2 header to the app`, async () => {
        const ingress = await Ingress.start(
          options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${raw.port}`), {
            proxyProtocol: version === 1 ? 'v1' : 'any',
            sendProxyProtocol: 'v2',
          }),
        );
        try {
          const payload = randomPayload(100_000);
          const answer = await exchange(
            await clientFor(ingress),
            Buffer.concat([encodeProxyHeader(version, { source, destination }), payload]),
          );
          const parsed = parseProxyHeader(answer, 'v2');
          assert.equal(parsed.kind, 'header');
          if (parsed.kind !== 'header') return;
          assert.deepEqual(parsed.header.source, source);
          assert.deepEqual(parsed.header.destination, destination);
          assert.equal(sha256(answer.subarray(parsed.length)), sha256(payload), 'the bytes after the header changed');
        } finally {
          await ingress.stop(0);
        }
      });
    }

    it('sends the tcp peer as a v1 header when the parent sent none', async () => {
      const ingress = await Ingress.start(
        options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${raw.port}`), {
          sendProxyProtocol: 'v1',
        }),
      );
      try {
        const answer = (await exchange(await clientFor(ingress), Buffer.from('body'))).toString();
        assert.match(answer, /^PROXY TCP4 127\.0\.0\.1 127\.0\.0\.1 \d+ \d+\r\nbody$/);
      } finally {
        await ingress.stop(0);
      }
    });

    const malformed: Array<[string, Buffer]> = [
      ['garbage', Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n')],
      ['v1 with a bad address', Buffer.from('PROXY TCP4 999.1.1.1 10.0.0.1 1 2\r\n')],
      ['v1 without CRLF', Buffer.from(`PROXY TCP4 1.1.1.1 2.2.2.2 1 2${' '.repeat(120)}`)],
      [
        'v2 with a bad version',
        Buffer.concat([
          Buffer.from('0d0a0d0a000d0a515549540a', 'hex'),
          Buffer.from([0x31, 0x11, 0, 12]),
          Buffer.alloc(12),
        ]),
      ],
    ];
    for (const [name, bytes] of malformed) {
      it(`rejects and logs a malformed header (${name}), and keeps serving`, async () => {
        const logs = captureLogs();
        const ingress = await Ingress.start(
          options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${raw.port}`), {
            proxyProtocol: 'any',
            logger: logs.logger,
          }),
        );
        try {
          const before = raw.received.length;
          const bad = await clientFor(ingress);
          bad.on('error', () => {});
          bad.write(bytes);
          assert.equal(await closesWithin(bad, 3000), true, 'the malformed connection stayed open');
          assert.equal(raw.received.length, before, 'a malformed connection reached the app');
          assert.ok(
            logs.lines.some(
              (line) =>
                line.msg === 'ingress refused a connection: bad PROXY protocol header' &&
                typeof line.reason === 'string',
            ),
          );
          assert.equal(ingress.stats.badProxyHeader, 1);
          const good = await exchange(
            await clientFor(ingress),
            Buffer.concat([encodeProxyHeader(1, { source, destination }), Buffer.from('still here')]),
          );
          assert.equal(good.toString(), 'still here');
        } finally {
          await ingress.stop(0);
        }
      });
    }

    it('closes a connection whose header never arrives', async () => {
      const ingress = await Ingress.start(
        options(parseAddress('tcp:127.0.0.1:0'), parseAddress(`tcp:127.0.0.1:${raw.port}`), {
          proxyProtocol: 'v2',
          proxyHeaderTimeoutMs: 150,
        }),
      );
      try {
        const silent = await clientFor(ingress);
        silent.on('error', () => {});
        assert.equal(await closesWithin(silent, 3000), true);
        assert.equal(ingress.stats.badProxyHeader, 1);
      } finally {
        await ingress.stop(0);
      }
    });
  });
});
