import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseAddress, type Address } from '../src/net/address.js';
import type { TcpAddress } from '../src/net/address.js';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { DnsTcpFrameReader, DnsType, encodeTcpFrame, parseDnsResponse } from '../src/wire/dns-message.js';
import { buildQuery, DnsForwarder } from '../src/egress/dns-forwarder.js';
import { answerDnsQuery, startDnsServer, type DnsServer } from '../src/egress/dns-server.js';
import { EgressAudit } from '../src/egress/egress-audit.js';
import { NameCache } from '../src/egress/name-cache.js';
import { startDnsRelay, type DnsRelay } from '../src/host/dns-relay.js';
import { silentLogger } from '../src/core/log.js';
import { answerQuestion, startAuthoritativeDns, type AuthoritativeDns } from './helpers/egress-internet.js';
import { captureLogs } from './helpers/log-capture.js';
import { udpExchange } from './helpers/net.js';

const ZONE = {
  'allowed.test': { A: ['198.51.100.10'], AAAA: ['2001:db8::10'] },
  'www.allowed.test': { CNAME: 'edge.cdn.test' },
  'edge.cdn.test': { A: ['198.51.100.11'] },
  'denied.test': { A: ['198.51.100.20'] },
  'big.allowed.test': { A: Array.from({ length: 40 }, (_, i) => `198.51.100.${100 + i}`) },
};
const allowlist = compileAllowlist(['allowed.test', '*.allowed.test']);
const query = (name: string, type: number = DnsType.A) => buildQuery({ name, type, class: 1 });

async function tcpExchange(port: number, messages: Buffer[]): Promise<Buffer[]> {
  const socket = net.connect({ port, host: '127.0.0.1' });
  await once(socket, 'connect');
  const reader = new DnsTcpFrameReader();
  const answers: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => answers.push(...reader.push(chunk)));
  socket.end(Buffer.concat(messages.map(encodeTcpFrame)));
  await once(socket, 'close');
  return answers;
}

/** A relay that accepts streams and never answers, or answers what `reply` makes of the query. */
async function fakeRelay(
  reply?: (query: Buffer) => Buffer,
): Promise<{ address: Address; server: net.Server; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on('error', () => {});
    const reader = new DnsTcpFrameReader();
    socket.on('data', (chunk: Buffer) => {
      for (const message of reader.push(chunk)) if (reply) socket.write(encodeTcpFrame(reply(Buffer.from(message))));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    address: parseAddress(`tcp:127.0.0.1:${(server.address() as net.AddressInfo).port}`),
    server,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

describe('egress DNS server', () => {
  let upstream: AuthoritativeDns;
  let relay: DnsRelay;
  let server: DnsServer;
  const enclaveCache = new NameCache();
  const hostCache = new NameCache();
  const logs = captureLogs('info');
  const audit = new EgressAudit(logs.logger);

  before(async () => {
    upstream = await startAuthoritativeDns(ZONE, '127.0.0.1', 0);
    relay = await startDnsRelay({
      listen: parseAddress('tcp:127.0.0.1:0'),
      upstream: { host: '127.0.0.1', port: upstream.port },
      allowlist,
      cache: hostCache,
      refusal: 'refused',
      logger: silentLogger(),
    });
    const forwarder = new DnsForwarder({
      relay: relay.address,
      cache: enclaveCache,
      maxInFlight: 16,
      connectTimeoutMs: 1000,
      timeoutMs: 3000,
    });
    server = await startDnsServer({
      listen: parseAddress('tcp:127.0.0.1:0') as TcpAddress,
      allowlist,
      forwarder,
      refusal: 'refused',
      audit,
      logger: logs.logger,
    });
  });
  after(async () => {
    await server.close();
    await relay.close();
    await upstream.close();
  });

  it('forwards an allowed question and learns the answer in both caches', async () => {
    const answer = parseDnsResponse((await udpExchange(server.port, query('www.allowed.test')))!);
    assert.equal(answer.header.rcode, 0);
    assert.deepEqual(
      answer.answers.map((a) => a.data),
      ['edge.cdn.test', '198.51.100.11'],
    );
    assert.deepEqual(enclaveCache.namesFor('198.51.100.11'), ['www.allowed.test']);
    assert.deepEqual(hostCache.namesFor('198.51.100.11'), ['www.allowed.test']);
    const six = parseDnsResponse((await udpExchange(server.port, query('allowed.test', DnsType.AAAA)))!);
    assert.deepEqual(
      six.answers.map((a) => a.data),
      ['2001:db8::10'],
    );
    assert.deepEqual(enclaveCache.namesFor('2001:db8::10'), ['allowed.test']);
  });

  it('answers a denied question with REFUSED at once, without asking anyone, in one log line', async () => {
    const asked = upstream.queries.udp + upstream.queries.tcp;
    const refusedBefore = audit.counters.dnsRefused;
    const linesBefore = logs.lines.length;
    const message = query('Denied.Test');
    const raw = (await udpExchange(server.port, message))!;
    const answer = parseDnsResponse(raw);
    assert.equal(answer.header.rcode, 5);
    assert.equal(answer.header.id, message.readUInt16BE(0));
    assert.deepEqual(
      answer.questions,
      [{ name: 'Denied.Test', type: DnsType.A, class: 1 }],
      'the question is echoed as asked (0x20 case)',
    );
    assert.equal(upstream.queries.udp + upstream.queries.tcp, asked, 'the question never left the enclave');
    assert.equal(audit.counters.dnsRefused, refusedBefore + 1);
    const lines = logs.lines.slice(linesBefore).filter((line) => line.msg === 'egress refused');
    assert.equal(lines.length, 1);
    assert.deepEqual(
      (({ path, name, qtype, ip, port, outcome, reason, rule }) => ({
        path,
        name,
        qtype,
        ip,
        port,
        outcome,
        reason,
        rule,
      }))(lines[0]!),
      {
        path: 'dns',
        name: 'Denied.Test',
        qtype: 'A',
        ip: null,
        port: null,
        outcome: 'refused',
        reason: 'no-rule',
        rule: null,
      },
    );
  });

  it('answers NXDOMAIN instead when dns_refusal says so', async () => {
    const forwarder = new DnsForwarder({
      relay: relay.address,
      cache: new NameCache(),
      maxInFlight: 1,
      connectTimeoutMs: 1000,
      timeoutMs: 1000,
    });
    const raw = await answerDnsQuery(query('denied.test'), {
      allowlist,
      forwarder,
      refusal: 'nxdomain',
      audit: new EgressAudit(silentLogger()),
      logger: silentLogger(),
    });
    assert.equal(parseDnsResponse(raw!).header.rcode, 3);
  });

  it('drops what has no header, answers FORMERR to a bad query, and keeps serving', async () => {
    const malformedBefore = audit.counters.dnsMalformed;
    assert.equal(await udpExchange(server.port, Buffer.from('hello'), 300), undefined, 'no header: dropped');
    const twoQuestions = query('allowed.test');
    twoQuestions.writeUInt16BE(2, 4);
    const formerr = parseDnsResponse((await udpExchange(server.port, twoQuestions))!);
    assert.equal(formerr.header.rcode, 1);
    const looping = Buffer.concat([query('x.test').subarray(0, 12), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]);
    assert.equal(parseDnsResponse((await udpExchange(server.port, looping))!).header.rcode, 1);
    const aResponse = Buffer.from(query('allowed.test'));
    aResponse[2] = aResponse[2]! | 0x80;
    assert.equal(
      await udpExchange(server.port, aResponse, 300),
      undefined,
      'a response is never answered (no error ping-pong)',
    );
    assert.equal(audit.counters.dnsMalformed, malformedBefore + 4);
    assert.equal(
      parseDnsResponse((await udpExchange(server.port, query('allowed.test')))!).header.rcode,
      0,
      'still serving',
    );
  });

  it('serves TCP, pipelined, and tells UDP clients to retry over TCP when the answer is too big', async () => {
    const small = parseDnsResponse((await udpExchange(server.port, query('big.allowed.test')))!);
    assert.equal(small.header.tc, true);
    assert.equal(small.answers.length, 0);
    const answers = await tcpExchange(server.port, [
      query('big.allowed.test'),
      query('denied.test'),
      query('allowed.test'),
    ]);
    const parsed = answers.map((raw) => parseDnsResponse(raw));
    const byName = new Map(parsed.map((p) => [p.questions[0]!.name, p]));
    assert.equal(byName.get('big.allowed.test')!.answers.length, 40);
    assert.equal(byName.get('denied.test')!.header.rcode, 5);
    assert.deepEqual(
      byName.get('allowed.test')!.answers.map((a) => a.data),
      ['198.51.100.10'],
    );
  });

  it('answers SERVFAIL when the relay is down', async () => {
    const closed = await fakeRelay();
    const address = closed.address;
    await closed.close();
    const forwarder = new DnsForwarder({
      relay: address,
      cache: new NameCache(),
      maxInFlight: 4,
      connectTimeoutMs: 1000,
      timeoutMs: 1000,
    });
    const local = new EgressAudit(silentLogger());
    const raw = await answerDnsQuery(query('allowed.test'), {
      allowlist,
      forwarder,
      refusal: 'refused',
      audit: local,
      logger: silentLogger(),
    });
    assert.equal(parseDnsResponse(raw!).header.rcode, 2);
    assert.equal(local.counters.dnsFailed, 1);
  });

  it('bounds questions in flight (SERVFAIL at once beyond) and times out a silent relay', async () => {
    const silent = await fakeRelay();
    try {
      const forwarder = new DnsForwarder({
        relay: silent.address,
        cache: new NameCache(),
        maxInFlight: 1,
        connectTimeoutMs: 1000,
        timeoutMs: 300,
      });
      const local = new EgressAudit(silentLogger());
      const options = { allowlist, forwarder, refusal: 'refused' as const, audit: local, logger: silentLogger() };
      const first = answerDnsQuery(query('allowed.test'), options);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(forwarder.inFlight, 1);
      const second = await answerDnsQuery(query('www.allowed.test'), options);
      assert.equal(parseDnsResponse(second!).header.rcode, 2, 'over max_dns_in_flight');
      assert.equal(parseDnsResponse((await first)!).header.rcode, 2, 'no answer in time');
      assert.equal(forwarder.inFlight, 0);
      assert.equal(local.counters.dnsFailed, 2);
    } finally {
      await silent.close();
    }
  });

  it('does not believe a relay answering another question', async () => {
    const lying = await fakeRelay((message) => {
      // Same ID, but the answer is for evil.test: an untrusted host trying to plant a mapping.
      return answerQuestion(
        { 'evil.test': { A: ['203.0.113.66'] } },
        Buffer.concat([message.subarray(0, 12), query('evil.test').subarray(12)]),
        false,
      )!;
    });
    try {
      const cache = new NameCache();
      const forwarder = new DnsForwarder({
        relay: lying.address,
        cache,
        maxInFlight: 4,
        connectTimeoutMs: 1000,
        timeoutMs: 1000,
      });
      const raw = await answerDnsQuery(query('allowed.test'), {
        allowlist,
        forwarder,
        refusal: 'refused',
        audit: new EgressAudit(silentLogger()),
        logger: silentLogger(),
      });
      assert.equal(parseDnsResponse(raw!).header.rcode, 2);
      assert.equal(cache.size, 0);
    } finally {
      await lying.close();
    }
  });

  it('resolves a name for the proxy (A, then AAAA) and learns it', async () => {
    const cache = new NameCache();
    const forwarder = new DnsForwarder({
      relay: relay.address,
      cache,
      maxInFlight: 4,
      connectTimeoutMs: 1000,
      timeoutMs: 3000,
    });
    assert.deepEqual(await forwarder.resolve('allowed.test'), ['198.51.100.10']);
    assert.deepEqual(cache.namesFor('198.51.100.10'), ['allowed.test']);
    assert.deepEqual(await forwarder.resolve('nothing.allowed.test'), [], 'NXDOMAIN: no address');
  });
});
