import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { createAppProbe } from '../src/app/app-probe.js';
import { parseConfig } from '../src/config/load.js';
import { silentLogger } from '../src/core/log.js';
import { Runtime } from '../src/runtime.js';
import { freePort } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'health-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The customer app: answers GET /healthz with `status()`. */
async function startApp(port: number, status: () => number): Promise<Server> {
  const server = createServer((request, response) => {
    response.writeHead(request.url === '/healthz' ? status() : 404).end('x');
  });
  server.listen(port, '127.0.0.1');
  await once(server, 'listening');
  return server;
}

async function closeApp(server: Server): Promise<void> {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
}

interface Health {
  code: number;
  app: { ok: boolean; detail: string };
}

async function health(port: number): Promise<Health> {
  const response = await fetch(`http://127.0.0.1:${port}/health`);
  const body = (await response.json()) as { parts: { app: Health['app'] } };
  return { code: response.status, app: body.parts.app };
}

/** Polls until `predicate` holds for both endpoints' answers (bounded: a stuck state fails the test). */
async function until(ports: number[], predicate: (h: Health) => boolean, what: string): Promise<Health[]> {
  let last: Health[] = [];
  for (let i = 0; i < 200; i++) {
    last = await Promise.all(ports.map(health));
    if (last.every(predicate)) return last;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.fail(`never ${what}: ${JSON.stringify(last)}`);
}

describe('/health follows the app', () => {
  it('reports the app down and up again, on the internal API and on health_listen alike', async () => {
    const [appPort, apiPort, healthPort, ingressPort] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const config = parseConfig(
      `[runtime]\nstate_dir = "${join(dir, 'state')}"\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\n` +
        `[ingress]\nlisten = "tcp:127.0.0.1:${ingressPort}"\napp = "tcp:127.0.0.1:${appPort}"\n[tls]\nenabled = false\n` +
        `[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nenabled = false\n` +
        `[app]\nhealthcheck = "/healthz"\nhealthcheck_interval_ms = 100\nhealthcheck_timeout_ms = 500\n`,
      'dev',
    );
    const runtime = await Runtime.start(config, 'dev', silentLogger());
    let status = 200;
    let app = await startApp(appPort, () => status);
    try {
      const ports = [apiPort, healthPort];
      const up = await until(ports, (h) => h.code === 200 && h.app.ok, 'up');
      assert.equal(up[0]?.app.detail, `GET tcp:127.0.0.1:${appPort}/healthz: HTTP 200`);

      await closeApp(app);
      const down = await until(ports, (h) => h.code === 503 && !h.app.ok, 'down after the app stopped');
      assert.match(down[1]?.app.detail ?? '', /ECONNREFUSED/);

      app = await startApp(appPort, () => status);
      await until(ports, (h) => h.code === 200 && h.app.ok, 'up again after the app came back');

      // Listening is not enough when the app's own check fails.
      status = 500;
      const unwell = await until(ports, (h) => h.code === 503 && !h.app.ok, 'down on HTTP 500');
      assert.equal(unwell[0]?.app.detail, `GET tcp:127.0.0.1:${appPort}/healthz: HTTP 500`);
      status = 204;
      await until(ports, (h) => h.code === 200, 'up on HTTP 204');

      const other = await fetch(`http://127.0.0.1:${healthPort}/nope`);
      assert.equal(other.status, 404);
      const post = await fetch(`http://127.0.0.1:${healthPort}/health`, { method: 'POST' });
      assert.equal(post.status, 405);
    } finally {
      await closeApp(app);
      await runtime.stop();
    }
  });
});

describe('app probes', () => {
  it('connect, HTTP on the app port, HTTP on another port, and a bad answer', async () => {
    const port = await freePort();
    const app = { transport: 'tcp', host: '127.0.0.1', port } as const;
    assert.equal((await createAppProbe('', app).probe(500)).up, false);
    const server = await startApp(port, () => 302);
    try {
      assert.deepEqual(await createAppProbe('', app).probe(500), {
        up: true,
        detail: `accepting on tcp:127.0.0.1:${port}`,
      });
      assert.equal((await createAppProbe('/healthz', app).probe(500)).up, true);
      assert.equal((await createAppProbe(`http://127.0.0.1:${port}/healthz`, { ...app, port: 1 }).probe(500)).up, true);
      assert.deepEqual(await createAppProbe('/other', app).probe(500), {
        up: false,
        detail: `GET tcp:127.0.0.1:${port}/other: HTTP 404`,
      });
      assert.equal((await createAppProbe(`tcp:127.0.0.1:${port}`, { ...app, port: 1 }).probe(500)).up, true);
    } finally {
      await closeApp(server);
    }
    const silent = net.createServer(() => {}).listen(0, '127.0.0.1');
    await once(silent, 'listening');
    try {
      const silentPort = (silent.address() as net.AddressInfo).port;
      const result = await createAppProbe('/healthz', { ...app, port: silentPort }).probe(100);
      assert.deepEqual(result, { up: false, detail: `GET tcp:127.0.0.1:${silentPort}/healthz: ETIMEDOUT` });
    } finally {
      silent.close();
    }
  });
});
