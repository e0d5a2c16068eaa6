/**
 * Operating a production enclave from the parent: `host`'s relays for the enclave's /health and
 * /metrics and for the provisioner, and a `dev` + `host` pair on loopback whose app output shows up
 * on the host's stdout. Unix sockets and loopback tcp stand in for vsock.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { parseAddress } from '../src/net/address.js';
import { validateConfig } from '../src/config/validate.js';
import { startHostOperability } from '../src/host/host-operability.js';
import { startHttpEndpoint } from '../src/metrics/http-endpoint.js';
import { silentLogger } from '../src/core/log.js';
import { runCli, eventually } from './helpers/cli-run.js';
import { writeDevConfig } from './helpers/dev-config.js';
import { freePort } from './helpers/net.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';

const dir = mkdtempSync(join(tmpdir(), 'host-operability-'));
after(() => rmSync(dir, { recursive: true, force: true }));

function get(options: http.RequestOptions): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.get({ agent: false, ...options }, (response) => {
      let body = '';
      response.setEncoding('utf8');
      response.on('data', (text: string) => (body += text));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
    });
    request.on('error', reject);
  });
}

describe('host relays for health, metrics and the provisioner', () => {
  it('are off unless configured', async () => {
    const host = validateConfig({ host: { log_listen: 'off' } }, 'host').host;
    const started = await startHostOperability(host, silentLogger());
    try {
      assert.equal(started.relays.length, 0);
      assert.equal(started.logSink, undefined);
      assert.deepEqual(started.describe(), {});
    } finally {
      await started.close(0);
    }
  });

  it("relay the enclave's /health and /metrics to the parent, and the enclave's provisioner calls to the provisioner", async () => {
    // The enclave's endpoints, on unix sockets where vsock:<cid>:7779 and :9090 would be.
    const enclaveHealth = join(dir, 'enclave-health.sock');
    const enclaveMetrics = join(dir, 'enclave-metrics.sock');
    const health = await startHttpEndpoint(
      'health endpoint',
      parseAddress(`unix:${enclaveHealth}`),
      { '/health': () => ({ status: 503, type: 'application/json', body: '{"status":"degraded"}' }) },
      silentLogger(),
    );
    const metrics = await startHttpEndpoint(
      'metrics endpoint',
      parseAddress(`unix:${enclaveMetrics}`),
      { '/metrics': () => ({ status: 200, type: 'text/plain', body: 'enclave_up 1\n' }) },
      silentLogger(),
    );
    // The provisioner somewhere on the parent's network; the enclave reaches it through vsock:any:8444 (a unix socket here).
    const provisioner = http.createServer((request, response) =>
      response.end(`provisioner saw ${request.method} ${request.url}`),
    );
    provisioner.listen(0, '127.0.0.1');
    await once(provisioner, 'listening');
    const provisionerPort = (provisioner.address() as { port: number }).port;
    const provisionerListen = join(dir, 'provisioner.sock');
    const host = validateConfig(
      {
        host: {
          log_listen: 'off',
          health_listen: 'tcp:127.0.0.1:0',
          enclave_health: `unix:${enclaveHealth}`,
          metrics_listen: 'tcp:127.0.0.1:0',
          enclave_metrics: `unix:${enclaveMetrics}`,
          provisioner: `tcp:127.0.0.1:${provisionerPort}`,
          provisioner_listen: `unix:${provisionerListen}`,
        },
      },
      'host',
    ).host;
    const started = await startHostOperability(host, silentLogger());
    try {
      const where = started.describe();
      assert.deepEqual(Object.keys(where).sort(), ['healthRelay', 'metricsRelay', 'provisionerRelay']);
      const port = (name: string) => Number(where[name]!.split(':').at(-1));
      assert.deepEqual(await get({ host: '127.0.0.1', port: port('healthRelay'), path: '/health' }), {
        status: 503,
        body: '{"status":"degraded"}',
      });
      assert.deepEqual(await get({ host: '127.0.0.1', port: port('metricsRelay'), path: '/metrics' }), {
        status: 200,
        body: 'enclave_up 1\n',
      });
      assert.deepEqual(await get({ socketPath: provisionerListen, path: '/challenge' }), {
        status: 200,
        body: 'provisioner saw GET /challenge',
      });
    } finally {
      await started.close(0);
      await health.close();
      await metrics.close();
      provisioner.close();
    }
  });

  it('refuses a health relay on vsock (it is for the parent) with a message naming the key', () => {
    assert.throws(() => validateConfig({ host: { health_listen: 'vsock:any:7779' } }, 'host'), /host\.health_listen/);
    assert.throws(
      () => validateConfig({ runtime: { log_relay: 'udp:1.2.3.4:5' } }, 'run'),
      /runtime\.log_relay: .*or "off"/,
    );
  });
});

describe('dev + host on loopback', () => {
  it("the app's stdout and stderr and the runtime's own log lines show up on the host's stdout as JSON lines", async () => {
    const logPort = await freePort();
    const hostConfig = join(dir, 'host.toml');
    writeFileSync(
      hostConfig,
      [
        '[runtime]',
        'shutdown_grace_ms = 200',
        '[host]',
        'ingress_listen = "tcp:127.0.0.1:0"',
        'egress_listen = "tcp:127.0.0.1:0"',
        'dns_listen = "tcp:127.0.0.1:0"',
        'upstream_dns = "127.0.0.1:53"',
        `log_listen = "tcp:127.0.0.1:${logPort}"`,
      ].join('\n'),
    );
    const host = spawn(process.execPath, [CLI, 'host', '--config', hostConfig], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const records: Array<Record<string, unknown>> = [];
    let stdout = '';
    host.stdout.setEncoding('utf8');
    host.stdout.on('data', (text: string) => {
      stdout += text;
      const lines = stdout.split('\n');
      stdout = lines.pop()!;
      for (const line of lines) records.push(JSON.parse(line) as Record<string, unknown>);
    });
    host.stderr.resume();

    const devConfig = join(dir, 'dev.toml');
    const { metrics } = await writeDevConfig(devConfig, { runtime: [`log_relay = "tcp:127.0.0.1:${logPort}"`] });
    const app = "console.log('hello from the app'); console.error('the app warns'); setInterval(() => {}, 1000);";
    const dev = runCli([
      'dev',
      '--config',
      devConfig,
      '--state-dir',
      join(dir, 'state'),
      '--',
      process.execPath,
      '-e',
      app,
    ]);
    try {
      await dev.waitFor('customer command started');
      const find = (source: string, stream: string, line: (text: string) => boolean) =>
        records.find((r) => r.source === source && r.stream === stream && typeof r.line === 'string' && line(r.line));
      const hello = await eventually(
        () => find('app', 'stdout', (text) => text === 'hello from the app'),
        "printed the app's stdout line",
      );
      assert.equal(typeof hello.time, 'number');
      await eventually(
        () => find('app', 'stderr', (text) => text === 'the app warns'),
        "printed the app's stderr line",
      );
      const ready = await eventually(
        () => find('runtime', 'stderr', (text) => text.includes('"msg":"runtime ready"')),
        "printed the runtime's ready line",
      );
      assert.equal((JSON.parse(ready.line as string) as { msg: string }).msg, 'runtime ready');
      // The terminal still shows the app's output too.
      assert.match(dev.output().toString('utf8'), /hello from the app/);
      const scraped = await eventually(
        () =>
          get({ host: '127.0.0.1', port: metrics, path: '/metrics' }).then((answer) =>
            answer.body.includes('enclave_log_relay_lines_total') ? answer.body : undefined,
          ),
        'scraped the relay metrics',
      );
      assert.match(scraped, /enclave_log_relay_lines_total\{outcome="dropped"\} 0/);
      assert.match(scraped, /enclave_log_relay_connected 1/);
    } finally {
      dev.child.kill('SIGTERM');
      await dev.exited;
      host.kill('SIGTERM');
      await once(host, 'exit');
    }
  });
});

describe('operability config cross-checks', () => {
  it('names the keys that contradict each other', () => {
    assert.throws(
      () => validateConfig({ kms: { proxy: true, via: 'egress_proxy' } }, 'run'),
      /kms\.proxy: .*egress\.enabled = true/,
    );
    assert.throws(
      () => validateConfig({ kms: { credentials: 'host', access_key_id: 'AKIAFILE000000000000' } }, 'run'),
      /kms\.credentials: "host" .*leave kms\.access_key_id/,
    );
    assert.equal(validateConfig({ kms: { proxy: true, via: 'direct', credentials: 'host' } }, 'run').kms.proxy, true);
    assert.equal(validateConfig({}, 'run').runtime.logRelay?.transport, 'vsock');
    assert.equal(validateConfig({}, 'dev').runtime.logRelay, undefined);
    assert.equal(validateConfig({}, 'run').metrics.listen.transport, 'vsock');
  });
});
