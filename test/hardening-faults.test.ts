/**
 * Faults the runtime must survive without being restarted: each gets a clear log line, a state in
 * GET /health (where a part covers it), and recovery once the fault is gone. Covered elsewhere and
 * not repeated here: the certificate store's own NSM fallbacks and base renewal retries
 * (tls-certificate-store "NSM failures"), and ACME backoff against an injected clock
 * (tls-acme-renewal "renewal against an injected clock").
 */
import assert from 'node:assert/strict';
import { axios as acmeAxios } from 'acme-client';
import { spawnSync } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import { startAttestationApi } from '../src/attestation/attestation-api.js';
import { NsmError } from '../src/attestation/nsm.js';
import { NsmHealth } from '../src/attestation/nsm-health.js';
import { defaultSimulatedPcr, openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import { parseAddress } from '../src/net/address.js';
import { validateConfig } from '../src/config/validate.js';
import type { TcpAddress } from '../src/net/address.js';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { EgressAudit } from '../src/egress/egress-audit.js';
import { EgressStatus, encodeEgressReply, parseEgressHeader } from '../src/wire/egress-header.js';
import { NameCache } from '../src/egress/name-cache.js';
import { TransparentListener } from '../src/egress/transparent-listener.js';
import { HealthMonitor } from '../src/metrics/health.js';
import { silentLogger } from '../src/core/log.js';
import { startProvisioner } from '../src/provisioner/provisioner-service.js';
import { Runtime } from '../src/runtime.js';
import { verifyPeerAttestation } from '../src/tls/attested-client.js';
import { openProvisionedCertificateSource } from '../src/tls/provisioned-certificate-source.js';
import { TlsTerminator } from '../src/tls/tls-terminator.js';
import { connectTls, ControlledNsm, documentFromSan, echo, listenTls, peerLeaf } from './helpers/attested-tls.js';
import { eventually, portOf, runCli, type CliRun } from './helpers/cli-run.js';
import { loopbackConfigLines } from './helpers/dev-config.js';
import { captureLogs } from './helpers/log-capture.js';
import { closesWithin, freePort, tcpConnect } from './helpers/net.js';
import { startPebble, type Pebble } from './helpers/pebble.js';
import { commandMissing } from './helpers/privilege.js';
import { startTinyDns } from './helpers/tiny-dns.js';

const dir = mkdtempSync(join(tmpdir(), 'hardening-faults-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
/** Generous bounds on things that happen at once; they only stop a broken test from hanging. */
const CLOSE_BOUND_MS = 10_000;

interface HealthAnswer {
  status: number;
  parts: Record<string, { ok: boolean; detail: string; counters?: Record<string, number> }>;
}

async function getHealth(port: number): Promise<HealthAnswer> {
  const response = await fetch(`http://127.0.0.1:${port}/health`);
  return { status: response.status, parts: ((await response.json()) as { parts: HealthAnswer['parts'] }).parts };
}

/** Polls /health on `port` until `predicate` holds; returns that answer. */
function healthUntil(port: number, predicate: (h: HealthAnswer) => boolean, what: string): Promise<HealthAnswer> {
  return eventually(async () => {
    const answer = await getHealth(port);
    return predicate(answer) ? answer : undefined;
  }, what);
}

/** Writes `data` and reads until `expected.length` bytes came back. */
async function roundTrip(socket: net.Socket | tls.TLSSocket, data: string): Promise<string> {
  let got = '';
  const done = new Promise<string>((resolve, reject) => {
    const onData = (chunk: Buffer) => {
      got += chunk.toString('utf8');
      if (got.length >= data.length) {
        socket.off('data', onData);
        resolve(got);
      }
    };
    socket.on('data', onData);
    socket.once('error', reject);
    socket.once('close', () => reject(new Error(`closed after ${JSON.stringify(got)}`)));
  });
  socket.write(data);
  return done;
}

/**
 * A TCP front for a service that the test can take away and give back: while closed, every
 * connection is reset on accept (as from a host that is down); while open, bytes pass through.
 */
async function startGate(targetPort: () => number): Promise<{ port: number; open: boolean; close(): Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const gate = { port: 0, open: true, close: async () => {} };
  const server = net.createServer((client) => {
    sockets.add(client);
    client.on('close', () => sockets.delete(client));
    client.on('error', () => {});
    if (!gate.open) {
      client.resetAndDestroy();
      return;
    }
    const upstream = net.connect({ host: '127.0.0.1', port: targetPort() });
    sockets.add(upstream);
    upstream.on('close', () => sockets.delete(upstream));
    upstream.on('error', () => client.destroy());
    client.on('close', () => upstream.destroy());
    client.pipe(upstream).pipe(client);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  gate.port = (server.address() as net.AddressInfo).port;
  gate.close = async () => {
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => server.close(resolve));
  };
  return gate;
}

describe('the app crashes mid-stream and is restarted (real CLI, TLS ingress, [app] restart = "on-failure")', () => {
  // The customer app: an echo server that dies by SIGKILL when it reads "CRASH". While the hold file
  // exists a fresh start waits before listening, so the test decides when the app is back.
  const APP = `
import net from 'node:net';
import { existsSync } from 'node:fs';
const hold = process.env.APP_HOLD;
const serve = () => {
  const server = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.on('data', (chunk) => (chunk.includes('CRASH') ? process.kill(process.pid, 'SIGKILL') : socket.write(chunk)));
  });
  server.listen(Number(process.env.APP_PORT), '127.0.0.1');
  process.on('SIGTERM', () => process.exit(0));
};
const wait = () => (existsSync(hold) ? setTimeout(wait, 20) : serve());
wait();
`;

  it('closes the open connection, refuses new ones with a warn line, reports app not ok, and recovers when the app is back', async () => {
    const appPort = await freePort();
    const appFile = join(dir, 'crashing-app.mjs');
    const hold = join(dir, 'app.hold');
    writeFileSync(appFile, APP);
    const config = join(dir, 'crash.toml');
    writeFileSync(
      config,
      [
        '[runtime]',
        'log_level = "debug"',
        'health_listen = "tcp:127.0.0.1:0"',
        '[ingress]',
        'listen = "tcp:127.0.0.1:0"',
        `app = "tcp:127.0.0.1:${appPort}"`,
        // Far beyond the bounds below: a close seen here comes from the refused connect, not a timeout.
        'connect_timeout_ms = 120000',
        '[attestation]',
        'api_listen = "tcp:127.0.0.1:0"',
        '[metrics]',
        'enabled = false',
        '[app]',
        'restart = "on-failure"',
        'restart_backoff_ms = 0',
        'healthcheck_interval_ms = 100',
        'healthcheck_timeout_ms = 500',
      ].join('\n'),
    );
    const stateDir = join(dir, 'crash-state');
    const run = runCli(['dev', '--config', config, '--state-dir', stateDir, '--', process.execPath, appFile], {
      env: { APP_PORT: String(appPort), APP_HOLD: hold },
    });
    try {
      const ingressPort = portOf((await run.waitFor('ingress listening')).listen);
      const apiPort = portOf((await run.waitFor('internal API listening')).listen);
      await run.waitFor('app is up');
      const ca = readFileSync(join(stateDir, 'ca.pem'), 'utf8');
      const connect = () => connectTls({ port: ingressPort }, { servername: 'localhost', ca });

      const open = await connect();
      assert.equal(await roundTrip(open, 'before the crash'), 'before the crash');
      const firstPid = run.logs.find((line) => line.msg === 'customer command started')?.pid;

      // The app dies mid-stream; its restart waits on the hold file.
      writeFileSync(hold, '');
      open.write('CRASH');
      assert.ok(await closesWithin(open, CLOSE_BOUND_MS), 'the open connection was not closed when the app died');
      const restart = await run.waitFor('customer command exited; restarting');
      assert.equal(restart.status, 128 + 9);
      // Both sides are gone: the runtime holds no connection for it any more.
      await healthUntil(
        apiPort,
        (h) => h.parts.ingress?.detail === '0 open connections',
        'the relayed connection released',
      );

      // While the app is down: a new connection completes TLS, then is closed promptly with one warn line.
      const refused = await connect();
      assert.ok(await closesWithin(refused, CLOSE_BOUND_MS), 'a connection to the down app was not closed');
      const warn = await run.waitFor('app unreachable; closing the ingress connection');
      assert.equal(warn.level, 40);
      assert.equal(warn.app, `tcp:127.0.0.1:${appPort}`);
      assert.equal(warn.code, 'ECONNREFUSED');
      const down = await healthUntil(
        apiPort,
        (h) => h.status === 503 && h.parts.app?.ok === false,
        'app not ok in /health',
      );
      assert.match(down.parts.app!.detail, /ECONNREFUSED/);
      assert.ok(run.logs.some((line) => line.msg === 'app is down' && line.level === 40));

      // The app is back: health recovers and connections work, in the same runtime process.
      unlinkSync(hold);
      await healthUntil(apiPort, (h) => h.status === 200 && h.parts.app?.ok === true, 'app ok again');
      const again = await connect();
      assert.equal(await roundTrip(again, 'after the restart'), 'after the restart');
      again.destroy();
      const started = run.logs.filter((line) => line.msg === 'customer command started');
      assert.equal(started.length, 2);
      assert.notEqual(started[1]?.pid, firstPid);
      assert.equal(run.child.exitCode, null, 'the runtime kept running');
    } finally {
      if (existsSync(hold)) unlinkSync(hold);
      run.child.kill('SIGTERM');
    }
    assert.equal(await run.exited, 0, run.output().toString('utf8').slice(-3000));
    assert.deepEqual(run.otherLines(), []);
  });
});

/**
 * The parent's egress relay as the test controls it, on a unix socket (the addon's stream code, as
 * vsock uses): it reads the egress header, answers OK, and pipes to the destination on loopback.
 */
async function startFakeRelay(path: string): Promise<{ streams: Set<net.Socket>; close(): Promise<void> }> {
  const streams = new Set<net.Socket>();
  const server = net.createServer({ allowHalfOpen: true }, (stream) => {
    streams.add(stream);
    stream.on('close', () => streams.delete(stream));
    stream.on('error', () => {});
    let head = Buffer.alloc(0);
    const onData = (chunk: Buffer) => {
      head = Buffer.concat([head, chunk]);
      const parsed = parseEgressHeader(head);
      if (parsed.kind === 'incomplete') return;
      stream.off('data', onData);
      stream.pause();
      const destination = net.connect({ host: '127.0.0.1', port: parsed.header.port, allowHalfOpen: true }, () => {
        stream.write(encodeEgressReply(EgressStatus.OK));
        if (head.length > parsed.length) destination.write(head.subarray(parsed.length));
        stream.pipe(destination).pipe(stream);
        stream.resume();
      });
      destination.on('error', () => stream.destroy());
      stream.on('close', () => destination.destroy());
    };
    stream.on('data', onData);
  });
  server.listen(path);
  await once(server, 'listening');
  return {
    streams,
    async close() {
      const closed = new Promise((resolve) => server.close(resolve));
      for (const stream of streams) stream.destroy();
      await closed;
    },
  };
}

describe('the host relay drops or resets (transparent egress over a unix-socket relay)', () => {
  const relayPath = join(dir, 'relay.sock');
  const logs = captureLogs('debug');
  const audit = new EgressAudit(logs.logger);
  let echoServer: net.Server;
  let echoPort = 0;
  let listener: TransparentListener;

  before(async () => {
    echoServer = net.createServer({ allowHalfOpen: true }, (socket) => {
      socket.on('error', () => {});
      socket.pipe(socket);
    });
    echoServer.listen(0, '127.0.0.1');
    await once(echoServer, 'listening');
    echoPort = (echoServer.address() as net.AddressInfo).port;
    listener = await TransparentListener.start({
      listen: parseAddress('tcp:127.0.0.1:0') as TcpAddress,
      allowlist: compileAllowlist(['127.0.0.1']),
      cache: new NameCache(),
      relay: parseAddress(`unix:${relayPath}`),
      peekTimeoutMs: 50,
      connectTimeoutMs: 2000,
      idleTimeoutMs: 60_000,
      maxConnections: 16,
      audit,
      logger: logs.logger,
      // The test plays the kernel's part (iptables REDIRECT): every connection was meant for the echo server.
      originalDestination: () => ({ address: '127.0.0.1', port: echoPort }),
    });
  });
  after(async () => {
    await listener.close();
    echoServer.close();
  });

  /** What the app sees at the end of a connection: a clean end, or the error code. */
  const ending = (socket: net.Socket) =>
    new Promise<string>((resolve) => {
      socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
      socket.once('end', () => resolve('end'));
    });

  const failures = (reason: string) =>
    logs.lines.filter((line) => line.msg === 'egress failed' && line.reason === reason);

  it('a relay stream reset mid-connection resets the app connection, with one warn line; the next connection works', async () => {
    const relay = await startFakeRelay(relayPath);
    try {
      const app = await tcpConnect(listener.port);
      assert.equal(await roundTrip(app, 'through the relay'), 'through the relay');
      const [stream] = relay.streams;
      assert.ok(stream);
      // The relay stops reading; once its buffer is full the app's bytes wait unread in the socket,
      // and then it dies: the kernel resets a unix stream closed with unread data, as a crashed relay's.
      stream.unpipe();
      stream.pause();
      const ended = ending(app);
      app.write(randomBytes(4 * 1024 * 1024));
      await eventually(
        () => (stream.readableLength >= stream.readableHighWaterMark ? true : undefined),
        'the relay stopped reading',
      );
      const failedBefore = audit.counters.connectionsFailed;
      stream.destroy();
      // Which the app's kernel reports depends on whether it was reading or writing when the RST came.
      assert.match(await ended, /^(ECONNRESET|EPIPE)$/, 'the app saw a clean end instead of a reset');
      const line = await eventually(() => failures('relay-reset')[0], 'a relay-reset line');
      assert.equal(line.level, 40);
      assert.equal(line.event, 'egress-failed');
      assert.equal(line.ip, '127.0.0.1');
      assert.equal(line.port, echoPort);
      assert.equal(audit.counters.connectionsFailed, failedBefore + 1, '/health egress counters count it');

      const next = await tcpConnect(listener.port);
      assert.equal(await roundTrip(next, 'the next one'), 'the next one');
      next.destroy();
    } finally {
      await relay.close();
    }
  });

  it('a relay that goes away: the open connection ends, its next write is reset, new ones are reset; all work again once it is back', async () => {
    let relay = await startFakeRelay(relayPath);
    const app = await tcpConnect(listener.port);
    assert.equal(await roundTrip(app, 'before the drop'), 'before the drop');
    const resetsBefore = failures('relay-reset').length;
    const ended = ending(app);
    await relay.close();
    // A dropped stream looks like the destination closing its side (FIN); the app may still write...
    assert.equal(await ended, 'end');
    const failed = new Promise<string>((resolve) =>
      app.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message)),
    );
    app.write('into the void');
    // ...and that write finds the relay gone: the app's connection is reset, with a warn line.
    await eventually(
      () => (failures('relay-reset').length > resetsBefore ? true : undefined),
      'a relay-reset line for the dropped stream',
    );
    app.write('once more');
    assert.match(await failed, /^(ECONNRESET|EPIPE)$/);

    // While the relay is down, each new connection is reset at once, with its own warn line.
    const unreachableBefore = failures('relay-unreachable').length;
    const refused = await tcpConnect(listener.port);
    refused.write('GET / HTTP/1.1\r\n\r\n');
    assert.equal(await ending(refused), 'ECONNRESET');
    assert.equal(failures('relay-unreachable').length, unreachableBefore + 1);

    relay = await startFakeRelay(relayPath);
    try {
      const next = await tcpConnect(listener.port);
      assert.equal(await roundTrip(next, 'after the relay came back'), 'after the relay came back');
      next.destroy();
    } finally {
      await relay.close();
    }
  });
});

describe('the NSM fails or stalls', () => {
  const echoApp = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.pipe(socket);
  });
  before(async () => {
    echoApp.listen(0, '127.0.0.1');
    await once(echoApp, 'listening');
  });
  after(() => echoApp.close());

  it('through Runtime.start: the base certificate keeps being served, nonces fall back, the API answers 503, /health says so, and all recover', async () => {
    const stateDir = join(dir, 'nsm-state');
    const nsm = new ControlledNsm(await openSimulatedNsm({ stateDir }));
    const logs = captureLogs('debug');
    const config = validateConfig(
      {
        runtime: { state_dir: stateDir, health_listen: 'tcp:127.0.0.1:0' },
        metrics: { enabled: false },
        ingress: { listen: 'tcp:127.0.0.1:0', app: `tcp:127.0.0.1:${(echoApp.address() as net.AddressInfo).port}` },
        attestation: { api_listen: 'tcp:127.0.0.1:0' },
        app: { healthcheck_interval_ms: 100 },
      },
      'dev',
    );
    const runtime = await Runtime.start(config, 'dev', logs.logger, { nsm });
    try {
      const apiPort = portOf(logs.lines.find((line) => line.msg === 'internal API listening')?.listen);
      const healthPort = portOf(logs.lines.find((line) => line.msg === 'health endpoint listening')?.listen);
      const ingressPort = portOf(runtime.ingressAddress);
      const simRoot = readFileSync(join(stateDir, 'sim-nsm-root.pem'), 'utf8');
      const attestViaApi = (query = '') => fetch(`http://127.0.0.1:${apiPort}/attestation-doc${query}`);
      const handshake = async (servername: string) => {
        const socket = await connectTls({ port: ingressPort }, { servername, checkName: 'localhost' });
        const leaf = peerLeaf(socket);
        const echoed = await roundTrip(socket, 'relayed');
        socket.destroy();
        return { leaf, echoed };
      };
      await healthUntil(apiPort, (h) => h.status === 200, 'healthy at start');
      const base = (await handshake('localhost')).leaf;

      nsm.failWith = new NsmError('ERR_NSM_TIMEOUT', 'the NSM did not answer within 15000 ms');
      // The cached base certificate is served, and its document still verifies.
      const during = await handshake('localhost');
      assert.equal(during.leaf.fingerprint256, base.fingerprint256);
      assert.equal(during.echoed, 'relayed');
      // A new nonce cannot be attested: the handshake gets the base certificate (no nonce) and the data flows.
      const nonce = randomBytes(16);
      const fallback = await handshake(`${hex(nonce)}.attest.localhost`);
      assert.equal(fallback.leaf.fingerprint256, base.fingerprint256);
      assert.equal(verifyPeerAttestation(fallback.leaf, { root: simRoot }).document.nonce, null);
      assert.equal(fallback.echoed, 'relayed');
      // The API answers 503 with a retry hint, GET and POST alike.
      const refused = await attestViaApi(`?nonce=${hex(nonce)}`);
      assert.equal(refused.status, 503);
      assert.equal(refused.headers.get('retry-after'), '1');
      assert.equal(((await refused.json()) as { code: string }).code, 'ERR_NSM_TIMEOUT');
      const posted = await fetch(`http://127.0.0.1:${apiPort}/attestation-doc`, {
        method: 'POST',
        body: '{"nonce":"abc"}',
      });
      assert.equal(posted.status, 503);
      // /health names the fault, on the internal API and on health_listen.
      for (const port of [apiPort, healthPort]) {
        const health = await getHealth(port);
        assert.equal(health.status, 503);
        assert.equal(health.parts.attestation?.ok, false);
        assert.match(health.parts.attestation!.detail, /ERR_NSM_TIMEOUT/);
        assert.equal(health.parts.app?.ok, true, 'only the attestation part is at fault');
      }
      const failing = logs.lines.filter((line) => line.msg === 'NSM attestation failing');
      assert.equal(failing.length, 1, 'one line for the fault, not one per call');
      assert.equal(failing[0]?.level, 40);
      assert.equal(failing[0]?.code, 'ERR_NSM_TIMEOUT');
      assert.ok(
        logs.lines.some(
          (line) => line.level === 40 && line.msg === 'attestation failed' && line.code === 'ERR_NSM_TIMEOUT',
        ),
      );
      assert.ok(logs.lines.some((line) => line.level === 40 && /nonce certificate/.test(String(line.msg))));

      // The NSM works again: the next call succeeds, health recovers, nonces are attested.
      nsm.failWith = undefined;
      const answered = await attestViaApi(`?nonce=${hex(nonce)}`);
      assert.equal(answered.status, 200);
      assert.equal(
        hex(verifyAttestation(new Uint8Array(await answered.arrayBuffer()), { root: simRoot, nonce }).document.nonce!),
        hex(nonce),
      );
      const healthy = await getHealth(apiPort);
      assert.equal(healthy.status, 200, JSON.stringify(healthy.parts));
      assert.deepEqual(healthy.parts.attestation, { ok: true, detail: 'simulated NSM' });
      assert.ok(logs.lines.some((line) => line.msg === 'NSM attestation works again'));
      const attested = await handshake(`${hex(nonce)}.attest.localhost`);
      assert.equal(
        hex(verifyPeerAttestation(attested.leaf, { root: simRoot, expectedNonce: nonce }).document.nonce!),
        hex(nonce),
      );
    } finally {
      await runtime.stop();
    }
  });

  it('a stalled NSM: the API gives up with 503, handshakes fall back to the base certificate, /health reports the stall until it clears', async () => {
    const stateDir = join(dir, 'stall-state');
    const logs = captureLogs('debug');
    const controlled = new ControlledNsm(await openSimulatedNsm({ stateDir }));
    const nsm = new NsmHealth(controlled, { logger: logs.logger, stallMs: 50 });
    const health = new HealthMonitor({ app: parseAddress('tcp:127.0.0.1:9'), logger: silentLogger() });
    health.watchAttestation(() => nsm.health());
    health.watch({ ingress: undefined, nsm, tls: true });
    const api = await startAttestationApi({
      listen: { host: '127.0.0.1', port: 0 },
      nsm,
      logger: logs.logger,
      limits: { attestTimeoutMs: 300 },
    });
    const terminator = await TlsTerminator.create({
      nsm,
      stateDir,
      serverName: 'localhost',
      sniNonceEncoding: 'hex',
      nonceCacheSize: 16,
      issueTimeoutMs: 300,
      logger: logs.logger,
    });
    const server = await listenTls(terminator, echo);
    let release = () => {};
    try {
      controlled.gate = new Promise<void>((resolve) => (release = resolve));
      const refused = await fetch(`http://127.0.0.1:${api.address.port}/attestation-doc`);
      assert.equal(refused.status, 503);
      assert.equal(((await refused.json()) as { code: string }).code, 'ERR_NSM_TIMEOUT');
      const socket = await connectTls(server, {
        servername: `${hex(randomBytes(8))}.attest.localhost`,
        checkName: 'localhost',
      });
      assert.equal(
        hex(documentFromSan(peerLeaf(socket))),
        hex(terminator.store.base.document),
        'the base certificate was served',
      );
      socket.destroy();
      const stalled = await eventually(() => {
        const part = health.report().parts.attestation;
        return part && !part.ok ? part : undefined;
      }, 'attestation reported stalled');
      assert.match(stalled.detail, /^simulated NSM: an attestation has been pending for \d+ ms$/);
      assert.ok(
        logs.lines.some(
          (line) => line.level === 40 && line.msg === 'attestation failed' && line.code === 'ERR_NSM_TIMEOUT',
        ),
      );
      assert.ok(
        logs.lines.some(
          (line) =>
            line.level === 40 &&
            line.msg === 'nonce certificate not ready in time; serving the base certificate instead',
        ),
      );

      controlled.gate = undefined;
      release();
      await eventually(
        () => (health.report().parts.attestation?.ok ? true : undefined),
        'attestation ok once the calls completed',
      );
      assert.equal((await fetch(`http://127.0.0.1:${api.address.port}/attestation-doc`)).status, 200);
    } finally {
      release();
      health.stop();
      await server.close();
      await terminator.close();
      await api.close();
      await nsm.close();
    }
  });
});

describe(
  'ACME unavailable, then back (real pebble behind a gate, through Runtime.start)',
  { skip: commandMissing('pebble') },
  () => {
    const DOMAIN = 'acme.test';
    let pebble: Pebble;
    let gate: Awaited<ReturnType<typeof startGate>>;
    let dns: Awaited<ReturnType<typeof startTinyDns>>;
    let app: net.Server;
    let ingressPort = 0;

    // acme-client retries a request that got no answer 5 times, waiting 5 s more each time (75 s in all),
    // before the order fails and the runtime's own backoff applies; the test keeps its retries, not its waits.
    const acmeSettings = (acmeAxios.defaults as unknown as { acmeSettings: { retryDefaultDelay: number } })
      .acmeSettings;
    const retryDefaultDelay = acmeSettings.retryDefaultDelay;

    before(async () => {
      acmeSettings.retryDefaultDelay = 0;
      dns = await startTinyDns([DOMAIN]);
      ingressPort = await freePort();
      pebble = await startPebble({ tlsPort: ingressPort, dnsPort: dns.port });
      // pebble names its endpoints after the Host it was asked on, so every ACME request goes through the gate.
      gate = await startGate(() => Number(new URL(pebble.directoryUrl).port));
      app = net.createServer((socket) => {
        socket.on('error', () => {});
        socket.pipe(socket);
      });
      app.listen(0, '127.0.0.1');
      await once(app, 'listening');
    });
    after(async () => {
      acmeSettings.retryDefaultDelay = retryDefaultDelay;
      await gate?.close();
      await pebble?.close();
      await dns?.close();
      app?.close();
    });

    it('serves the attested base for the ACME domain with retries scheduled and /health acme not ok, then the ACME certificate once the CA answers', async () => {
      gate.open = false;
      const stateDir = join(dir, 'acme-state');
      const logs = captureLogs('info');
      const config = validateConfig(
        {
          runtime: { state_dir: stateDir, health_listen: 'tcp:127.0.0.1:0' },
          metrics: { enabled: false },
          ingress: {
            listen: `tcp:127.0.0.1:${ingressPort}`,
            app: `tcp:127.0.0.1:${(app.address() as net.AddressInfo).port}`,
          },
          attestation: { api_listen: 'tcp:127.0.0.1:0' },
          tls: {
            alpn: ['http/1.1'],
            acme: {
              enabled: true,
              directory_url: `https://127.0.0.1:${gate.port}/dir`,
              domains: [DOMAIN],
              ca_file: pebble.httpsCaFile,
              retry_min_ms: 100,
              retry_max_ms: 400,
            },
          },
        },
        'dev',
      );
      const runtime = await Runtime.start(config, 'dev', logs.logger);
      try {
        const apiPort = portOf(logs.lines.find((line) => line.msg === 'internal API listening')?.listen);
        const failed = () =>
          logs.lines.filter(
            (line) => line.msg === 'ACME order failed; serving the attested base certificate meanwhile',
          );
        await eventually(() => (failed().length >= 2 ? true : undefined), 'a failed order and a retry');
        const [first, second] = failed();
        assert.equal(first?.level, 40);
        assert.equal(first?.consecutiveFailures, 1);
        assert.equal(second?.consecutiveFailures, 2);
        assert.ok(
          typeof first?.retryInMs === 'number' && first.retryInMs >= 50 && first.retryInMs <= 100,
          `retry after ${String(first?.retryInMs)} ms`,
        );

        const down = await getHealth(apiPort);
        assert.equal(down.status, 503);
        assert.equal(down.parts.acme?.ok, false);
        assert.match(down.parts.acme!.detail, /^failing; last error: /);
        // The domain is still served, with the attested base certificate, and data reaches the app.
        const simRoot = readFileSync(join(stateDir, 'sim-nsm-root.pem'), 'utf8');
        const onBase = await connectTls({ port: ingressPort }, { servername: DOMAIN, checkName: 'localhost' });
        verifyPeerAttestation(onBase, { root: simRoot });
        assert.equal(await roundTrip(onBase, 'still served'), 'still served');
        onBase.destroy();

        gate.open = true;
        await eventually(
          () => logs.lines.find((line) => line.msg === 'ACME certificate now served'),
          'an ACME certificate after the CA came back',
          2400,
        );
        const up = await getHealth(apiPort);
        assert.equal(up.parts.acme?.ok, true, JSON.stringify(up.parts.acme));
        const root = new X509Certificate(await pebble.issuingRootPem());
        const onAcme = await connectTls({ port: ingressPort }, { servername: DOMAIN, checkName: DOMAIN });
        const chain = onAcme.getPeerCertificate(true);
        assert.equal(peerLeaf(onAcme).subjectAltName, `DNS:${DOMAIN}`);
        assert.ok(
          new X509Certificate(chain.issuerCertificate.raw).checkIssued(root),
          "the served certificate chains to pebble's root",
        );
        assert.equal(await roundTrip(onAcme, 'now on ACME'), 'now on ACME');
        onAcme.destroy();
      } finally {
        await runtime.stop();
      }
    });
  },
);

describe('the provisioner unreachable at renewal (tls.source = "provisioner")', () => {
  it('keeps the current intermediate and serves leaves under it, retries with backoff, and renews once the provisioner is back', async () => {
    const stateDir = join(dir, 'provisioned-state');
    const sim = await openSimulatedNsm({ stateDir });
    const provisioner = await startProvisioner({
      listen: parseAddress('tcp:127.0.0.1:0'),
      caDir: join(dir, 'provisioner-ca'),
      attestationRootPem: sim.rootPem,
      allowedPcrs: [{ 0: defaultSimulatedPcr(0), 1: defaultSimulatedPcr(1), 2: defaultSimulatedPcr(2) }],
      logger: silentLogger(),
    });
    const gate = await startGate(() => (provisioner.address as { port: number }).port);
    const logs = captureLogs('debug');
    const LIFETIME_MS = 24 * 3600_000;
    // The enclave's clock is put past two thirds of the intermediate's life, so renewal is due at once.
    let skewMs = 0.7 * LIFETIME_MS;
    const source = await openProvisionedCertificateSource({
      nsm: sim,
      address: parseAddress(`tcp:127.0.0.1:${gate.port}`),
      timeoutMs: 2000,
      logger: logs.logger,
      retryMinMs: 100,
      now: () => Date.now() + skewMs,
    });
    // Closed before the first renewal timer can fire (it waits at least retryMinMs).
    gate.open = false;
    const terminator = await TlsTerminator.create({
      nsm: sim,
      stateDir,
      serverName: 'localhost',
      sniNonceEncoding: 'hex',
      nonceCacheSize: 16,
      logger: silentLogger(),
      source,
    });
    const server = await listenTls(terminator, echo);
    try {
      const intermediate = source.intermediatePem;
      const renewFailed = () =>
        logs.lines.filter(
          (line) => line.msg === 'renewing the provisioned intermediate CA failed; the current one stays in use',
        );
      await eventually(() => (renewFailed().length >= 2 ? true : undefined), 'two failed renewals');
      const [first, second] = renewFailed();
      assert.equal(first?.level, 40);
      assert.equal(first?.code, 'ERR_PROVISIONING_UNREACHABLE');
      assert.deepEqual([first?.retryMs, second?.retryMs], [100, 200], 'the wait doubles');
      assert.equal(source.intermediatePem, intermediate, 'the current intermediate is kept');
      // Leaves (a fresh nonce one included) are still issued under it and chain to the provisioner root.
      const socket = await connectTls(server, {
        servername: `${hex(randomBytes(8))}.attest.localhost`,
        checkName: 'localhost',
      });
      const served = socket.getPeerCertificate(true);
      assert.ok(new X509Certificate(served.raw).checkIssued(new X509Certificate(intermediate)));
      assert.equal(await roundTrip(socket, 'served'), 'served');
      socket.destroy();

      skewMs = 0;
      gate.open = true;
      await eventually(
        () => (source.intermediatePem !== intermediate ? true : undefined),
        'a renewed intermediate once the provisioner is back',
      );
      assert.equal(logs.lines.filter((line) => line.msg === 'provisioned the enclave intermediate CA').length, 2);
      assert.ok(new X509Certificate(source.intermediatePem).checkIssued(new X509Certificate(provisioner.rootPem)));
    } finally {
      await server.close();
      await terminator.close();
      await source.close();
      await gate.close();
      await provisioner.close();
      await sim.close();
    }
  });
});

/** Why mounts cannot be made here (tmpfs in a private mount namespace), or undefined. */
function mountsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (mounts a tmpfs in a private mount namespace)';
  const probe = spawnSync('unshare', ['-m', 'sh', '-c', 'mount -t tmpfs -o size=64k tmpfs "$1"', 'sh', dir], {
    stdio: 'ignore',
  });
  return probe.status === 0 ? undefined : 'cannot mount a tmpfs in a private mount namespace (unshare -m)';
}

describe('the state dir is read-only or full', { skip: mountsUnavailable() }, () => {
  let config: string;
  let echoApp: net.Server;

  before(async () => {
    echoApp = net.createServer((socket) => {
      socket.on('error', () => {});
      socket.pipe(socket);
    });
    echoApp.listen(0, '127.0.0.1');
    await once(echoApp, 'listening');
    config = join(dir, 'state-dir.toml');
    writeFileSync(
      config,
      [
        ...loopbackConfigLines({ appPort: (echoApp.address() as net.AddressInfo).port }),
        '[app]',
        'healthcheck_interval_ms = 100',
      ].join('\n'),
    );
  });
  after(() => echoApp.close());

  /**
   * `dev` in its own mount namespace, with a 64 KiB tmpfs on a fresh mount point after `setup`
   * (shell, `$1` = the mount point); the mount goes away with the process.
   */
  function devOnTmpfs(
    name: string,
    setup: string,
    stateDir: (mount: string) => string,
  ): { run: CliRun; mount: string } {
    const mount = join(dir, name);
    mkdirSync(mount);
    const script = `mount -t tmpfs -o size=64k tmpfs "$1" && ${setup} && shift && exec "$@"`;
    const run = runCli(['dev', '--config', config, '--state-dir', stateDir(mount)], {
      prefix: ['unshare', '-m', 'sh', '-c', script, 'sh', mount],
    });
    return { run, mount };
  }

  /** The one fatal line of a start-up that must fail: exit 1, JSON lines only (no stack trace). */
  async function failedStart(run: CliRun): Promise<Record<string, unknown>> {
    assert.equal(await run.exited, 1, run.output().toString('utf8'));
    assert.deepEqual(run.otherLines(), [], 'only JSON log lines on stderr');
    const fatal = run.logs.filter((line) => line.level === 60);
    assert.equal(fatal.length, 1, JSON.stringify(run.logs));
    assert.equal(fatal[0]!.msg, 'runtime failed to start');
    assert.equal(fatal[0]!.code, 'ERR_STATE_DIR');
    return fatal[0]!;
  }

  it('read-only: start-up stops with one fatal line naming the state dir and EROFS, exit 1', async () => {
    // A state dir still to be made, and one that exists: both on a read-only file system.
    for (const [name, sub] of [
      ['ro-fresh', 'state'],
      ['ro-existing', ''],
    ] as const) {
      const { run, mount } = devOnTmpfs(name, 'mount -o remount,ro "$1"', (m) => (sub ? join(m, sub) : m));
      const fatal = await failedStart(run);
      const stateDir = sub ? join(mount, sub) : mount;
      assert.match(
        String(fatal.reason),
        new RegExp(
          `^the state dir ${escapeRegExp(stateDir)} (cannot be created|is not writable): EROFS: read-only file system$`,
        ),
      );
    }
  });

  it('full: start-up stops with one fatal line naming the state dir and ENOSPC, exit 1', async () => {
    const { run, mount } = devOnTmpfs('full', '{ dd if=/dev/zero of="$1/filler" bs=4096 2>/dev/null; true; }', (m) =>
      join(m, 'state'),
    );
    const fatal = await failedStart(run);
    assert.match(
      String(fatal.reason),
      new RegExp(
        `^the state dir ${escapeRegExp(join(mount, 'state'))} (cannot be created|is not writable): ENOSPC: no space left on device$`,
      ),
    );
  });

  it('read-only after start: the runtime keeps serving TLS, nonces, the API and /health', async () => {
    const { run, mount } = devOnTmpfs('ro-later', 'true', (m) => join(m, 'state'));
    try {
      const ingressPort = portOf((await run.waitFor('ingress listening')).listen);
      const apiPort = portOf((await run.waitFor('internal API listening')).listen);
      await run.waitFor('runtime ready');
      const remount = spawnSync('nsenter', [
        '-t',
        String(run.child.pid),
        '-m',
        'sh',
        '-c',
        'mount -o remount,ro "$1" && ! touch "$1/state/probe" 2>/dev/null',
        'sh',
        mount,
      ]);
      assert.equal(remount.status, 0, `the state dir did not become read-only: ${remount.stderr.toString()}`);

      const simRoot = await eventually(() => {
        const out = spawnSync('nsenter', [
          '-t',
          String(run.child.pid),
          '-m',
          'cat',
          join(mount, 'state', 'sim-nsm-root.pem'),
        ]);
        return out.status === 0 ? out.stdout.toString('utf8') : undefined;
      }, 'the simulated NSM root read');
      const nonce = randomBytes(16);
      const socket = await connectTls(
        { port: ingressPort },
        { servername: `${hex(nonce)}.attest.localhost`, checkName: 'localhost' },
      );
      assert.equal(
        hex(verifyPeerAttestation(socket, { root: simRoot, expectedNonce: nonce }).document.nonce!),
        hex(nonce),
      );
      assert.equal(await roundTrip(socket, 'read-only state'), 'read-only state');
      socket.destroy();
      const document = await fetch(`http://127.0.0.1:${apiPort}/attestation-doc?nonce=00ff`);
      assert.equal(document.status, 200);
      await healthUntil(apiPort, (h) => h.status === 200, 'healthy with a read-only state dir');
      assert.ok(
        !run.logs.some((line) => (line.level as number) >= 50),
        JSON.stringify(run.logs.filter((line) => (line.level as number) >= 50)),
      );
    } finally {
      run.child.kill('SIGTERM');
    }
    assert.equal(await run.exited, 0, run.output().toString('utf8').slice(-3000));
  });
});
