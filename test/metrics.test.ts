import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, describe, it } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { EgressAudit, newEgressCounters } from '../src/egress/egress-audit.js';
import { silentLogger } from '../src/core/log.js';
import { registerEgressMetrics } from '../src/metrics/egress-metrics.js';
import { MAX_SERIES_PER_METRIC, MetricsRegistry } from '../src/metrics/registry.js';
import { Runtime } from '../src/runtime.js';
import { captureLogs } from './helpers/log-capture.js';
import { freePort } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'metrics-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Family {
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help: string | undefined;
  samples: Array<{ name: string; labels: Record<string, string>; value: number }>;
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/**
 * A strict reader of the Prometheus text format 0.0.4: every line is a HELP, a TYPE or a sample;
 * TYPE comes before a family's samples and once; a family's samples are contiguous; label values
 * use only the \\, \" and \n escapes; values are Go floats; histograms are cumulative and end in +Inf = _count.
 */
function parsePrometheus(text: string): Map<string, Family> {
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  const families = new Map<string, Family>();
  const finished = new Set<string>();
  let current: string | undefined;
  const familyOf = (sample: string): string => {
    for (const suffix of ['_bucket', '_sum', '_count']) {
      const base = sample.slice(0, -suffix.length);
      if (sample.endsWith(suffix) && families.get(base)?.type === 'histogram') return base;
    }
    return sample;
  };
  const enter = (name: string) => {
    if (current !== name) {
      if (current !== undefined) finished.add(current);
      assert.ok(!finished.has(name), `samples of ${name} are not contiguous`);
      current = name;
    }
  };
  for (const [index, line] of text.slice(0, -1).split('\n').entries()) {
    const where = `line ${index + 1}: ${JSON.stringify(line)}`;
    assert.notEqual(line, '', `${where}: empty line`);
    const meta = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
    if (meta) {
      const [, kind, name, rest] = meta as unknown as [string, string, string, string];
      assert.match(name, NAME, where);
      enter(name);
      const family = families.get(name) ?? { type: 'untyped', help: undefined, samples: [] };
      if (kind === 'TYPE') {
        assert.ok(['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest), `${where}: unknown type`);
        assert.equal(family.samples.length, 0, `${where}: TYPE after samples`);
        assert.ok(!families.has(name) || family.help !== undefined, `${where}: second TYPE`);
        family.type = rest as Family['type'];
      } else {
        assert.equal(family.help, undefined, `${where}: second HELP`);
        assert.doesNotMatch(rest.replace(/\\[\\n]/g, ''), /\\/, `${where}: bad escape in HELP`);
        family.help = rest;
      }
      families.set(name, family);
      continue;
    }
    assert.ok(!line.startsWith('#'), `${where}: a comment that is neither HELP nor TYPE`);
    const sample = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)( -?\d+)?$/.exec(line);
    assert.ok(sample, `${where}: not a sample line`);
    const [, name, , body, rawValue] = sample as unknown as [
      string,
      string,
      string | undefined,
      string | undefined,
      string,
    ];
    const labels: Record<string, string> = {};
    if (body !== undefined && body !== '') {
      const pair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)/y;
      let at = 0;
      while (at < body.length) {
        pair.lastIndex = at;
        const match = pair.exec(body);
        assert.ok(match, `${where}: bad label at ${body.slice(at)}`);
        const [, label, value] = match as unknown as [string, string, string];
        assert.match(label, LABEL, where);
        assert.ok(!(label in labels), `${where}: label ${label} twice`);
        labels[label] = value.replace(/\\(.)/g, (_, c: string) => (c === 'n' ? '\n' : c));
        at = pair.lastIndex;
      }
    }
    assert.match(rawValue, /^(NaN|[+-]Inf|[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?)$/, `${where}: bad value`);
    const value = rawValue === '+Inf' ? Infinity : rawValue === '-Inf' ? -Infinity : Number(rawValue);
    const familyName = familyOf(name);
    enter(familyName);
    const family = families.get(familyName);
    assert.ok(family, `${where}: sample without a TYPE`);
    if (family.type === 'counter') assert.ok(value >= 0, `${where}: negative counter`);
    family.samples.push({ name, labels, value });
  }
  for (const [name, family] of families) {
    if (family.type !== 'histogram') continue;
    const byKey = new Map<string, Array<{ le: number; value: number }>>();
    const counts = new Map<string, number>();
    for (const sample of family.samples) {
      const { le, ...rest } = sample.labels;
      const key = JSON.stringify(rest);
      if (sample.name === `${name}_bucket`) {
        assert.ok(le !== undefined, `${name}: bucket without le`);
        byKey.set(key, [...(byKey.get(key) ?? []), { le: le === '+Inf' ? Infinity : Number(le), value: sample.value }]);
      } else if (sample.name === `${name}_count`) counts.set(key, sample.value);
    }
    for (const [key, buckets] of byKey) {
      for (let i = 1; i < buckets.length; i++) {
        assert.ok(buckets[i]!.le > buckets[i - 1]!.le, `${name}: le not increasing`);
        assert.ok(buckets[i]!.value >= buckets[i - 1]!.value, `${name}: buckets not cumulative`);
      }
      assert.equal(buckets.at(-1)?.le, Infinity, `${name}: no +Inf bucket`);
      assert.equal(buckets.at(-1)?.value, counts.get(key), `${name}: +Inf bucket differs from _count`);
    }
  }
  return families;
}

function value(families: Map<string, Family>, name: string, labels: Record<string, string> = {}): number {
  const family = families.get(name.replace(/_(bucket|sum|count)$/, '')) ?? families.get(name);
  const sample = family?.samples.find(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  assert.ok(sample, `no sample ${name}${JSON.stringify(labels)}`);
  return sample.value;
}

describe('the metrics registry', () => {
  it('writes strict Prometheus text: escapes, histograms, collected values, and a bounded number of series', () => {
    const registry = new MetricsRegistry();
    const counter = registry.counter('test_events_total', 'events with a "quote" and a \\ backslash\nsecond line', [
      'kind',
    ]);
    counter.inc({ kind: 'a "quoted"\nvalue\\' }, 2);
    const histogram = registry.histogram('test_duration_seconds', 'durations', [0.1, 1]);
    for (const seconds of [0.05, 0.5, 5]) histogram.observe(seconds);
    registry.collected('test_level', 'a level', 'gauge', () => 1.5);
    registry.collected('test_absent', 'left out this scrape', 'gauge', () => undefined);
    for (let i = 0; i < MAX_SERIES_PER_METRIC + 3; i++) counter.inc({ kind: `k${i}` });
    const families = parsePrometheus(registry.render());
    assert.equal(value(families, 'test_events_total', { kind: 'a "quoted"\nvalue\\' }), 2);
    assert.equal(families.get('test_events_total')?.samples.length, MAX_SERIES_PER_METRIC);
    assert.equal(value(families, 'enclave_metrics_series_dropped_total'), 4);
    assert.deepEqual(
      families.get('test_duration_seconds')?.samples.map((s) => [s.name, s.labels.le ?? '', s.value]),
      [
        ['test_duration_seconds_bucket', '0.1', 1],
        ['test_duration_seconds_bucket', '1', 2],
        ['test_duration_seconds_bucket', '+Inf', 3],
        ['test_duration_seconds_sum', '', 5.55],
        ['test_duration_seconds_count', '', 3],
      ],
    );
    assert.equal(value(families, 'test_level'), 1.5);
    assert.deepEqual(families.get('test_absent')?.samples, []);
    assert.throws(() => registry.counter('bad name', 'x'), /bad metric name/);
    assert.throws(() => registry.counter('test_events_total', 'x'), /registered twice/);
    assert.throws(() => counter.inc({ kind: 'x' }, -1), /only goes up/);
  });

  it('reads egress counters by path and outcome, and counts refusals by reason from the egress audit', () => {
    const registry = new MetricsRegistry();
    const counters = newEgressCounters();
    counters.dnsRefused = 3;
    counters.connectionsAllowed = 5;
    counters.proxyFailed = 1;
    registerEgressMetrics(registry, () => counters);
    // The audit publishes each refusal on the egressRefused channel; the metrics subscribe to it.
    const audit = new EgressAudit(silentLogger());
    audit.refused('dns', { name: 'denied.test', reason: 'not-allowed' });
    audit.refused('dns', { name: 'denied.test', reason: 'not-allowed' });
    audit.refused('transparent', { ip: '10.0.0.1', port: 443, reason: 'private-ip' });
    const families = parsePrometheus(registry.render());
    assert.equal(value(families, 'enclave_egress_decisions_total', { path: 'dns', outcome: 'refused' }), 3);
    assert.equal(value(families, 'enclave_egress_decisions_total', { path: 'transparent', outcome: 'allowed' }), 5);
    assert.equal(value(families, 'enclave_egress_decisions_total', { path: 'proxy', outcome: 'failed' }), 1);
    assert.equal(value(families, 'enclave_egress_refusals_total', { path: 'dns', reason: 'not-allowed' }), 2);
    assert.equal(value(families, 'enclave_egress_refusals_total', { path: 'transparent', reason: 'private-ip' }), 1);
  });
});

describe('GET /metrics of a running runtime', () => {
  it('serves the named series, counting a TLS handshake, a failed one, ingress connections and attestation calls', async () => {
    const [apiPort, healthPort, ingressPort, appPort, metricsPort] = await Promise.all([
      freePort(),
      freePort(),
      freePort(),
      freePort(),
      freePort(),
    ]);
    const config = parseConfig(
      `[runtime]\nstate_dir = "${join(dir, 'state')}"\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\nshutdown_grace_ms = 100\n` +
        `[ingress]\nlisten = "tcp:127.0.0.1:${ingressPort}"\napp = "tcp:127.0.0.1:${appPort}"\n` +
        `[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nlisten = "tcp:127.0.0.1:${metricsPort}"\n`,
      'dev',
    );
    const runtime = await Runtime.start(config, 'dev', silentLogger());
    const echo = net.createServer((socket) => socket.pipe(socket)).listen(appPort, '127.0.0.1');
    await once(echo, 'listening');
    try {
      // An echo through the app proves the server side finished its handshake too.
      const secure = tlsConnect({
        host: '127.0.0.1',
        port: ingressPort,
        servername: 'localhost',
        rejectUnauthorized: false,
      });
      await once(secure, 'secureConnect');
      secure.write('ping');
      const [echoed] = (await once(secure, 'data')) as [Buffer];
      assert.equal(echoed.toString(), 'ping');
      secure.destroy();
      const plain = net.connect(ingressPort, '127.0.0.1');
      await once(plain, 'connect');
      plain.end('this is not a TLS ClientHello\r\n\r\n');
      await once(plain, 'close');
      const doc = await fetch(`http://127.0.0.1:${apiPort}/attestation-doc?nonce=0102`);
      assert.equal(doc.status, 200);
      await doc.arrayBuffer();

      const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`);
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('content-type'), 'text/plain; version=0.0.4; charset=utf-8');
      const families = parsePrometheus(await response.text());

      assert.equal(families.get('enclave_ingress_connections_accepted_total')?.type, 'counter');
      assert.ok(value(families, 'enclave_ingress_connections_accepted_total') >= 2);
      assert.equal(families.get('enclave_ingress_connections_active')?.type, 'gauge');
      for (const reason of ['max_connections', 'bad_proxy_header', 'app_unreachable'])
        value(families, 'enclave_ingress_connections_refused_total', { reason });
      assert.equal(value(families, 'enclave_tls_handshakes_total', { result: 'ok' }), 1);
      await waitFor(async () => {
        const again = parsePrometheus(await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text());
        return value(again, 'enclave_tls_handshakes_total', { result: 'failed' }) === 1;
      });
      assert.equal(families.get('enclave_tls_handshake_duration_seconds')?.type, 'histogram');
      assert.equal(value(families, 'enclave_tls_handshake_duration_seconds_count'), 1);
      // One document for the base certificate, one for the API call.
      assert.ok(value(families, 'enclave_attestation_requests_total', { result: 'ok' }) >= 2);
      assert.ok(value(families, 'enclave_attestation_duration_seconds_count') >= 2);
      assert.equal(families.get('enclave_egress_decisions_total')?.type, 'counter');
      assert.equal(families.get('enclave_egress_refusals_total')?.type, 'counter');
      assert.equal(value(families, 'enclave_health_up', { part: 'attestation' }), 1);
      assert.equal(value(families, 'enclave_runtime_info', { mode: 'dev' }), 1);
      assert.ok(value(families, 'process_resident_memory_bytes') > 1024 * 1024);
      assert.ok(value(families, 'process_open_fds') > 3);
      for (const name of [
        'nodejs_eventloop_lag_p50_seconds',
        'nodejs_eventloop_lag_p99_seconds',
        'nodejs_eventloop_lag_max_seconds',
        'nodejs_eventloop_lag_mean_seconds',
      ]) {
        assert.equal(families.get(name)?.type, 'gauge');
        assert.ok(value(families, name) >= 0);
      }
      assert.equal((await fetch(`http://127.0.0.1:${metricsPort}/`)).status, 404);
    } finally {
      echo.close();
      await runtime.stop();
    }
  });
});

describe('an endpoint whose port is taken', () => {
  it('is logged and left out; the runtime still starts', async () => {
    const taken = net.createServer().listen(0, '127.0.0.1');
    await once(taken, 'listening');
    const port = (taken.address() as net.AddressInfo).port;
    const [apiPort, healthPort, ingressPort] = await Promise.all([freePort(), freePort(), freePort()]);
    const config = parseConfig(
      `[runtime]\nstate_dir = "${join(dir, 'taken-state')}"\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\n[tls]\nenabled = false\n` +
        `[ingress]\nlisten = "tcp:127.0.0.1:${ingressPort}"\n[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nlisten = "tcp:127.0.0.1:${port}"\n`,
      'dev',
    );
    const logs = captureLogs('info');
    const runtime = await Runtime.start(config, 'dev', logs.logger);
    try {
      const line = logs.lines.find((entry) => entry.msg === 'metrics endpoint not served');
      assert.equal(line?.listen, `tcp:127.0.0.1:${port}`);
      assert.equal(line?.code, 'EADDRINUSE');
      assert.ok(
        [200, 503].includes((await fetch(`http://127.0.0.1:${healthPort}/health`)).status),
        'the health endpoint still serves',
      );
      assert.ok(logs.lines.some((entry) => entry.msg === 'runtime ready'));
    } finally {
      await runtime.stop();
      taken.close();
    }
  });
});

async function waitFor(check: () => Promise<boolean>): Promise<void> {
  for (let i = 0; i < 200; i++) {
    if (await check()) return;
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  assert.fail('the condition never held');
}
