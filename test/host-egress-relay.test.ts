import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { parseAddress } from '../src/net/address.js';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { EgressStatus, encodeEgressHeader, parseEgressReply } from '../src/wire/egress-header.js';
import { NameCache } from '../src/egress/name-cache.js';
import { classifyAddress, isPublicAddress } from '../src/host/address-class.js';
import { checkDestination, EgressRelay, type EgressRelayOptions } from '../src/host/egress-relay.js';
import { silentLogger } from '../src/core/log.js';
import { captureLogs } from './helpers/log-capture.js';
import { randomPayload, readAll, sha256, startReplyServer } from './helpers/net.js';

const allowlist = compileAllowlist(['allowed.test', '*.cdn.test', '203.0.113.0/24', '10.1.2.3', 'tls.test:443']);

describe('host address classes', () => {
  it('refuses by default what is not public: private, loopback, link-local, ULA, CGNAT, multicast, reserved', () => {
    const cases: Array<[string, string]> = [
      ['10.0.0.1', 'private'],
      ['172.16.5.4', 'private'],
      ['172.31.255.255', 'private'],
      ['192.168.1.1', 'private'],
      ['127.0.0.1', 'loopback'],
      ['127.8.8.8', 'loopback'],
      ['::1', 'loopback'],
      ['169.254.169.254', 'link-local'],
      ['fe80::1', 'link-local'],
      ['fd00:ec2::254', 'unique-local'],
      ['fc12::1', 'unique-local'],
      ['100.64.0.1', 'cgnat'],
      ['100.127.255.254', 'cgnat'],
      ['224.0.0.251', 'multicast'],
      ['ff02::1', 'multicast'],
      ['0.0.0.0', 'unspecified'],
      ['::', 'unspecified'],
      ['255.255.255.255', 'reserved'],
      ['240.0.0.1', 'reserved'],
      ['198.18.0.1', 'reserved'],
      ['::ffff:10.0.0.1', 'private'],
      ['::ffff:127.0.0.1', 'loopback'],
      ['64:ff9b::a9fe:a9fe', 'link-local'], // NAT64 of 169.254.169.254
      ['2002:7f00:1::', 'loopback'], // 6to4 of 127.0.0.1
    ];
    for (const [ip, expected] of cases) assert.equal(classifyAddress(ip), expected, ip);
  });

  it('lets public and documentation addresses through', () => {
    for (const ip of [
      '8.8.8.8',
      '1.1.1.1',
      '172.32.0.1',
      '100.128.0.1',
      '203.0.113.7',
      '198.51.100.1',
      '192.0.2.1',
      '2606:4700::1111',
      '2001:db8::1',
      '64:ff9b::808:808',
    ]) {
      assert.equal(isPublicAddress(ip), true, ip);
    }
    assert.throws(() => classifyAddress('example.com'), TypeError);
  });
});

describe('host destination check (defence in depth)', () => {
  const cache = new NameCache();
  cache.add('203.0.113.50', 'allowed.test', 300);
  cache.add('198.51.100.7', 'a.cdn.test', 300);
  cache.add('10.9.9.9', 'allowed.test', 300);

  it('allows a name resolved (by the host DNS relay) to that IP, or an allowed address', () => {
    assert.deepEqual(checkDestination({ name: 'a.cdn.test', ip: '198.51.100.7', port: 443 }, allowlist, cache, false), {
      status: EgressStatus.OK,
      reason: 'allowed',
      rule: '*.cdn.test',
    });
    assert.equal(
      checkDestination({ name: '', ip: '203.0.113.9', port: 22 }, allowlist, cache, false).status,
      EgressStatus.OK,
    );
    assert.equal(
      checkDestination({ name: 'allowed.test', ip: '203.0.113.9', port: 443 }, allowlist, cache, false).status,
      EgressStatus.OK,
      'allowed name on an allowed address',
    );
  });

  it('refuses a denied name, a name on an IP it never resolved to, and an IP no rule allows', () => {
    assert.deepEqual(checkDestination({ name: 'evil.test', ip: '203.0.113.50', port: 443 }, allowlist, cache, false), {
      status: EgressStatus.DENIED,
      reason: 'name-no-rule',
    });
    assert.deepEqual(
      checkDestination({ name: 'allowed.test', ip: '198.51.100.99', port: 443 }, allowlist, cache, false),
      { status: EgressStatus.DENIED, reason: 'ip-not-resolved-for-name' },
    );
    assert.deepEqual(checkDestination({ name: '', ip: '198.51.100.7', port: 443 }, allowlist, cache, false), {
      status: EgressStatus.DENIED,
      reason: 'ip-no-rule',
    });
    assert.deepEqual(checkDestination({ name: 'tls.test', ip: '203.0.113.1', port: 80 }, allowlist, cache, false), {
      status: EgressStatus.DENIED,
      reason: 'name-port',
    });
  });

  it('refuses private destinations unless allow_private, even when the allowlist allows them', () => {
    assert.deepEqual(checkDestination({ name: 'allowed.test', ip: '10.9.9.9', port: 443 }, allowlist, cache, false), {
      status: EgressStatus.PRIVATE,
      reason: 'private',
    });
    assert.deepEqual(checkDestination({ name: '', ip: '10.1.2.3', port: 5432 }, allowlist, cache, false), {
      status: EgressStatus.PRIVATE,
      reason: 'private',
    });
    assert.equal(
      checkDestination({ name: '', ip: '10.1.2.3', port: 5432 }, allowlist, cache, true).status,
      EgressStatus.OK,
    );
  });
});

describe('host egress relay', () => {
  let app: Awaited<ReturnType<typeof startReplyServer>>;
  const cache = new NameCache();
  const reply = randomPayload(256 * 1024);
  const logs = captureLogs('info');
  const started: EgressRelay[] = [];

  const startRelay = async (overrides: Partial<EgressRelayOptions> = {}) => {
    const relay = await EgressRelay.start({
      listen: parseAddress('tcp:127.0.0.1:0'),
      allowlist: compileAllowlist(['allowed.test']),
      cache,
      allowPrivate: true,
      connectTimeoutMs: 2000,
      idleTimeoutMs: 10_000,
      maxConnections: 16,
      logger: logs.logger,
      ...overrides,
    });
    started.push(relay);
    return relay;
  };
  const open = async (relay: EgressRelay) => {
    const address = relay.address;
    assert.equal(address.transport, 'tcp');
    const socket = net.connect({
      port: address.transport === 'tcp' ? address.port : 0,
      host: '127.0.0.1',
      allowHalfOpen: true,
    });
    await once(socket, 'connect');
    return socket;
  };

  before(async () => {
    app = await startReplyServer((request) => Buffer.concat([Buffer.from(sha256(request)), reply]));
    cache.add('127.0.0.1', 'allowed.test', 300);
  });
  after(async () => {
    for (const relay of started) await relay.close();
    app.server.close();
  });

  it('connects an allowed destination and relays byte-exact with half-close', async () => {
    const relay = await startRelay();
    const socket = await open(relay);
    const request = randomPayload(512 * 1024 + 3);
    const answer = readAll(socket);
    socket.write(encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.1', port: app.port }));
    socket.end(request);
    const data = await answer;
    assert.deepEqual(parseEgressReply(data), { kind: 'reply', status: EgressStatus.OK, length: 4 });
    assert.equal(data.subarray(4, 68).toString(), sha256(request));
    assert.equal(sha256(data.subarray(68)), sha256(reply));
    assert.equal(relay.stats.connected, 1);
  });

  it('refuses a private destination by default, with a reply and a log line', async () => {
    const relay = await startRelay({ allowPrivate: false });
    const socket = await open(relay);
    const answer = readAll(socket);
    socket.write(encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.1', port: app.port }));
    const data = await answer;
    socket.destroy();
    assert.deepEqual(parseEgressReply(data), { kind: 'reply', status: EgressStatus.PRIVATE, length: 4 });
    assert.equal(data.length, 4, 'nothing of the destination came back');
    const line = logs.lines.find((l) => l.event === 'host-egress-refused' && l.status === 'PRIVATE');
    assert.ok(line, 'refusal logged');
    assert.deepEqual([line.name, line.ip, line.port, line.reason], ['allowed.test', '127.0.0.1', app.port, 'loopback']);
    assert.equal(relay.stats.refused, 1);
  });

  it('refuses a name it did not resolve to that IP, and a bad header', async () => {
    const relay = await startRelay();
    const denied = await open(relay);
    const deniedAnswer = readAll(denied);
    denied.write(encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.2', port: app.port }));
    assert.deepEqual(parseEgressReply(await deniedAnswer), { kind: 'reply', status: EgressStatus.DENIED, length: 4 });
    denied.destroy();
    const bad = await open(relay);
    const badAnswer = readAll(bad);
    bad.write('GET / HTTP/1.1\r\n\r\n');
    assert.deepEqual(parseEgressReply(await badAnswer), { kind: 'reply', status: EgressStatus.BAD_HEADER, length: 4 });
    bad.destroy();
  });

  it('relays a short payload and FIN sent right behind the header', async () => {
    const relay = await startRelay();
    for (let i = 0; i < 5; i++) {
      const socket = await open(relay);
      const answer = readAll(socket);
      socket.end(
        Buffer.concat([
          encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.1', port: app.port }),
          Buffer.from('ping'),
        ]),
      );
      const data = await answer;
      assert.deepEqual(parseEgressReply(data), { kind: 'reply', status: EgressStatus.OK, length: 4 });
      assert.equal(data.subarray(4, 68).toString(), sha256(Buffer.from('ping')), `round ${i}`);
    }
  });

  it('judges the SNI or Host that follows the header, as an app dialling the relay directly would send', async () => {
    const relay = await startRelay();
    const mark = logs.lines.length;
    const socket = await open(relay);
    const answer = readAll(socket).catch(() => Buffer.alloc(0));
    socket.write(encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.1', port: app.port }));
    socket.write('GET / HTTP/1.1\r\nHost: allowed.test\r\n\r\nGET / HTTP/1.1\r\nHost: other.test\r\n\r\n');
    const data = await answer;
    assert.ok(data.length <= 4, 'nothing of the destination came back');
    const lines = logs.lines.slice(mark).filter((line) => line.event === 'host-egress-refused');
    assert.deepEqual(
      lines.map((line) => [line.name, line.host, line.reason]),
      [['allowed.test', 'other.test', 'hostname-denied']],
    );
    assert.equal(relay.stats.refused, 1);
  });

  it('reports an unreachable destination', async () => {
    const closed = net.createServer();
    closed.listen(0, '127.0.0.1');
    await once(closed, 'listening');
    const port = (closed.address() as net.AddressInfo).port;
    closed.close();
    const relay = await startRelay({ allowlist: compileAllowlist(['127.0.0.1']) });
    const socket = await open(relay);
    const answer = readAll(socket);
    socket.write(encodeEgressHeader({ name: '', ip: '127.0.0.1', port }));
    assert.deepEqual(parseEgressReply(await answer), { kind: 'reply', status: EgressStatus.UNREACHABLE, length: 4 });
    socket.destroy();
  });

  it('answers OVERLOADED beyond max_connections', async () => {
    const relay = await startRelay({ maxConnections: 1, logger: silentLogger() });
    const first = await open(relay);
    first.write(encodeEgressHeader({ name: 'allowed.test', ip: '127.0.0.1', port: app.port }).subarray(0, 3)); // holds its slot
    await new Promise((resolve) => setImmediate(resolve));
    const second = await open(relay);
    assert.deepEqual(parseEgressReply(await readAll(second)), {
      kind: 'reply',
      status: EgressStatus.OVERLOADED,
      length: 4,
    });
    second.destroy();
    first.destroy();
  });
});
