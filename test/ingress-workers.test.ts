import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { parseConfig } from '../src/config/load.js';
import { IngressWorkers, ingressWorkerCount } from '../src/ingress/ingress-workers.js';
import { nativeUnavailable } from '../src/native/native-binding.js';
import { Runtime } from '../src/runtime.js';
import { ControlledNsm, openTerminator, workerTls } from './helpers/attested-tls.js';
import { eventually } from './helpers/cli-run.js';
import { captureLogs } from './helpers/log-capture.js';
import { freePort, startEchoApp } from './helpers/net.js';

const skip = nativeUnavailable();
const dir = mkdtempSync(join(tmpdir(), 'ingress-workers-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Setup {
  runtime: Runtime;
  workers: IngressWorkers;
  nsm: ControlledNsm;
  logs: ReturnType<typeof captureLogs>;
  metricsPort: number;
  healthPort: number;
  /** A raw transport connection to the ingress. */
  connect: () => net.Socket;
  closeApp: () => void;
  close: () => Promise<void>;
}

type Engine = 'node' | 'native';

async function start(listen: 'tcp' | 'unix', name: string, engine: Engine = 'node'): Promise<Setup> {
  const app = await startEchoApp();
  const [apiPort, healthPort, metricsPort, ingressPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  const stateDir = join(dir, name);
  const socketPath = join(dir, `${name}.sock`);
  const address = listen === 'tcp' ? `tcp:127.0.0.1:${ingressPort}` : `unix:${socketPath}`;
  const config = parseConfig(
    `[runtime]\nstate_dir = "${stateDir}"\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\n` +
      `[ingress]\nworkers = 2\ntls_engine = "${engine}"\nlisten = "${address}"\napp = "tcp:127.0.0.1:${app.port}"\n` +
      `[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nlisten = "tcp:127.0.0.1:${metricsPort}"\n`,
    'dev',
  );
  const nsm = new ControlledNsm(await openSimulatedNsm({ stateDir }));
  const logs = captureLogs('info');
  const runtime = await Runtime.start(config, 'dev', logs.logger, { nsm });
  assert.ok(runtime.ingress instanceof IngressWorkers, 'workers = 2 runs the ingress in worker threads');
  return {
    runtime,
    workers: runtime.ingress,
    nsm,
    logs,
    metricsPort,
    healthPort,
    connect: () => (listen === 'tcp' ? net.connect(ingressPort, '127.0.0.1') : net.connect(socketPath)),
    closeApp: () => app.close(),
    close: async () => {
      await runtime.stop(0);
      app.close();
    },
  };
}

/** A finished TLS handshake over a fresh ingress connection. */
async function handshake(setup: Setup, servername = 'localhost'): Promise<tls.TLSSocket> {
  const secure = tls.connect({ socket: setup.connect(), servername, rejectUnauthorized: false });
  await once(secure, 'secureConnect');
  return secure;
}

async function echo(secure: tls.TLSSocket, text: string): Promise<string> {
  secure.write(text);
  const [data] = (await once(secure, 'data')) as [Buffer];
  return data.toString();
}

const accepted = (setup: Setup) => setup.workers.workerStats().map((stats) => stats.accepted);

/**
 * Opens TLS connections (kept open, so each worker keeps those it took) until both workers have
 * accepted some: the kernel picks the worker, so the bound is a count of tries, not a time.
 */
async function spreadOverBothWorkers(setup: Setup, servername?: string): Promise<tls.TLSSocket[]> {
  const before = accepted(setup);
  const open: tls.TLSSocket[] = [];
  for (let i = 0; i < 200; i++) {
    open.push(await handshake(setup, servername));
    const now = accepted(setup);
    if (now.every((n, w) => n > (before[w] as number))) return open;
  }
  assert.fail(`200 connections all went to one worker: ${JSON.stringify(accepted(setup))}`);
}

function metricValue(text: string, name: string, labels = ''): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}${labels} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

for (const [listen, engine] of [
  ['tcp', 'node'],
  ['unix', 'node'],
  ['tcp', 'native'],
  ['unix', 'native'],
] as const) {
  describe(`ingress.workers = 2 over a ${listen} listener, tls_engine = "${engine}"`, { skip }, () => {
    let setup: Setup;
    before(async () => {
      setup = await start(listen, `rt-${listen}-${engine}`, engine);
    });
    after(async () => {
      await setup?.close();
    });

    it('spreads connections over both workers, terminating TLS in each', async () => {
      const open = await spreadOverBothWorkers(setup);
      for (const [i, secure] of open.entries()) assert.equal(await echo(secure, `hello ${i}`), `hello ${i}`);
      for (const secure of open) secure.destroy();
      const line = setup.logs.lines.find((entry) => entry.msg === 'ingress listening');
      assert.equal(line?.workers, 2);
    });

    it('issues a nonce certificate once for the whole runtime when both workers ask at once', async () => {
      // Each try is a fresh nonce handshaken concurrently on many connections; one try must spread.
      for (let attempt = 0; attempt < 20; attempt++) {
        const nonce = `${listen === 'tcp' ? 'aa' : 'bb'}${engine === 'node' ? 'cc' : 'dd'}${attempt.toString(16).padStart(2, '0')}0102030405`;
        const callsBefore = setup.nsm.nonceCalls;
        const acceptedBefore = accepted(setup);
        const sockets = await Promise.all(
          Array.from({ length: 16 }, () => handshake(setup, `${nonce}.attest.localhost`)),
        );
        for (const secure of sockets) {
          assert.match(
            secure.getPeerCertificate().subjectaltname ?? '',
            new RegExp(`DNS:${nonce}\\.attest\\.localhost`),
          );
          secure.destroy();
        }
        assert.equal(setup.nsm.nonceCalls - callsBefore, 1, 'one NSM call for the nonce');
        if (accepted(setup).every((n, w) => n > (acceptedBefore[w] as number))) return;
      }
      assert.fail('no concurrent batch ever reached both workers');
    });

    it('sums the workers on /metrics and counts them on /health', async () => {
      const secure = await handshake(setup);
      assert.equal(await echo(secure, 'ping'), 'ping');
      secure.destroy();
      const text = await (await fetch(`http://127.0.0.1:${setup.metricsPort}/metrics`)).text();
      const perWorker = accepted(setup);
      const total = perWorker.reduce((a, b) => a + b, 0);
      assert.equal(metricValue(text, 'enclave_ingress_connections_accepted_total'), total);
      perWorker.forEach((n, w) =>
        assert.equal(metricValue(text, 'enclave_ingress_worker_connections_accepted_total', `{worker="${w}"}`), n),
      );
      assert.equal(metricValue(text, 'enclave_ingress_workers_up'), 2);
      // Every connection so far was a handshake, in one worker or the other (a client that closed right after
      // its own Finished may count as failed on the server); each finished one was timed.
      const ok = metricValue(text, 'enclave_tls_handshakes_total', '{result="ok"}') ?? 0;
      const failed = metricValue(text, 'enclave_tls_handshakes_total', '{result="failed"}') ?? 0;
      assert.equal(ok + failed, total);
      assert.ok(ok >= total / 2, `${ok} of ${total} handshakes ok`);
      assert.equal(metricValue(text, 'enclave_tls_handshake_duration_seconds_count'), ok);
      const health = (await (await fetch(`http://127.0.0.1:${setup.healthPort}/health`)).json()) as {
        parts: { ingress: { ok: boolean; detail: string } };
      };
      assert.equal(health.parts.ingress.ok, true);
      assert.match(health.parts.ingress.detail, /2\/2 worker threads up/);
    });

    it('restarts a killed worker and logs it, the other serving meanwhile', async () => {
      await setup.workers.terminateWorker(0);
      assert.equal(setup.workers.workers.up, 1);
      const meanwhile = await handshake(setup);
      assert.equal(await echo(meanwhile, 'still here'), 'still here');
      meanwhile.destroy();
      await eventually(
        () => (setup.workers.restarts === 1 && setup.workers.workers.up === 2 ? true : undefined),
        'worker 0 started again',
      );
      const died = setup.logs.lines.find((entry) => entry.msg?.toString().startsWith('ingress worker died'));
      assert.equal(died?.worker, 0);
      assert.equal(died?.level, 50);
      assert.ok(setup.logs.lines.some((entry) => entry.msg === 'ingress worker started again' && entry.worker === 0));
      // Both accept again.
      for (const secure of await spreadOverBothWorkers(setup)) secure.destroy();
    });
  });
}

describe('the native engine with ingress.workers = 2', { skip }, () => {
  it('splits a burst of 64 connections opened at once between the workers', async () => {
    const setup = await start('tcp', 'rt-burst-native', 'native');
    try {
      // Without the accept balance the worker already running took all 64 in most rounds. With it a
      // worker takes at most 3 above its sibling, or 16 more after the sibling left them waiting
      // 20 ms: 16 of 64 fails only if a worker goes unscheduled for about 60 ms, three times over.
      for (let round = 0; round < 3; round++) {
        const before = accepted(setup);
        const open = await Promise.all(Array.from({ length: 64 }, () => handshake(setup)));
        const taken = accepted(setup).map((n, w) => n - (before[w] as number));
        assert.equal(taken[0]! + taken[1]!, 64);
        assert.ok(Math.min(...taken) >= 16, `round ${round}: one worker took ${Math.max(...taken)} of 64`);
        for (const secure of open) secure.destroy();
        await eventually(
          () => (setup.workers.workerStats().every((stats) => stats.active === 0) ? true : undefined),
          'the burst closed',
        );
      }
    } finally {
      await setup.close();
    }
  });
});

for (const engine of ['node', 'native'] as const)
  describe(`stopping ingress workers, tls_engine = "${engine}"`, { skip }, () => {
    it('drains open connections within the grace, then no longer accepts', async () => {
      const setup = await start('tcp', `rt-drain-${engine}`, engine);
      let stopped = false;
      try {
        const secure = await handshake(setup);
        const stopping = setup.runtime.stop(60_000).then(() => {
          stopped = true;
        });
        await eventually(
          () => (setup.logs.lines.some((entry) => entry.msg === 'ingress draining') ? true : undefined),
          'a worker drains',
        );
        // The open connection still works while its worker drains, and its end lets the stop finish.
        assert.equal(await echo(secure, 'draining'), 'draining');
        assert.equal(stopped, false);
        secure.end();
        await stopping;
        const refused = setup.connect();
        const [error] = (await once(refused, 'error')) as [NodeJS.ErrnoException];
        assert.equal(error.code, 'ECONNREFUSED');
      } finally {
        if (!stopped) await setup.runtime.stop(0);
        setup.closeApp();
      }
    });

    it('removes the unix socket file it made', async () => {
      const setup = await start('unix', `rt-unix-stop-${engine}`, engine);
      const path = join(dir, `rt-unix-stop-${engine}.sock`);
      assert.ok(existsSync(path));
      await setup.close();
      assert.equal(existsSync(path), false);
    });
  });

describe('ingress.workers = 2 over a vsock listener', { skip }, () => {
  // Never connect(): AF_VSOCK connections are not made on test machines; binding, sharing and adopting are.
  it('binds once, every worker adopts its copy, and stop releases the port', async (t) => {
    const port = 40_000 + (process.pid % 20_000);
    const nsm = new ControlledNsm(await openSimulatedNsm({ stateDir: join(dir, 'vsock-nsm') }));
    const settings = parseConfig('[tls]\nenabled = false\n', 'run').ingress;
    const start = () =>
      IngressWorkers.start({
        ...settings,
        listen: { transport: 'vsock', cid: 0xffffffff, port },
        workers: 2,
        logger: captureLogs('info').logger,
        nsm,
      });
    let workers: IngressWorkers;
    try {
      workers = await start();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EAFNOSUPPORT') return t.skip('this kernel has no AF_VSOCK');
      throw error;
    }
    assert.deepEqual(workers.workers, { up: 2, total: 2 });
    assert.deepEqual(workers.address, { transport: 'vsock', cid: 0xffffffff, port });
    await workers.stop(0);
    assert.equal(workers.listening, false);
    // Every copy of the fd is closed: the port can be bound again.
    const again = await start();
    await again.stop(0);
  });
});

describe('a renewed base certificate', { skip }, () => {
  for (const engine of ['node', 'native'] as const)
    it(`reaches every worker (tls_engine = "${engine}")`, async () => {
      const fx = await openTerminator();
      const app = await startEchoApp();
      const settings = parseConfig('', 'run').ingress;
      const workers = await IngressWorkers.start({
        ...settings,
        tlsEngine: engine,
        listen: { transport: 'tcp', host: '127.0.0.1', port: 0 },
        app: { transport: 'tcp', host: '127.0.0.1', port: app.port },
        workers: 2,
        logger: captureLogs('info').logger,
        nsm: fx.nsm,
        tls: workerTls(fx),
      });
      const port = workers.address.transport === 'tcp' ? workers.address.port : 0;
      const served = async () => {
        const secure = tls.connect({ host: '127.0.0.1', port, servername: 'localhost', rejectUnauthorized: false });
        await once(secure, 'secureConnect');
        const fingerprint = secure.getPeerCertificate().fingerprint256;
        secure.destroy();
        return fingerprint;
      };
      try {
        const before = fx.terminator.store.base;
        assert.equal(await served(), new X509Certificate(before.certPem).fingerprint256);
        const renewed = new X509Certificate((await fx.terminator.store.renewBase()).certPem).fingerprint256;
        // Both workers, whichever the kernel picks: every connection of a batch gets the renewed one.
        await eventually(async () => {
          const seen = await Promise.all(Array.from({ length: 8 }, served));
          return seen.every((f) => f === renewed) ? true : undefined;
        }, 'the renewed base certificate served by the workers');
      } finally {
        await workers.stop(0);
        app.close();
        await fx.close();
      }
    });
});

describe('ingressWorkerCount', () => {
  it('keeps 1 in the main thread, honours a count, and names why it cannot', () => {
    const ok = { acme: false, nativeUnavailable: undefined };
    assert.deepEqual(ingressWorkerCount(1, ok), { count: 1 });
    assert.equal(ingressWorkerCount(0, ok).count >= 1, true);
    if (!skip) assert.deepEqual(ingressWorkerCount(3, ok), { count: 3 });
    assert.match(ingressWorkerCount(3, { acme: true, nativeUnavailable: undefined }).reason ?? '', /acme/);
    assert.match(ingressWorkerCount(3, { acme: false, nativeUnavailable: 'no addon' }).reason ?? '', /no addon/);
  });

  it('rejects a workers value outside 0..64 naming the key', () => {
    assert.throws(
      () => parseConfig('[ingress]\nworkers = 65\n', 'run'),
      (error: Error) => /ingress\.workers/.test(error.message) && /0 to 64/.test(error.message),
    );
    assert.throws(() => parseConfig('[ingress]\nworkers = -1\n', 'run'), /ingress\.workers/);
    assert.equal(parseConfig('', 'run').ingress.workers, 0);
    assert.equal(parseConfig('', 'dev').ingress.workers, 1);
  });
});
