import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { buildQuery } from '../src/egress/dns-forwarder.js';
import { DnsRcode, DnsType, parseDnsResponse } from '../src/wire/dns-message.js';
import { eventually, runCli, type CliRun } from './helpers/cli-run.js';
import { loopbackConfigLines } from './helpers/dev-config.js';
import { freePort } from './helpers/net.js';
import { startTinyDns } from './helpers/tiny-dns.js';

// Nothing here leaves the machine: the upstream resolver is tiny-dns on loopback, and the one
// allowed name resolves to 127.0.0.1, where the test's own server answers.
const dir = mkdtempSync(join(tmpdir(), 'dev-egress-'));
let dns: Awaited<ReturnType<typeof startTinyDns>>;
let destination: http.Server;
let destinationPort: number;
before(async () => {
  dns = await startTinyDns(['allowed.test']);
  destination = http.createServer((_request, response) => response.end('hello from the destination\n'));
  destination.listen(0, '127.0.0.1');
  await once(destination, 'listening');
  destinationPort = (destination.address() as AddressInfo).port;
});
after(async () => {
  destination.close();
  await dns.close();
  rmSync(dir, { recursive: true, force: true });
});

function writeConfig(name: string, lines: string[]): string {
  const path = join(dir, `${name}.toml`);
  writeFileSync(path, lines.join('\n'));
  return path;
}

function devConfig(name: string, ports: { dns: number; proxy: number; api: number }, relays: string[]): string {
  return writeConfig(name, [
    ...loopbackConfigLines({ ingress: false, tls: false, apiPort: ports.api }),
    '[egress]',
    'enabled = true',
    'allow = ["allowed.test"]',
    `dns_listen = "tcp:127.0.0.1:${ports.dns}"`,
    'transparent_listen = "tcp:127.0.0.1:0"',
    `proxy_listen = "tcp:127.0.0.1:${ports.proxy}"`,
    ...relays,
    '[host]',
    `upstream_dns = "127.0.0.1:${dns.port}"`,
    'allow_private = true',
  ]);
}

/** One DNS question over UDP, as `dig -p PORT @127.0.0.1 NAME` asks it. */
async function ask(port: number, name: string): Promise<ReturnType<typeof parseDnsResponse>> {
  const socket = dgram.createSocket('udp4');
  try {
    socket.send(buildQuery({ name, type: DnsType.A, class: 1 }), port, '127.0.0.1');
    const [message] = (await once(socket, 'message')) as [Buffer];
    return parseDnsResponse(message);
  } finally {
    socket.close();
  }
}

/** GET through the egress HTTP proxy (absolute URI). */
function viaProxy(proxyPort: number, url: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = http.get(
      { host: '127.0.0.1', port: proxyPort, path: url, headers: { host: new URL(url).host }, agent: false },
      (response) => {
        let body = '';
        response.on('data', (chunk: Buffer) => (body += chunk.toString()));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      },
    );
    request.on('error', reject);
  });
}

async function egressHealth(apiPort: number): Promise<{ ok: boolean; detail: string }> {
  const response = await fetch(`http://127.0.0.1:${apiPort}/health`);
  return ((await response.json()) as { parts: { egress: { ok: boolean; detail: string } } }).parts.egress;
}

async function stop(run: CliRun): Promise<void> {
  run.child.kill('SIGTERM');
  await run.exited;
}

describe('egress in dev, with one command', { timeout: 120_000 }, () => {
  it('runs the host relays in-process: an allowed name resolves and is reachable through the proxy, a denied one is refused', async () => {
    const ports = { dns: await freePort(), proxy: await freePort(), api: await freePort() };
    const [relayPort, dnsRelayPort] = [await freePort(), await freePort()];
    const config = devConfig('inprocess', ports, [
      `relay = "tcp:127.0.0.1:${relayPort}"`,
      `dns_relay = "tcp:127.0.0.1:${dnsRelayPort}"`,
    ]);
    const run = runCli(['dev', '--config', config, '--state-dir', join(dir, 'state-inprocess')]);
    try {
      const relay = await run.waitFor('host DNS relay listening');
      assert.equal(relay.listen, `tcp:127.0.0.1:${dnsRelayPort}`);
      assert.equal(relay.upstream, `127.0.0.1:${dns.port}`, 'the relay resolves with host.upstream_dns');
      await run.waitFor('runtime ready');

      const allowed = await ask(ports.dns, 'allowed.test');
      assert.equal(allowed.header.rcode, DnsRcode.NOERROR);
      assert.deepEqual(
        allowed.answers.filter((answer) => answer.type === DnsType.A).map((answer) => answer.data),
        ['127.0.0.1'],
      );
      const denied = await ask(ports.dns, 'denied.test');
      assert.equal(denied.header.rcode, DnsRcode.REFUSED);
      assert.ok(
        !dns.queries.some((query) => query.startsWith('denied.test')),
        'a denied name never reaches the upstream resolver',
      );

      const answer = await viaProxy(ports.proxy, `http://allowed.test:${destinationPort}/`);
      assert.equal(answer.status, 200, answer.body);
      assert.equal(answer.body, 'hello from the destination\n');
      assert.deepEqual(await egressHealth(ports.api).then((part) => part.ok), true);
    } finally {
      await stop(run);
    }
    assert.equal(await run.exited, 0);
  });

  it('a relay that cannot be reached makes egress not ok in /health, and the log names the relay and errno', async () => {
    const ports = { dns: await freePort(), proxy: await freePort(), api: await freePort() };
    // Off loopback (a unix socket nobody listens on): dev does not run relays for it.
    const missing = join(dir, 'no-relay.sock');
    const config = devConfig('unreachable', ports, [`relay = "unix:${missing}"`, `dns_relay = "unix:${missing}"`]);
    const run = runCli(['dev', '--config', config, '--state-dir', join(dir, 'state-unreachable')]);
    try {
      await run.waitFor('runtime ready');
      assert.ok(!run.logs.some((line) => line.msg === 'host DNS relay listening'));
      assert.equal((await egressHealth(ports.api)).ok, true, 'nothing has failed yet');

      const answer = await ask(ports.dns, 'allowed.test');
      assert.equal(answer.header.rcode, DnsRcode.SERVFAIL);
      const line = await run.waitFor(
        "egress relay unreachable: is the host side (enclave-runtime host, or dev's in-process relays) running there?",
      );
      assert.equal(line.relay, `unix:${missing}`);
      assert.equal(line.code, 'ENOENT');
      assert.equal(line.level, 40);
      const health = await eventually(async () => {
        const part = await egressHealth(ports.api);
        return part.ok ? undefined : part;
      }, 'reported egress not ok');
      assert.match(
        health.detail,
        new RegExp(`relay unix:${missing.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} unreachable \\(ENOENT\\)`),
      );
    } finally {
      await stop(run);
    }
  });

  it('host warns at start when egress.allow is empty', async () => {
    const config = writeConfig('host-empty', [
      '[host]',
      'ingress_listen = "tcp:127.0.0.1:0"',
      'enclave_ingress = "tcp:127.0.0.1:9"',
      'egress_listen = "tcp:127.0.0.1:0"',
      'dns_listen = "tcp:127.0.0.1:0"',
      `upstream_dns = "127.0.0.1:${dns.port}"`,
    ]);
    const run = runCli(['host', '--config', config]);
    try {
      const warning = await run.waitFor(
        'egress.allow is empty: the relays refuse every destination and every DNS question',
      );
      assert.equal(warning.level, 40);
      await run.waitFor('host ready');
    } finally {
      await stop(run);
    }
    assert.equal(await run.exited, 0);
  });
});
