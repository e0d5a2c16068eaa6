/**
 * `ingress.tls_engine = "native"`: the addon's TLS relay (src/native/tls_relay.cc) in a worker
 * thread. The shared worker behaviour (spreading, one issuance per nonce, metrics, restarts,
 * draining, base renewal) is covered for both engines in ingress-workers.test.ts; here is what
 * the relay itself must do: bytes and half-closes both ways, backpressure, each timeout, each
 * refusal, and a bad client never hurting the next one.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import net from 'node:net';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { IngressWorkers } from '../src/ingress/ingress-workers.js';
import { newStatsBuffer, snapshotCertificate } from '../src/ingress/ingress-worker-protocol.js';
import { alpnWire, NativeTlsIngress } from '../src/ingress/native-tls-ingress.js';
import { chooseTlsEngine } from '../src/ingress/tls-engine.js';
import { closeFd, nativeUnavailable } from '../src/native/native-binding.js';
import { openSharedListener } from '../src/net/shared-listener.js';
import { Runtime } from '../src/runtime.js';
import {
  documentFromSan,
  openTerminator,
  peerLeaf,
  workerTls,
  type TerminatorFixture,
} from './helpers/attested-tls.js';
import { eventually } from './helpers/cli-run.js';
import { problemsOf } from './helpers/config-problems.js';
import { captureLogs } from './helpers/log-capture.js';
import { freePort, readAll, sha256, startEchoApp, type EchoApp } from './helpers/net.js';
import { decodeAttestationPayload } from '../src/verify/document.js';
import { decodeCoseSign1 } from '../src/verify/cose-sign1.js';

const skip = nativeUnavailable();

interface Engine {
  workers: IngressWorkers;
  port: number;
  logs: ReturnType<typeof captureLogs>;
  stop: () => Promise<void>;
}

let fx: TerminatorFixture;
before(async () => {
  if (!skip) fx = await openTerminator();
});
after(async () => fx?.close());

async function startEngine(
  appPort: number,
  settings: {
    appConnect?: 'eager' | 'first-byte';
    idleTimeoutMs?: number;
    handshakeTimeoutMs?: number;
    maxConnections?: number;
  } = {},
): Promise<Engine> {
  const logs = captureLogs('info');
  const workers = await IngressWorkers.start({
    ...parseConfig('', 'run').ingress,
    tlsEngine: 'native',
    listen: { transport: 'tcp', host: '127.0.0.1', port: 0 },
    app: { transport: 'tcp', host: '127.0.0.1', port: appPort },
    workers: 1,
    ...(settings.appConnect ? { appConnect: settings.appConnect } : {}),
    ...(settings.idleTimeoutMs ? { idleTimeoutMs: settings.idleTimeoutMs } : {}),
    ...(settings.maxConnections ? { maxConnections: settings.maxConnections } : {}),
    logger: logs.logger,
    nsm: fx.nsm,
    tls: workerTls(fx, settings.handshakeTimeoutMs),
  });
  const port = workers.address.transport === 'tcp' ? workers.address.port : 0;
  return { workers, port, logs, stop: () => workers.stop(0) };
}

async function handshake(engine: { port: number }, options: tls.ConnectionOptions = {}): Promise<tls.TLSSocket> {
  const secure = tls.connect({
    host: '127.0.0.1',
    port: engine.port,
    servername: 'localhost',
    ca: fx.caPem,
    ALPNProtocols: ['http/1.1'],
    ...options,
  });
  await once(secure, 'secureConnect');
  return secure;
}

/** Resolves once `socket` is closed, however (reset, end, destroy); the error it met, if any. */
async function closed(socket: net.Socket): Promise<NodeJS.ErrnoException | undefined> {
  let error: NodeJS.ErrnoException | undefined;
  socket.on('error', (e: NodeJS.ErrnoException) => (error = e));
  // Not events.once: it rejects on 'error', and the error is what some callers want to see.
  if (!socket.closed) await new Promise((resolve) => socket.once('close', resolve));
  return error;
}

describe('the native TLS engine', { skip }, () => {
  let app: EchoApp;
  let engine: Engine;
  before(async () => {
    app = await startEchoApp();
    engine = await startEngine(app.port);
  });
  after(async () => {
    await engine?.stop();
    app?.close();
  });

  it('serves the attested base certificate, chained to the CA, with the ALPN offered', async () => {
    const secure = await handshake(engine);
    assert.equal(secure.authorized, true);
    assert.equal(secure.alpnProtocol, 'http/1.1');
    const payload = decodeAttestationPayload(decodeCoseSign1(documentFromSan(peerLeaf(secure))).payload);
    assert.equal(payload.nonce, null);
    secure.destroy();
  });

  it("relays 8 MiB each way intact, and the client's end reaches the app and comes back", async () => {
    const secure = await handshake(engine);
    const sent = randomBytes(8 * 1024 * 1024);
    const received = readAll(secure);
    secure.end(sent);
    // The echo app ends its side when ours ends: the whole stream came back, then a clean end.
    assert.equal(sha256(await received), sha256(sent));
  });

  it('holds the client back while the reader is slow (backpressure), losing nothing', async () => {
    const secure = await handshake(engine);
    // More than every socket buffer on the way (client, relay, app, and back) can hold.
    const sent = randomBytes(64 * 1024 * 1024);
    secure.pause();
    secure.write(sent);
    secure.end();
    // Nothing is read for a while: the relay must stop reading rather than buffer it all.
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.ok(secure.writableLength > 0, 'the client still holds bytes the relay has not taken');
    const received = readAll(secure);
    secure.resume();
    assert.equal(sha256(await received), sha256(sent));
  });

  it('serves a nonce certificate whose document carries the SNI nonce; a bad label gets the base one', async () => {
    const nonce = 'c0ffee0102030405';
    const secure = await handshake(engine, { servername: `${nonce}.ATTEST.localhost` });
    const payload = decodeAttestationPayload(decodeCoseSign1(documentFromSan(peerLeaf(secure))).payload);
    assert.equal(Buffer.from(payload.nonce ?? []).toString('hex'), nonce);
    secure.destroy();
    const bad = await handshake(engine, {
      servername: 'not-hex.attest.localhost',
      ca: undefined,
      rejectUnauthorized: false,
    });
    const badPayload = decodeAttestationPayload(decodeCoseSign1(documentFromSan(peerLeaf(bad))).payload);
    assert.equal(badPayload.nonce, null);
    bad.destroy();
  });

  it('refuses a client with no ALPN protocol in common, and bytes that are not TLS, then serves the next', async () => {
    // The earlier tests' connections are counted once closed (one destroyed right after its handshake may
    // count as failed on the server, late): wait for them, so the count below is this test's alone.
    await eventually(() => (engine.workers.stats.active === 0 ? true : undefined), 'earlier connections closed');
    const failedBefore = engine.workers.handshakes().failed;
    const h2 = tls.connect({
      host: '127.0.0.1',
      port: engine.port,
      servername: 'localhost',
      ca: fx.caPem,
      ALPNProtocols: ['h2'],
    });
    const error = await closed(h2);
    assert.match(String(error?.message), /no.application.protocol/i);
    const raw = net.connect(engine.port, '127.0.0.1');
    raw.end('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closed(raw);
    await eventually(
      () => (engine.workers.handshakes().failed - failedBefore === 2 ? true : undefined),
      'both counted as failed handshakes',
    );
    const next = await handshake(engine);
    next.write('still serving');
    const [data] = (await once(next, 'data')) as [Buffer];
    assert.equal(data.toString(), 'still serving');
    next.destroy();
  });

  it('counts what it accepted and gives every connection back', async () => {
    await eventually(() => (engine.workers.stats.active === 0 ? true : undefined), 'earlier connections closed');
    const before = engine.workers.stats.accepted;
    const sockets = await Promise.all(Array.from({ length: 5 }, () => handshake(engine)));
    assert.equal(engine.workers.stats.accepted - before, 5);
    assert.equal(engine.workers.stats.active, 5);
    for (const socket of sockets) socket.destroy();
    await eventually(() => (engine.workers.stats.active === 0 ? true : undefined), 'all connections closed');
  });
});

/**
 * One engine in this thread on a listener of its own, as worker `index` of the workers whose
 * open connections `loads` holds: the test plays the siblings by writing their slots.
 */
async function startSibling(
  appPort: number,
  loads: Int32Array,
  index: number,
  slots: Float64Array = new Float64Array(newStatsBuffer()),
) {
  const listener = await openSharedListener({ transport: 'tcp', host: '127.0.0.1', port: 0 }, 128);
  const { terminator } = fx;
  const base = terminator.store.base;
  const keyPair = terminator.store.keyPairOf(base);
  assert.ok(keyPair);
  const fd = listener.dup();
  const starting = NativeTlsIngress.start({
    fd,
    settings: {
      ...parseConfig('', 'run').ingress,
      listen: listener.address,
      app: { transport: 'tcp', host: '127.0.0.1', port: appPort },
    },
    tls: {
      ...workerTls(fx).settings,
      nsmKind: fx.nsm.kind,
      sourceKind: terminator.source.kind,
      trustAnchorPem: terminator.trustAnchorPem,
      base: snapshotCertificate(base, keyPair),
    },
    logger: captureLogs('info').logger,
    slots,
    balance: { loads, index },
    ask: () => Promise.reject(new Error('no nonce certificates here')),
  });
  // Refused before the relay took the fd: it is still the caller's.
  const ingress = await starting.catch(async (error: unknown) => {
    closeFd(fd);
    await listener.close();
    throw error;
  });
  const port = listener.address.transport === 'tcp' ? listener.address.port : 0;
  return {
    ingress,
    port,
    close: async () => {
      await ingress.stop(0);
      await listener.close();
    },
  };
}

describe("the native engine's accept balance between workers", { skip }, () => {
  let app: EchoApp;
  before(async () => {
    app = await startEchoApp();
  });
  after(() => app?.close());

  it('takes its counters only over shared memory, and its index only inside them', async () => {
    const shared = (length: number) => new Int32Array(new SharedArrayBuffer(4 * length));
    const refused = [
      { loads: new Int32Array(2), index: 0, what: /balance must be/ },
      { loads: shared(2), index: 2, what: /balance must be/ },
      {
        loads: new Float64Array(new SharedArrayBuffer(16)) as unknown as Int32Array,
        index: 0,
        what: /balance must be/,
      },
    ];
    for (const { loads, index, what } of refused)
      await assert.rejects(startSibling(app.port, loads, index), { code: 'ERR_NATIVE_ARGUMENT', message: what });
    await assert.rejects(startSibling(app.port, shared(2), 0, new Float64Array(64)), {
      code: 'ERR_NATIVE_ARGUMENT',
      message: /stats must be a Float64Array over a SharedArrayBuffer/,
    });
  });

  it('publishes its open connections for its siblings, and -1 once it no longer accepts', async () => {
    const loads = new Int32Array(new SharedArrayBuffer(8)).fill(-1);
    const engine = await startSibling(app.port, loads, 1);
    try {
      assert.deepEqual([...loads], [-1, 0]);
      const sockets = await Promise.all([0, 1, 2].map(() => handshake(engine)));
      assert.deepEqual([...loads], [-1, 3]);
      for (const socket of sockets) socket.destroy();
      await eventually(() => (loads[1] === 0 ? true : undefined), 'the closed connections leave its load');
    } finally {
      await engine.close();
    }
    assert.equal(loads[1], -1);
  });

  it('serves every connection even while a sibling that never accepts holds fewer', async () => {
    // The sibling says it accepts and holds none, but never takes one: after a short yield this
    // worker takes them itself.
    const loads = new Int32Array(new SharedArrayBuffer(8)).fill(0);
    const engine = await startSibling(app.port, loads, 0);
    try {
      const sockets = await Promise.all(Array.from({ length: 24 }, () => handshake(engine)));
      assert.equal(engine.ingress.stats.accepted, 24);
      assert.equal(loads[0], 24);
      for (const socket of sockets) socket.destroy();
    } finally {
      await engine.close();
    }
  });
});

describe('the native TLS engine, each limit', { skip }, () => {
  it('app_connect = "eager" connects the app once the handshake is done, so the app may speak first', async () => {
    const app = await startEchoApp('220 ready\r\n');
    const engine = await startEngine(app.port);
    try {
      const secure = await handshake(engine);
      const [data] = (await once(secure, 'data')) as [Buffer];
      assert.equal(data.toString(), '220 ready\r\n');
      secure.destroy();
    } finally {
      await engine.stop();
      app.close();
    }
  });

  for (const appConnect of ['first-byte', 'eager'] as const) {
    it(`app_connect = "${appConnect}": a silent client ${appConnect === 'first-byte' ? 'never reaches' : 'reaches'} the app`, async () => {
      const app = await startEchoApp();
      const engine = await startEngine(app.port, { appConnect });
      try {
        const silent = await handshake(engine);
        const talking = await handshake(engine);
        talking.write('hello');
        const [data] = (await once(talking, 'data')) as [Buffer];
        assert.equal(data.toString(), 'hello');
        // One worker thread: the silent client's app connection (eager) was made before the talking one's.
        assert.equal(app.accepted, appConnect === 'first-byte' ? 1 : 2);
        silent.destroy();
        talking.destroy();
      } finally {
        await engine.stop();
        app.close();
      }
    });
  }

  it('closes a client whose app is unreachable, counting and logging it', async () => {
    const app = await startEchoApp();
    app.close();
    await new Promise((resolve) => setImmediate(resolve));
    const engine = await startEngine(app.port);
    try {
      const secure = await handshake(engine);
      await closed(secure);
      assert.equal(engine.workers.stats.appUnreachable, 1);
      await eventually(
        () =>
          engine.logs.lines.some((l) => l.msg?.toString().startsWith('app unreachable') && l.code === 'ECONNREFUSED')
            ? true
            : undefined,
        'the refusal logged with its code',
      );
    } finally {
      await engine.stop();
    }
  });

  it('closes a connection over max_connections at once, counts it and logs it', async () => {
    const app = await startEchoApp();
    const engine = await startEngine(app.port, { maxConnections: 1 });
    try {
      const first = await handshake(engine);
      const second = tls.connect({ host: '127.0.0.1', port: engine.port, servername: 'localhost', ca: fx.caPem });
      assert.ok((await closed(second)) !== undefined, 'the second connection fails its handshake');
      assert.equal(engine.workers.stats.refusedOverCap, 1);
      await eventually(
        () =>
          engine.logs.lines.some((l) => l.msg?.toString().startsWith('ingress at ingress.max_connections'))
            ? true
            : undefined,
        'the refusal logged',
      );
      first.write('first still served');
      const [data] = (await once(first, 'data')) as [Buffer];
      assert.equal(data.toString(), 'first still served');
      first.destroy();
    } finally {
      await engine.stop();
      app.close();
    }
  });

  it('closes a connection idle for idle_timeout_ms, and one that never finishes its handshake', async () => {
    const app = await startEchoApp();
    const engine = await startEngine(app.port, { idleTimeoutMs: 200, handshakeTimeoutMs: 200 });
    try {
      const idle = await handshake(engine);
      const silent = net.connect(engine.port, '127.0.0.1');
      silent.on('data', () => assert.fail('a client that sent nothing got bytes'));
      await Promise.all([closed(idle), closed(silent)]);
      assert.equal(engine.workers.handshakes().failed, 1);
      await eventually(() => (engine.workers.stats.active === 0 ? true : undefined), 'both closed');
    } finally {
      await engine.stop();
      app.close();
    }
  });
});

describe('the runtime with tls_engine = "native" and dev\'s workers = 1', { skip }, () => {
  it('runs the engine in one worker thread and serves through it', async () => {
    const app = await startEchoApp();
    const [apiPort, healthPort, metricsPort, ingressPort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const stateDir = await mkdtemp(join(tmpdir(), 'native-engine-'));
    const config = parseConfig(
      `[runtime]\nstate_dir = "${stateDir}"\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\n` +
        `[ingress]\ntls_engine = "native"\nlisten = "tcp:127.0.0.1:${ingressPort}"\napp = "tcp:127.0.0.1:${app.port}"\n` +
        `[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nlisten = "tcp:127.0.0.1:${metricsPort}"\n`,
      'dev',
    );
    assert.equal(config.ingress.workers, 1);
    const logs = captureLogs('info');
    const runtime = await Runtime.start(config, 'dev', logs.logger);
    try {
      assert.ok(runtime.ingress instanceof IngressWorkers, 'the native engine runs in a worker thread');
      assert.equal(runtime.ingress.workers.total, 1);
      const secure = tls.connect({
        host: '127.0.0.1',
        port: ingressPort,
        servername: 'localhost',
        rejectUnauthorized: false,
      });
      await once(secure, 'secureConnect');
      secure.write('through the runtime');
      const [data] = (await once(secure, 'data')) as [Buffer];
      assert.equal(data.toString(), 'through the runtime');
      secure.destroy();
      assert.ok(logs.lines.some((l) => l.msg === 'ingress worker 0 listening' && l.engine === 'native'));
      const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
      assert.match(text, /^enclave_tls_handshakes_total\{result="ok"\} 1$/m);
    } finally {
      await runtime.stop(0);
      app.close();
      await rm(stateDir, { recursive: true, force: true });
    }
  });
});

describe('ingress.tls_engine in the config', () => {
  it('defaults to "auto" and accepts "node" and "native"', () => {
    assert.equal(parseConfig('', 'run').ingress.tlsEngine, 'auto');
    assert.equal(parseConfig('[ingress]\ntls_engine = "native"\n', 'run').ingress.tlsEngine, 'native');
    assert.equal(parseConfig('[ingress]\ntls_engine = "node"\n', 'run').ingress.tlsEngine, 'node');
  });

  it('"auto" chooses native only where the config, the thread count and the addon allow it, and says why not', () => {
    const choose = (toml: string, mode: 'run' | 'dev' = 'run', unavailable?: string) =>
      chooseTlsEngine(parseConfig(toml, mode), unavailable);
    assert.deepEqual(choose(''), { engine: 'native' });
    assert.match(choose('', 'dev').why ?? '', /ingress\.workers = 1/);
    assert.equal(choose('', 'dev').engine, 'node');
    assert.deepEqual(choose('[ingress]\nworkers = 1\ntls_engine = "native"\n', 'dev'), { engine: 'native' });
    assert.match(choose('', 'run', 'not built').why ?? '', /the addon: not built/);
    assert.match(choose('[tls]\nenabled = false\n').why ?? '', /tls\.enabled = false/);
    for (const [toml, key] of [
      ['[ingress]\nproxy_protocol = "v2"\n', 'ingress.proxy_protocol'],
      ['[ingress]\nsend_proxy_protocol = "v1"\n', 'ingress.send_proxy_protocol'],
      ['[ingress]\nhttp_aware = true\n', 'ingress.http_aware'],
      ['[ingress]\napp = "vsock:3:8000"\n', 'ingress.app'],
    ] as const) {
      const choice = choose(toml);
      assert.equal(choice.engine, 'node', toml);
      assert.ok(choice.why?.startsWith(key), `${toml}: ${choice.why}`);
    }
    assert.deepEqual(choose('[ingress]\ntls_engine = "node"\n'), { engine: 'node' });
    assert.throws(() => choose('[ingress]\ntls_engine = "native"\n', 'run', 'not built'), {
      code: 'ERR_NATIVE_MISSING',
    });
  });

  it('rejects an unknown engine and every setting the native engine does not do, naming the key', () => {
    assert.ok(problemsOf('[ingress]\ntls_engine = "rust"\n').some((p) => p.startsWith('ingress.tls_engine')));
    const cases: Array<[string, RegExp]> = [
      ['[tls]\nenabled = false\n', /tls_engine = "native" needs tls\.enabled = true/],
      ['[ingress]\nproxy_protocol = "v2"\n', /^ingress\.proxy_protocol: "v2" is not read/],
      ['[ingress]\nsend_proxy_protocol = "v1"\n', /^ingress\.send_proxy_protocol: "v1" is not sent/],
      ['[ingress]\nhttp_aware = true\n', /^ingress\.http_aware: not answered/],
      ['[ingress]\napp = "vsock:3:8000"\n', /^ingress\.app: .* not vsock/],
      [
        '[tls.acme]\nenabled = true\ndomains = ["example.com"]\nemail = "a@example.com"\n',
        /^tls\.acme\.enabled: ACME certificates/,
      ],
    ];
    for (const [extra, expected] of cases) {
      const toml = `[ingress]\ntls_engine = "native"\n${extra}`.replace(
        '[ingress]\ntls_engine = "native"\n[ingress]\n',
        '[ingress]\ntls_engine = "native"\n',
      );
      const problems = problemsOf(toml);
      assert.ok(
        problems.some((p) => expected.test(p)),
        `no problem matched ${expected}:\n${problems.join('\n')}`,
      );
    }
  });

  it('writes ALPN names in wire format', () => {
    assert.deepEqual([...alpnWire(['h2', 'http/1.1'])], [2, 0x68, 0x32, 8, ...Buffer.from('http/1.1')]);
  });
});
