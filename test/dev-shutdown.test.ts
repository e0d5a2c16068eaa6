import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import tls from 'node:tls';
import { after, describe, it } from 'node:test';
import { portOf, runCli } from './helpers/cli-run.js';
import { loopbackConfigLines } from './helpers/dev-config.js';
import { freePort } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'dev-shutdown-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** A dev config on free ports with the given grace; TLS on, as `npm start` has it. */
function writeConfig(name: string, appPort: number, graceMs: number): string {
  const path = join(dir, `${name}.toml`);
  writeFileSync(
    path,
    [
      ...loopbackConfigLines({ appPort, runtime: [`shutdown_grace_ms = ${graceMs}`] }),
      '[app]',
      'healthcheck_interval_ms = 100',
    ].join('\n'),
  );
  return path;
}

function tlsConnect(port: number, ca: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ca, servername: 'localhost' }, () => resolve(socket));
    socket.once('error', reject);
  });
}

// Generous bounds for a loaded machine: the test's own timeout, not an assertion on timing.
describe('stopping dev with a supervised command', { timeout: 120_000 }, () => {
  it('Ctrl-C while clients hold connections to the demo app (one kept alive after a request, one with no request yet) exits 0', async () => {
    const appPort = await freePort();
    const stateDir = join(dir, 'demo-state');
    const run = runCli(
      [
        'dev',
        '--config',
        writeConfig('demo', appPort, 3000),
        '--state-dir',
        stateDir,
        '--',
        process.execPath,
        'examples/demo-app.js',
      ],
      {
        env: { PORT: String(appPort) },
      },
    );
    const sockets: tls.TLSSocket[] = [];
    try {
      const ingressPort = portOf((await run.waitFor('ingress listening')).listen);
      const started = await run.waitFor('customer command started');
      await run.waitFor('app is up');
      const ca = readFileSync(join(stateDir, 'ca.pem'), 'utf8');

      const keptAlive = await tlsConnect(ingressPort, ca);
      sockets.push(keptAlive);
      keptAlive.on('error', () => {});
      keptAlive.write('GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n');
      const [answer] = (await once(keptAlive, 'data')) as [Buffer];
      assert.match(answer.toString('latin1'), /^HTTP\/1\.1 200 [\s\S]*keep-alive/i);
      const silent = await tlsConnect(ingressPort, ca);
      sockets.push(silent);
      silent.on('error', () => {});

      run.child.kill('SIGINT');
      const waiting = await run.waitFor('waiting for the customer command to exit');
      assert.equal(waiting.commandPid, started.pid, 'the wait names the command it waits for');
      assert.equal(waiting.graceMs, 3000);
      assert.equal(await run.exited, 0, run.output().toString('utf8').slice(-3000));
      assert.ok(
        !run.logs.some((line) => line.msg?.toString().includes('SIGKILL')),
        'the demo app stopped on SIGTERM by itself',
      );
    } finally {
      for (const socket of sockets) socket.destroy();
      run.child.kill('SIGKILL');
    }
  });

  it('a SIGTERM during start-up is a clean stop: the start finishes, no command is started, exit 0', async () => {
    const appPort = await freePort();
    const marker = join(dir, 'started.marker');
    const run = runCli([
      'dev',
      '--config',
      writeConfig('early', appPort, 1000),
      '--state-dir',
      join(dir, 'early-state'),
      '--',
      process.execPath,
      '-e',
      `require('fs').writeFileSync(${JSON.stringify(marker)}, '')`,
    ]);
    try {
      await run.waitFor('config loaded');
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0, run.output().toString('utf8').slice(-3000));
      const messages = run.logs.map((line) => line.msg);
      assert.ok(messages.includes('shutting down') && messages.includes('runtime stopped'), messages.join('\n'));
      assert.ok(!messages.includes('customer command started'), 'no command is started once a stop has been asked for');
      assert.ok(!existsSync(marker));
    } finally {
      run.child.kill('SIGKILL');
    }
  });

  it('a command that ignores SIGTERM is killed after runtime.shutdown_grace_ms, with its pid in the log', async () => {
    const appPort = await freePort();
    const stubborn = join(dir, 'stubborn.mjs');
    // It listens only once its handlers are in place, so "app is up" means it will ignore SIGTERM.
    writeFileSync(
      stubborn,
      "import net from 'node:net';\nprocess.on('SIGTERM', () => {});\nprocess.on('SIGINT', () => {});\nnet.createServer().listen(Number(process.env.PORT), '127.0.0.1');\n",
    );
    const run = runCli(
      [
        'dev',
        '--config',
        writeConfig('stubborn', appPort, 300),
        '--state-dir',
        join(dir, 'stubborn-state'),
        '--',
        process.execPath,
        stubborn,
      ],
      {
        env: { PORT: String(appPort) },
      },
    );
    try {
      const started = await run.waitFor('customer command started');
      await run.waitFor('app is up');
      run.child.kill('SIGTERM');
      const killed = await run.waitFor(
        'customer command still running after runtime.shutdown_grace_ms; sending SIGKILL',
      );
      assert.equal(killed.commandPid, started.pid);
      assert.equal(killed.level, 40);
      assert.equal(await run.exited, 128 + 9, "the exit status is the killed command's, as a shell reports it");
    } finally {
      run.child.kill('SIGKILL');
    }
  });
});
