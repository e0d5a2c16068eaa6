/**
 * Egress end to end, in network namespaces, with the real CLI on both sides:
 *
 *   enclave ns (lo only)          parent ns                    internet ns
 *   app probes  ──iptables──▶     enclave-runtime host   veth  DNS for *.test (10.200.1.2:53)
 *   enclave-runtime dev           (egress + DNS relays)  ───▶  HTTPS/HTTP/banner servers on
 *   (DNS, transparent, proxy)                                  198.51.100.10 (allowed.test)
 *        └── unix sockets in a temp dir stand in for vsock ──┘ 198.51.100.20 (denied.test) ...
 *
 * The enclave namespace has no interface but lo, like a Nitro enclave: the unix sockets on the
 * filesystem are the only way out, as vsock is in production. The servers use documentation
 * addresses, which the host relay treats as public, so host.allow_private stays at its default
 * (false) and is exercised too: private.test resolves to 10.200.1.2 and the host refuses it.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { Probe } from './helpers/egress-app.js';
import type { InternetSpec } from './helpers/egress-internet.js';
import { NetnsLab, type NetnsProcess } from './helpers/netns.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';
import { netnsUnavailable } from './helpers/privilege.js';

const APP = join(REPO_ROOT, 'dist', 'test', 'helpers', 'egress-app.js');
const INTERNET = join(REPO_ROOT, 'dist', 'test', 'helpers', 'egress-internet.js');

const ALLOWED = '198.51.100.10';
const DENIED = '198.51.100.20';
const BANNER = '203.0.113.30';
const ALLOWED_V6 = '2001:db8::10';
const PARENT = '10.200.1.1';
const DNS_SERVER = '10.200.1.2';

const ALLOW = [
  'allowed.test',
  '*.allowed.test',
  'banner.test',
  'big.test',
  'v6.test',
  'private.test',
  'port443.test:443',
];

const ZONE: InternetSpec['zone'] = {
  'allowed.test': { A: [ALLOWED] },
  'denied.test': { A: [DENIED] },
  'alias.allowed.test': { CNAME: 'edge.cdn.test' },
  'edge.cdn.test': { A: [ALLOWED] },
  'banner.test': { A: [BANNER] },
  'v6.test': { AAAA: [ALLOWED_V6] },
  'private.test': { A: [DNS_SERVER] },
  'big.test': { A: Array.from({ length: 40 }, (_, i) => `198.51.100.${100 + i}`) },
  // Not allowed, but on the same server as allowed.test: what an app would try to reach through it.
  'cdn-denied.test': { A: [ALLOWED] },
  'port443.test': { A: [ALLOWED] },
};

const toml = (value: unknown) => JSON.stringify(value);

type Result = Record<string, any>;

describe('egress in network namespaces (enclave, parent, internet)', { skip: netnsUnavailable() }, () => {
  const lab = new NetnsLab();
  let dir = '';
  let enclave = '';
  let host: NetnsProcess;
  let runtime: NetnsProcess;
  let internetProcess: NetnsProcess;
  /** The SNIs and Hosts the internet's servers received since `mark` (a count of stdout lines). */
  const seenSince = (mark: number): string[] =>
    internetProcess.stdoutLines.slice(mark).flatMap((line) => {
      if (!line.startsWith('SEEN ')) return [];
      const seen = JSON.parse(line.slice(5)) as { sni?: string; host?: string };
      return [String(seen.sni ?? seen.host)];
    });

  /** Run one app probe inside the enclave namespace. */
  const app = async (probe: Probe): Promise<Result> => {
    const result = await lab.run(enclave, process.execPath, [APP, JSON.stringify(probe)]);
    assert.equal(result.code, 0, `probe ${JSON.stringify(probe)} failed: ${result.stderr}`);
    return JSON.parse(result.stdout) as Result;
  };
  const body = (result: Result) => JSON.parse(result.body as string) as Result;

  before(async () => {
    dir = mkdtempSync('/tmp/er-egress-');
    enclave = lab.addNamespace('enc');
    const parent = lab.addNamespace('par');
    const internet = lab.addNamespace('net');
    const veth = lab.addVeth(parent, `${PARENT}/30`, internet, `${DNS_SERVER}/30`);
    lab.exec(parent, 'ip', ['-6', 'addr', 'add', 'fd00:200::1/64', 'dev', veth.a, 'nodad']);
    lab.exec(internet, 'ip', ['-6', 'addr', 'add', 'fd00:200::2/64', 'dev', veth.b, 'nodad']);
    for (const address of [`${ALLOWED}/32`, `${DENIED}/32`, `${BANNER}/32`])
      lab.exec(internet, 'ip', ['addr', 'add', address, 'dev', 'lo']);
    lab.exec(internet, 'ip', ['-6', 'addr', 'add', `${ALLOWED_V6}/128`, 'dev', 'lo']);
    for (const range of ['198.51.100.0/24', '203.0.113.0/24'])
      lab.exec(parent, 'ip', ['route', 'add', range, 'via', DNS_SERVER]);
    lab.exec(parent, 'ip', ['-6', 'route', 'add', '2001:db8::/32', 'via', 'fd00:200::2']);
    // The host relay asks "system" DNS: resolv.conf as seen inside the parent namespace.
    lab.setResolvConf(parent, `nameserver ${DNS_SERVER}\n`);
    // The unmodified app resolves through /etc/resolv.conf, as in the enclave image: the runtime's DNS.
    lab.setResolvConf(enclave, 'nameserver 127.0.0.1\n');

    const spec: InternetSpec = { dns: DNS_SERVER, zone: ZONE };
    internetProcess = lab.spawn(internet, process.execPath, [INTERNET, JSON.stringify(spec)]);
    await internetProcess.waitForLine((line) => line === 'READY', 15_000);

    const hostConfig = join(dir, 'host.toml');
    writeFileSync(
      hostConfig,
      [
        '[runtime]',
        'shutdown_grace_ms = 500',
        '[egress]',
        `allow = ${toml(ALLOW)}`,
        '[host]',
        'ingress_listen = "tcp:127.0.0.1:0"',
        `enclave_ingress = ${toml(`unix:${dir}/ingress.sock`)}`,
        `egress_listen = ${toml(`unix:${dir}/relay.sock`)}`,
        `dns_listen = ${toml(`unix:${dir}/dns.sock`)}`,
        'upstream_dns = "system"',
        'connect_timeout_ms = 3000',
        '',
      ].join('\n'),
    );
    host = lab.spawn(parent, process.execPath, [CLI, 'host', '--config', hostConfig]);
    await host.waitForLine((line) => line.includes('"host ready"'), 15_000);
  });

  after(async () => {
    await lab.cleanup();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('without the runtime the app reaches nothing: the enclave namespace has no route out', async () => {
    for (const target of [ALLOWED, DNS_SERVER]) {
      const result = await app({ op: 'tcp', host: target, port: 443 });
      assert.equal(result.connected, false);
      assert.equal(result.code, 'ENETUNREACH', `connecting to ${target}: ${JSON.stringify(result)}`);
    }
  });

  describe('with the runtime in the enclave namespace', () => {
    const counters = async (): Promise<Record<string, number>> => {
      const health = await app({ op: 'get-json', url: 'http://127.0.0.1:9999/health' });
      return health.json.parts.egress.counters as Record<string, number>;
    };
    const refusalsSince = (mark: number) =>
      runtime.stderrLines
        .slice(mark)
        .flatMap((line) => {
          try {
            return [JSON.parse(line) as Result];
          } catch {
            return [];
          }
        })
        .filter((line) => line.msg === 'egress refused');

    /**
     * Run a probe that must be refused and check the audit trail: exactly one structured
     * refusal line with the expected fields, and the path's counter up by exactly one.
     */
    const expectRefusal = async (probe: Probe, counter: string, expected: Result): Promise<Result> => {
      const before = await counters();
      const mark = runtime.stderrLines.length;
      const result = await app(probe);
      await runtime.waitForLine(
        (line) => line.includes('"egress refused"') && runtime.stderrLines.indexOf(line) >= mark,
        5000,
      );
      const afterCounters = await counters();
      const lines = refusalsSince(mark);
      assert.equal(lines.length, 1, `one refusal line for ${JSON.stringify(probe)}, got ${JSON.stringify(lines)}`);
      const line = lines[0]!;
      for (const key of ['name', 'ip', 'port', 'outcome', 'reason', 'rule'])
        assert.ok(key in line, `refusal line has ${key}: ${JSON.stringify(line)}`);
      assert.equal(line.outcome, 'refused');
      for (const [key, value] of Object.entries(expected))
        assert.deepEqual(line[key], value, `refusal line ${key}: ${JSON.stringify(line)}`);
      assert.equal(afterCounters[counter], before[counter]! + 1, `${counter} counts the refusal`);
      return result;
    };

    before(async () => {
      // lo is the enclave's only interface, so a connect() to an outside address fails with
      // ENETUNREACH before netfilter sees it. A default route through lo lets the packet reach
      // the nat OUTPUT chain, where the runtime's REDIRECT takes it; without the redirect it
      // still goes nowhere, as lo only delivers to local addresses. (The runtime would add the
      // same route itself when none exists; here the test owns it.)
      lab.exec(enclave, 'ip', ['route', 'add', 'default', 'dev', 'lo', 'src', '127.0.0.1']);
      lab.exec(enclave, 'ip', ['-6', 'route', 'add', 'default', 'dev', 'lo']);
      const config = join(dir, 'enclave.toml');
      writeFileSync(
        config,
        [
          '[runtime]',
          `state_dir = ${toml(join(dir, 'state'))}`,
          'shutdown_grace_ms = 500',
          '[ingress]',
          'enabled = false',
          '[egress]',
          'enabled = true',
          `allow = ${toml(ALLOW)}`,
          'dns_listen = "tcp:127.0.0.1:53"',
          'transparent_listen = "tcp:127.0.0.1:4444"',
          'proxy_listen = "tcp:127.0.0.1:3128"',
          `relay = ${toml(`unix:${dir}/relay.sock`)}`,
          `dns_relay = ${toml(`unix:${dir}/dns.sock`)}`,
          'apply_rules = true',
          'peek_timeout_ms = 300',
          'connect_timeout_ms = 3000',
          '',
        ].join('\n'),
      );
      runtime = lab.spawn(enclave, process.execPath, [CLI, 'dev', '--config', config]);
      await runtime.waitForLine((line) => line.includes('"runtime ready"'), 30_000);
      const rules = lab.exec(enclave, 'iptables', ['-t', 'nat', '-S']);
      assert.match(rules, /-A OUTPUT -j ENCLAVE_EGRESS/);
      assert.match(rules, /-A ENCLAVE_EGRESS -p tcp -j REDIRECT --to-ports 4444/);
    });

    it('resolves an allowed name through the runtime and the host relay', async () => {
      assert.deepEqual(await app({ op: 'lookup', name: 'allowed.test' }), { addresses: [ALLOWED] });
      const big = await app({ op: 'dns', name: 'big.test', type: 'A' });
      assert.equal(big.tc, true, 'a 40-record answer does not fit plain UDP: truncated, to be asked over TCP');
      const bigTcp = await app({ op: 'dns', name: 'big.test', type: 'A', tcp: true });
      assert.equal(bigTcp.rcode, 0);
      assert.equal(bigTcp.answers.length, 40);
    });

    it('allows an allowed name over HTTPS (SNI), HTTP (Host), and through a CNAME', async () => {
      const secure = await app({ op: 'https', host: 'allowed.test', path: '/tls' });
      assert.equal(secure.status, 200, JSON.stringify(secure));
      assert.deepEqual(body(secure), { server: ALLOWED, from: PARENT, sni: 'allowed.test', path: '/tls' });

      const plain = await app({ op: 'http', host: 'allowed.test', path: '/plain' });
      assert.equal(plain.status, 200, JSON.stringify(plain));
      assert.deepEqual(body(plain), {
        server: ALLOWED,
        from: PARENT,
        host: 'allowed.test',
        path: '/plain',
        method: 'GET',
      });

      const alias = await app({ op: 'https', host: 'alias.allowed.test' });
      assert.equal(alias.status, 200, JSON.stringify(alias));
      assert.equal(body(alias).sni, 'alias.allowed.test');
      assert.equal(body(alias).server, ALLOWED);
    });

    it('allows an allowed name through the HTTP proxy: absolute URI and CONNECT', async () => {
      const absolute = await app({ op: 'proxy-get', proxy: '127.0.0.1:3128', url: 'http://allowed.test/absolute?q=1' });
      assert.equal(absolute.status, 200, JSON.stringify(absolute));
      assert.deepEqual(body(absolute), {
        server: ALLOWED,
        from: PARENT,
        host: 'allowed.test',
        path: '/absolute?q=1',
        method: 'GET',
      });

      const tunnel = await app({
        op: 'proxy-connect',
        proxy: '127.0.0.1:3128',
        target: 'allowed.test:443',
        servername: 'allowed.test',
      });
      assert.equal(tunnel.status, 200, JSON.stringify(tunnel));
      assert.deepEqual(body(tunnel), { server: ALLOWED, from: PARENT, sni: 'allowed.test', path: '/through-connect' });
    });

    it('allows a server-first protocol (SMTP-like banner) on the IP alone', async () => {
      const result = await app({ op: 'banner', host: 'banner.test', port: 25 });
      assert.ok(Array.isArray(result.lines), JSON.stringify(result));
      assert.match(result.lines[0], /^220 /);
      assert.deepEqual(JSON.parse(result.lines[0].slice(4)), { server: BANNER, from: PARENT });
      assert.deepEqual(result.lines.slice(1), ['250 HELO app', '221 bye']);
    });

    it('allows IPv6 through ip6tables and the [::1] listener', async () => {
      const result = await app({ op: 'http', host: 'v6.test', path: '/six' });
      assert.equal(result.status, 200, JSON.stringify(result));
      assert.deepEqual(body(result), {
        server: ALLOWED_V6,
        from: 'fd00:200::1',
        host: 'v6.test',
        path: '/six',
        method: 'GET',
      });
    });

    it('refuses a denied name at DNS at once (REFUSED, not a timeout)', async () => {
      const result = await expectRefusal({ op: 'dns', name: 'denied.test', type: 'A' }, 'dnsRefused', {
        name: 'denied.test',
        qtype: 'A',
        reason: 'no-rule',
        ip: null,
        port: null,
      });
      assert.deepEqual(result, { rcode: 5, tc: false, answers: [] });
      const lookup = await app({ op: 'lookup', name: 'denied.test' });
      assert.equal(lookup.addresses, undefined);
      assert.notEqual(lookup.code, 'PROBE_TIMEOUT');
    });

    it("refuses dialling the denied server's IP directly", async () => {
      const result = await expectRefusal({ op: 'https', host: DENIED }, 'connectionsRefused', {
        ip: DENIED,
        port: 443,
        name: null,
        reason: 'not-resolved',
      });
      assert.equal(result.code, 'ECONNRESET', JSON.stringify(result));
      const banner = await expectRefusal({ op: 'banner', host: DENIED, port: 25 }, 'connectionsRefused', {
        ip: DENIED,
        port: 25,
        reason: 'not-resolved',
        sni: null,
        host: null,
      });
      assert.equal(banner.code, 'ECONNRESET', JSON.stringify(banner));
      assert.equal(banner.received, '', 'the denied server never spoke to the app');
    });

    it('refuses a denied SNI or Host sent to an allowed IP, and an SNI the IP was not resolved for', async () => {
      const sni = await expectRefusal({ op: 'https', host: ALLOWED, servername: 'denied.test' }, 'connectionsRefused', {
        ip: ALLOWED,
        port: 443,
        sni: 'denied.test',
        name: 'denied.test',
        reason: 'hostname-denied',
      });
      assert.equal(sni.code, 'ECONNRESET', JSON.stringify(sni));
      const mismatch = await expectRefusal(
        { op: 'https', host: ALLOWED, servername: 'other.allowed.test' },
        'connectionsRefused',
        {
          ip: ALLOWED,
          port: 443,
          sni: 'other.allowed.test',
          reason: 'hostname-mismatch',
        },
      );
      assert.equal(mismatch.code, 'ECONNRESET', JSON.stringify(mismatch));
      const host = await expectRefusal({ op: 'http', host: ALLOWED, hostHeader: 'denied.test' }, 'connectionsRefused', {
        ip: ALLOWED,
        port: 80,
        host: 'denied.test',
        reason: 'hostname-denied',
      });
      assert.equal(host.code, 'ECONNRESET', JSON.stringify(host));
    });

    it('answers 403 with a reason for a denied name through the proxy', async () => {
      const absolute = await expectRefusal(
        { op: 'proxy-get', proxy: '127.0.0.1:3128', url: 'http://denied.test/' },
        'proxyRefused',
        {
          name: 'denied.test',
          port: 80,
          reason: 'no-rule',
        },
      );
      assert.equal(absolute.status, 403);
      assert.match(absolute.body, /denied\.test:80 is not allowed \(no-rule\)/);
      const tunnel = await expectRefusal(
        { op: 'proxy-connect', proxy: '127.0.0.1:3128', target: 'denied.test:443', servername: 'denied.test' },
        'proxyRefused',
        {
          name: 'denied.test',
          port: 443,
          reason: 'no-rule',
        },
      );
      assert.equal(tunnel.status, 403);
      const smuggled = await expectRefusal(
        { op: 'proxy-connect', proxy: '127.0.0.1:3128', target: 'allowed.test:443', servername: 'denied.test' },
        'proxyRefused',
        {
          name: 'allowed.test',
          ip: ALLOWED,
          port: 443,
          sni: 'denied.test',
          reason: 'hostname-denied',
        },
      );
      assert.equal(smuggled.status, 200, 'the tunnel opened, then the ClientHello gave the other name away');
      assert.equal(smuggled.code, 'ECONNRESET', JSON.stringify(smuggled));
    });

    describe("inspection that cannot be blinded (cdn-denied.test shares allowed.test's server)", () => {
      const HEAD = (host: string) => `GET /keep-alive HTTP/1.1\r\nHost: ${host}\r\n\r\n`;
      /** Run a probe that must be refused (one line, one count) and check the server never saw cdn-denied.test. */
      const attack = async (
        probe: Probe,
        counter: string,
        expected: Result,
      ): Promise<{ result: Result; seen: string[] }> => {
        const mark = internetProcess.stdoutLines.length;
        const result = await expectRefusal(probe, counter, expected);
        const seen = seenSince(mark);
        assert.ok(!seen.includes('cdn-denied.test'), `the server saw cdn-denied.test: ${JSON.stringify(seen)}`);
        return { result, seen };
      };

      before(async () => {
        // The IP is known for allowed.test and port443.test, as after any ordinary lookup.
        for (const name of ['allowed.test', 'port443.test'])
          assert.deepEqual(await app({ op: 'lookup', name }), { addresses: [ALLOWED] });
      });

      it('refuses a ClientHello sent after peek_timeout_ms, also under a name:443 rule; allows an allowed one', async () => {
        const late = await attack(
          { op: 'tls', host: 'allowed.test', servername: 'cdn-denied.test', delayMs: 700 },
          'connectionsRefused',
          {
            ip: ALLOWED,
            port: 443,
            sni: 'cdn-denied.test',
            reason: 'hostname-denied',
          },
        );
        assert.equal(late.result.code, 'ECONNRESET', JSON.stringify(late.result));
        const portRule = await attack(
          { op: 'tls', host: 'port443.test', servername: 'cdn-denied.test', delayMs: 700 },
          'connectionsRefused',
          {
            sni: 'cdn-denied.test',
            reason: 'hostname-denied',
          },
        );
        assert.equal(portRule.result.code, 'ECONNRESET', JSON.stringify(portRule.result));

        const allowed = await app({ op: 'tls', host: 'allowed.test', servername: 'allowed.test', delayMs: 700 });
        assert.equal(allowed.status, 200, JSON.stringify(allowed));
        assert.equal(body(allowed).sni, 'allowed.test');
      });

      it('reads a ClientHello whose record version is 3.5 or 3.255; reassembles one split over records and segments', async () => {
        for (const mutate of ['minor-05', 'minor-ff'] as const) {
          const { result } = await attack(
            { op: 'tls', host: 'allowed.test', servername: 'cdn-denied.test', mutate },
            'connectionsRefused',
            { sni: 'cdn-denied.test', reason: 'hostname-denied' },
          );
          assert.equal(result.code, 'ECONNRESET', `${mutate}: ${JSON.stringify(result)}`);
        }
        const split = await app({ op: 'tls', host: 'allowed.test', servername: 'allowed.test', mutate: 'split' });
        assert.equal(split.status, 200, JSON.stringify(split));
        assert.equal(body(split).sni, 'allowed.test');
        await attack(
          { op: 'tls', host: 'allowed.test', servername: 'cdn-denied.test', mutate: 'split' },
          'connectionsRefused',
          { sni: 'cdn-denied.test', reason: 'hostname-denied' },
        );
      });

      it('refuses a ClientHello with encrypted_client_hello (egress.allow_ech off): the server sees no ClientHello at all', async () => {
        const { seen } = await attack(
          { op: 'tls', host: 'allowed.test', servername: 'allowed.test', mutate: 'ech' },
          'connectionsRefused',
          { sni: 'allowed.test', reason: 'encrypted-client-hello' },
        );
        assert.deepEqual(seen, []);
      });

      it('refuses a Host after an empty line, and every keep-alive request naming another host; allows allowed ones', async () => {
        await attack(
          { op: 'raw', host: 'allowed.test', port: 80, steps: [{ send: `\r\n${HEAD('cdn-denied.test')}` }] },
          'connectionsRefused',
          { host: 'cdn-denied.test', reason: 'hostname-denied' },
        );
        const pipelined = await attack(
          {
            op: 'raw',
            host: 'allowed.test',
            port: 80,
            steps: [{ send: HEAD('allowed.test') + HEAD('cdn-denied.test') }],
          },
          'connectionsRefused',
          {
            host: 'cdn-denied.test',
            reason: 'hostname-denied',
          },
        );
        assert.equal(pipelined.result.code, 'ECONNRESET', JSON.stringify(pipelined.result));
        const later = await attack(
          {
            op: 'raw',
            host: 'allowed.test',
            port: 80,
            steps: [{ send: HEAD('allowed.test') }, { delayMs: 1000, send: HEAD('cdn-denied.test') }],
          },
          'connectionsRefused',
          {
            host: 'cdn-denied.test',
            reason: 'hostname-denied',
          },
        );
        assert.deepEqual(later.seen, ['allowed.test'], 'the first request went through, the second did not');
        assert.match(later.result.received, /^HTTP\/1\.1 200 /, 'the app got the first answer');

        const mark = internetProcess.stdoutLines.length;
        const both = await app({
          op: 'raw',
          host: 'allowed.test',
          port: 80,
          steps: [{ send: HEAD('allowed.test') }, { delayMs: 700, send: `\r\n${HEAD('allowed.test')}` }],
        });
        assert.equal(both.received.match(/HTTP\/1\.1 200 /g)?.length, 2, JSON.stringify(both));
        assert.deepEqual(seenSince(mark), ['allowed.test', 'allowed.test']);
      });

      it('refuses a keep-alive request naming another host inside a CONNECT tunnel, and one sent late', async () => {
        const connect = 'CONNECT allowed.test:80 HTTP/1.1\r\nHost: allowed.test:80\r\n\r\n';
        const proxy = { host: '127.0.0.1', port: 3128 };
        const second = await attack(
          {
            op: 'raw',
            ...proxy,
            steps: [{ send: connect + HEAD('allowed.test') }, { delayMs: 500, send: HEAD('cdn-denied.test') }],
          },
          'proxyRefused',
          {
            name: 'allowed.test',
            host: 'cdn-denied.test',
            reason: 'hostname-denied',
          },
        );
        assert.deepEqual(second.seen, ['allowed.test']);
        await attack(
          { op: 'raw', ...proxy, steps: [{ send: connect }, { delayMs: 700, send: HEAD('cdn-denied.test') }] },
          'proxyRefused',
          { host: 'cdn-denied.test', reason: 'hostname-denied' },
        );
      });

      it('the host relay reads SNI and Host too, for an app that dials it directly', async () => {
        const relayHeader = { unix: join(dir, 'relay.sock'), name: 'allowed.test', ip: ALLOWED, port: 443 };
        const mark = internetProcess.stdoutLines.length;
        const hostMark = host.stderrLines.length;
        const direct = await app({
          op: 'tls',
          host: 'allowed.test',
          servername: 'cdn-denied.test',
          relay: relayHeader,
        });
        assert.equal(direct.status, undefined, JSON.stringify(direct));
        const line = await host.waitForLine(
          (text) => text.includes('"host-egress-refused"') && host.stderrLines.indexOf(text) >= hostMark,
          5000,
        );
        assert.deepEqual(
          (({ name, ip, port, sni, reason }) => ({ name, ip, port, sni, reason }))(JSON.parse(line) as Result),
          { name: 'allowed.test', ip: ALLOWED, port: 443, sni: 'cdn-denied.test', reason: 'hostname-denied' },
        );
        assert.deepEqual(seenSince(mark), []);
        const allowed = await app({ op: 'tls', host: 'allowed.test', servername: 'allowed.test', relay: relayHeader });
        assert.equal(allowed.status, 200, JSON.stringify(allowed));
        assert.deepEqual(seenSince(mark), ['allowed.test']);
      });
    });

    it('the host relay refuses a private destination even for an allowed name', async () => {
      const before = await counters();
      const mark = host.stderrLines.length;
      const result = await app({ op: 'http', host: 'private.test' });
      assert.equal(result.code, 'ECONNRESET', JSON.stringify(result));
      const line = await host.waitForLine(
        (text) => text.includes('"host-egress-refused"') && host.stderrLines.indexOf(text) >= mark,
        5000,
      );
      assert.deepEqual(
        (({ name, ip, port, status, reason }) => ({ name, ip, port, status, reason }))(JSON.parse(line) as Result),
        { name: 'private.test', ip: DNS_SERVER, port: 80, status: 'PRIVATE', reason: 'private' },
      );
      assert.equal((await counters()).connectionsFailed, before.connectionsFailed! + 1);
    });

    it('stops cleanly and removes its rules', async () => {
      assert.equal(await runtime.stop(10_000), 0);
      assert.doesNotMatch(lab.exec(enclave, 'iptables', ['-t', 'nat', '-S']), /ENCLAVE_EGRESS/);
      assert.doesNotMatch(lab.exec(enclave, 'ip6tables', ['-t', 'nat', '-S']), /ENCLAVE_EGRESS/);
    });
  });
});
