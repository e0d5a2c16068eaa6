import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseAddress } from '../src/net/address.js';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { DnsTcpFrameReader, DnsType, encodeTcpFrame, parseDnsResponse } from '../src/wire/dns-message.js';
import { buildQuery } from '../src/egress/dns-forwarder.js';
import { NameCache } from '../src/egress/name-cache.js';
import { startDnsRelay, type DnsRelay } from '../src/host/dns-relay.js';
import { firstNameserver, parseUpstream, upstreamFromConfig, UpstreamDnsError } from '../src/host/upstream-dns.js';
import { captureLogs } from './helpers/log-capture.js';
import { startAuthoritativeDns, type AuthoritativeDns } from './helpers/egress-internet.js';

const ZONE = {
  'allowed.test': { A: ['198.51.100.10'] },
  'denied.test': { A: ['198.51.100.20'] },
  'big.allowed.test': { A: Array.from({ length: 40 }, (_, i) => `198.51.100.${100 + i}`) },
};
const query = (name: string, type: number = DnsType.A) => buildQuery({ name, type, class: 1 });

/** Send framed queries over one stream, half-close, and collect the answers until the relay closes. */
async function ask(relay: DnsRelay, messages: Buffer[]): Promise<Buffer[]> {
  const address = relay.address;
  assert.equal(address.transport, 'tcp');
  const socket = net.connect({
    port: address.transport === 'tcp' ? address.port : 0,
    host: '127.0.0.1',
    allowHalfOpen: true,
  });
  await once(socket, 'connect');
  const reader = new DnsTcpFrameReader();
  const answers: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => answers.push(...reader.push(chunk).map((m) => Buffer.from(m))));
  socket.end(Buffer.concat(messages.map(encodeTcpFrame)));
  await once(socket, 'end');
  socket.destroy();
  return answers;
}

describe('upstream resolver setting', () => {
  it('parses HOST, HOST:PORT and [IPv6]:PORT', () => {
    assert.deepEqual(parseUpstream('10.0.0.2'), { host: '10.0.0.2', port: 53 });
    assert.deepEqual(parseUpstream('10.0.0.2:5353'), { host: '10.0.0.2', port: 5353 });
    assert.deepEqual(parseUpstream('[2001:db8::53]:5300'), { host: '2001:db8::53', port: 5300 });
    assert.deepEqual(parseUpstream('2001:db8::53'), { host: '2001:db8::53', port: 53 });
    for (const bad of ['resolver.example', '10.0.0.2:0', '10.0.0.2:70000', '[10.0.0.2]:53', ''])
      assert.throws(() => parseUpstream(bad), UpstreamDnsError, bad);
  });

  it('takes the first usable nameserver of resolv.conf for "system"', async () => {
    assert.equal(
      firstNameserver(
        '# comment\nsearch example.com\nnameserver fe80::1%eth0\nnameserver 169.254.169.253\nnameserver 10.0.0.2\n',
      ),
      '169.254.169.253',
    );
    assert.equal(firstNameserver('options ndots:2\n'), undefined);
    const dir = mkdtempSync(join(tmpdir(), 'resolv-'));
    try {
      writeFileSync(join(dir, 'resolv.conf'), 'nameserver 192.0.2.53\n');
      assert.deepEqual(await upstreamFromConfig('system', join(dir, 'resolv.conf')), { host: '192.0.2.53', port: 53 });
      writeFileSync(join(dir, 'empty.conf'), 'search example.com\n');
      await assert.rejects(upstreamFromConfig('system', join(dir, 'empty.conf')), /names no nameserver/);
      await assert.rejects(upstreamFromConfig('system', join(dir, 'missing.conf')), /cannot be read: ENOENT/);
      assert.deepEqual(await upstreamFromConfig('192.0.2.1:53'), { host: '192.0.2.1', port: 53 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('host DNS relay', () => {
  let upstream: AuthoritativeDns;
  let relay: DnsRelay;
  const cache = new NameCache();
  const logs = captureLogs('info');

  before(async () => {
    upstream = await startAuthoritativeDns(ZONE, '127.0.0.1', 0);
    relay = await startDnsRelay({
      listen: parseAddress('tcp:127.0.0.1:0'),
      upstream: { host: '127.0.0.1', port: upstream.port },
      allowlist: compileAllowlist(['allowed.test', '*.allowed.test']),
      cache,
      refusal: 'refused',
      logger: logs.logger,
      timeoutMs: 500,
    });
  });
  after(async () => {
    await relay.close();
    await upstream.close();
  });

  it("answers allowed questions from upstream, with the asker's ID, and learns the addresses", async () => {
    const message = query('allowed.test');
    const [answer] = await ask(relay, [message]);
    const parsed = parseDnsResponse(answer!);
    assert.equal(parsed.header.id, message.readUInt16BE(0));
    assert.deepEqual(
      parsed.answers.map((a) => a.data),
      ['198.51.100.10'],
    );
    assert.deepEqual(cache.namesFor('198.51.100.10'), ['allowed.test']);
  });

  it('re-checks the allowlist: a denied question is refused without asking upstream', async () => {
    const asked = upstream.queries.udp + upstream.queries.tcp;
    const [answer] = await ask(relay, [query('denied.test')]);
    assert.equal(parseDnsResponse(answer!).header.rcode, 5);
    assert.equal(upstream.queries.udp + upstream.queries.tcp, asked);
    assert.equal(relay.stats.refused, 1);
    assert.ok(logs.lines.some((line) => line.event === 'host-dns-refused' && line.name === 'denied.test'));
    assert.deepEqual(cache.namesFor('198.51.100.20'), []);
  });

  it('falls back to TCP when the UDP answer is truncated', async () => {
    const tcpBefore = upstream.queries.tcp;
    const [answer] = await ask(relay, [query('big.allowed.test')]);
    const parsed = parseDnsResponse(answer!);
    assert.equal(parsed.header.tc, false);
    assert.equal(parsed.answers.length, 40);
    assert.equal(upstream.queries.tcp, tcpBefore + 1);
  });

  it('answers several questions on one stream, FORMERR to a bad one, then closes', async () => {
    const bad = query('allowed.test');
    bad.writeUInt16BE(0, 4); // no question
    const answers = (await ask(relay, [query('allowed.test'), bad, query('denied.test')])).map(parseDnsResponse);
    assert.equal(answers.length, 3);
    assert.deepEqual(answers.map((a) => a.header.rcode).sort(), [0, 1, 5]);
  });

  it('answers SERVFAIL when upstream stays silent', async () => {
    upstream.silent = true;
    try {
      const [answer] = await ask(relay, [query('allowed.test')]);
      assert.equal(parseDnsResponse(answer!).header.rcode, 2);
    } finally {
      upstream.silent = false;
    }
  });
});
