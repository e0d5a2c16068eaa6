/**
 * `enclave-runtime host` and `run` end to end over real vsock, in one guest of `npm run test:vm`: the guest's
 * loopback (CID 1) stands in for the parent <-> enclave link.
 *
 *   client ─tcp─▶ host ingress ─vsock:1:7777─▶ runtime (PID 1, TLS) ─tcp─▶ app 127.0.0.1:8008
 *   app ─▶ runtime DNS 127.0.0.1:53 ─vsock:1:8585─▶ host DNS relay ─udp─▶ "internet" DNS (tiny-dns)
 *   app ─▶ runtime HTTP proxy :3128 ─vsock:1:4433─▶ host egress relay ─tcp─▶ "internet" HTTP on loopback
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { DnsRcode, DnsType, parseDnsResponse } from '../../src/wire/dns-message.js';
import { buildQuery } from '../../src/egress/dns-forwarder.js';
import { runCli, type CliRun } from '../helpers/cli-run.js';
import { freePort, udpExchange } from '../helpers/net.js';
import { startTinyDns } from '../helpers/tiny-dns.js';
import { GUEST_SKIP, LOCAL_CID, RUNTIME, get } from './guest.js';

const query = (name: string) => buildQuery({ name, type: DnsType.A, class: 1 });

describe(
  'host and run end to end over vsock loopback (ingress, egress relay, DNS relay)',
  { skip: GUEST_SKIP, timeout: 180_000 },
  () => {
    let dir = '';
    let host: CliRun;
    let hostPort = 0;
    let app: http.Server;
    let internet: http.Server;
    let internetPort = 0;
    const internetSeen: string[] = [];
    let dns: Awaited<ReturnType<typeof startTinyDns>>;

    before(async () => {
      dir = mkdtempSync(join(tmpdir(), 'vm-host-'));
      app = http.createServer((req, res) =>
        res.end(`app saw ${req.method} ${req.url} from ${req.socket.remoteAddress}`),
      );
      app.listen(RUNTIME.app.port, RUNTIME.app.host);
      internet = http.createServer((req, res) => {
        internetSeen.push(`${req.headers.host} ${req.url}`);
        res.end(`internet answered ${req.url}`);
      });
      internet.listen(0, '127.0.0.1');
      await Promise.all([once(app, 'listening'), once(internet, 'listening')]);
      internetPort = (internet.address() as AddressInfo).port;
      dns = await startTinyDns([RUNTIME.allowed, 'denied.test']);
      hostPort = await freePort();
      const config = join(dir, 'host.toml');
      writeFileSync(
        config,
        [
          '[runtime]',
          'log_level = "info"',
          '[host]',
          `ingress_listen = "tcp:127.0.0.1:${hostPort}"`,
          `enclave_ingress = "vsock:${LOCAL_CID}:${RUNTIME.ingressPort}"`,
          `egress_listen = "vsock:any:${RUNTIME.egressRelayPort}"`,
          `dns_listen = "vsock:any:${RUNTIME.dnsRelayPort}"`,
          `upstream_dns = "127.0.0.1:${dns.port}"`,
          // The "internet" is the guest's loopback.
          'allow_private = true',
          '[egress]',
          `allow = ["${RUNTIME.allowed}"]`,
          '',
        ].join('\n'),
      );
      host = runCli(['host', '--config', config]);
      await host.waitFor('host ready');
    });

    after(async () => {
      host?.child.kill('SIGTERM');
      await host?.exited;
      await dns?.close();
      await Promise.all([app, internet].map((server) => new Promise((resolve) => server?.close(resolve))));
      rmSync(dir, { recursive: true, force: true });
    });

    it("host: a client on the host ingress reaches the app through vsock:1:7777 and the runtime's TLS (chain to the runtime CA)", async () => {
      const ca = readFileSync(join(RUNTIME.stateDir, 'ca.pem'));
      const reply = await get(
        {
          host: '127.0.0.1',
          port: hostPort,
          path: '/hello-from-client',
          servername: RUNTIME.serverName,
          ca,
          agent: false,
        },
        true,
      );
      assert.equal(reply.status, 200);
      assert.match(reply.body, /^app saw GET \/hello-from-client/);
    });

    it("host: the app's DNS through the runtime and the DNS relay at vsock:1:8585 answers an allowed name and refuses a denied one", async () => {
      const allowed = parseDnsResponse((await udpExchange(RUNTIME.dns.port, query(RUNTIME.allowed), 20_000))!);
      assert.equal(allowed.header.rcode, DnsRcode.NOERROR);
      assert.deepEqual(
        allowed.answers.map((answer) => answer.data),
        ['127.0.0.1'],
      );
      assert.ok(
        dns.queries.includes(`${RUNTIME.allowed}/${DnsType.A}`),
        `the upstream saw ${JSON.stringify(dns.queries)}`,
      );

      const denied = parseDnsResponse((await udpExchange(RUNTIME.dns.port, query('denied.test'), 20_000))!);
      assert.equal(denied.header.rcode, DnsRcode.REFUSED);
      assert.ok(!dns.queries.some((name) => name.startsWith('denied.test')), 'a denied name never leaves the enclave');
    });

    it("host: the app's request through the runtime's HTTP proxy reaches the internet over the egress relay at vsock:1:4433", async () => {
      // The proxy resolves the name through the DNS relay, which is what lets the host relay connect to its address.
      const target = `${RUNTIME.allowed}:${internetPort}`;
      const reply = await get({
        host: RUNTIME.proxy.host,
        port: RUNTIME.proxy.port,
        path: `http://${target}/via-proxy`,
        headers: { host: target },
        agent: false,
      });
      assert.equal(reply.status, 200, reply.body);
      assert.equal(reply.body, 'internet answered /via-proxy');
      assert.deepEqual(internetSeen, [`${target} /via-proxy`]);

      const denied = await get({
        host: RUNTIME.proxy.host,
        port: RUNTIME.proxy.port,
        path: `http://denied.test:${internetPort}/nope`,
        headers: { host: `denied.test:${internetPort}` },
        agent: false,
      });
      assert.equal(denied.status, 403);
      assert.deepEqual(internetSeen, [`${target} /via-proxy`], 'the denied request never reached the internet');
    });
  },
);
