import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DnsType, type DnsAnswer } from '../src/wire/dns-message.js';
import { NameCache, canonicalIp } from '../src/egress/name-cache.js';

const a = (name: string, data: string, ttl = 300): DnsAnswer => ({ name, type: DnsType.A, class: 1, ttl, data });
const aaaa = (name: string, data: string, ttl = 300): DnsAnswer => ({ name, type: DnsType.AAAA, class: 1, ttl, data });
const cname = (name: string, data: string, ttl = 300): DnsAnswer => ({
  name,
  type: DnsType.CNAME,
  class: 1,
  ttl,
  data,
});

function clock(start = 1_000_000) {
  let now = start;
  return { now: () => now, advance: (ms: number) => void (now += ms) };
}

describe('name cache', () => {
  it('maps A and AAAA answers to the (normalised) question name', () => {
    const cache = new NameCache();
    const learned = cache.learn('API.Example.COM.', [
      a('api.example.com', '192.0.2.1'),
      aaaa('api.example.com', '2001:db8:0::1'),
    ]);
    assert.deepEqual(learned, ['192.0.2.1', '2001:db8::1']);
    assert.deepEqual(cache.namesFor('192.0.2.1'), ['api.example.com']);
    assert.deepEqual(cache.namesFor('2001:0db8::0001'), ['api.example.com'], 'IPv6 in any spelling');
    assert.deepEqual(cache.namesFor('::ffff:192.0.2.1'), ['api.example.com'], 'IPv4-mapped IPv6 is the IPv4 address');
    assert.deepEqual(cache.namesFor('192.0.2.2'), []);
  });

  it('follows CNAME chains, in any order, back to the question name', () => {
    const cache = new NameCache();
    cache.learn('www.shop.test', [
      a('edge.cdn.test', '198.51.100.7'),
      cname('lb.shop.test', 'edge.cdn.test'),
      cname('www.shop.test', 'lb.shop.test'),
    ]);
    assert.deepEqual(
      cache.namesFor('198.51.100.7'),
      ['www.shop.test'],
      'the app will send the question name as SNI, not the CDN name',
    );
  });

  it('ignores addresses not reachable from the question through CNAMEs', () => {
    const cache = new NameCache();
    const learned = cache.learn('www.shop.test', [
      cname('www.shop.test', 'edge.cdn.test'),
      a('edge.cdn.test', '198.51.100.7'),
      a('evil.test', '203.0.113.66'), // an unrelated record an upstream slipped in
      cname('other.test', 'www.shop.test'), // a chain pointing the wrong way
      a('other.test', '203.0.113.67'),
      { name: 'www.shop.test', type: DnsType.A, class: 3, ttl: 60, data: '203.0.113.68' }, // CHAOS class
    ]);
    assert.deepEqual(learned, ['198.51.100.7']);
    for (const ip of ['203.0.113.66', '203.0.113.67', '203.0.113.68']) assert.deepEqual(cache.namesFor(ip), []);
  });

  it('does not loop on CNAME cycles', () => {
    const cache = new NameCache();
    assert.deepEqual(
      cache.learn('a.test', [cname('a.test', 'b.test'), cname('b.test', 'a.test'), a('b.test', '192.0.2.9')]),
      ['192.0.2.9'],
    );
    assert.deepEqual(cache.namesFor('192.0.2.9'), ['a.test']);
  });

  it('keeps several names per address (shared hosting)', () => {
    const cache = new NameCache();
    cache.learn('one.test', [a('one.test', '192.0.2.5')]);
    cache.learn('two.test', [a('two.test', '192.0.2.5')]);
    assert.deepEqual(cache.namesFor('192.0.2.5').sort(), ['one.test', 'two.test']);
  });

  it('expires entries after their TTL, clamped to the floor and ceiling', () => {
    const time = clock();
    const cache = new NameCache({ now: time.now, minTtlMs: 5_000, maxTtlMs: 3_600_000 });
    cache.learn('zero.test', [a('zero.test', '192.0.2.1', 0)]);
    cache.learn('minute.test', [a('minute.test', '192.0.2.2', 60)]);
    cache.learn('week.test', [a('week.test', '192.0.2.3', 7 * 86400)]);
    time.advance(4_999);
    assert.deepEqual(cache.namesFor('192.0.2.1'), ['zero.test'], 'a TTL of 0 still lives for the floor');
    time.advance(1);
    assert.deepEqual(cache.namesFor('192.0.2.1'), []);
    time.advance(55_000);
    assert.deepEqual(cache.namesFor('192.0.2.2'), []);
    time.advance(3_600_000 - 60_000 - 1);
    assert.deepEqual(cache.namesFor('192.0.2.3'), ['week.test']);
    time.advance(1);
    assert.deepEqual(cache.namesFor('192.0.2.3'), [], 'a week-long TTL is cut to the ceiling');
  });

  it('takes the smallest TTL along a CNAME chain', () => {
    const time = clock();
    const cache = new NameCache({ now: time.now, minTtlMs: 0 });
    cache.learn('www.test', [cname('www.test', 'edge.test', 10), a('edge.test', '192.0.2.1', 300)]);
    time.advance(10_000);
    assert.deepEqual(cache.namesFor('192.0.2.1'), []);
  });

  it('a later answer extends a name, never shortens it', () => {
    const time = clock();
    const cache = new NameCache({ now: time.now, minTtlMs: 0 });
    cache.learn('x.test', [a('x.test', '192.0.2.1', 100)]);
    cache.learn('x.test', [a('x.test', '192.0.2.1', 10)]);
    time.advance(50_000);
    assert.deepEqual(cache.namesFor('192.0.2.1'), ['x.test']);
  });

  it('is bounded: least recently used addresses go first', () => {
    const cache = new NameCache({ maxAddresses: 3 });
    for (let i = 1; i <= 3; i++) cache.add(`192.0.2.${i}`, `n${i}.test`, 300);
    cache.namesFor('192.0.2.1'); // touch: now the most recent
    cache.add('192.0.2.4', 'n4.test', 300);
    assert.equal(cache.size, 3);
    assert.deepEqual(cache.namesFor('192.0.2.2'), [], 'the least recently used address was evicted');
    for (const i of [1, 3, 4]) assert.deepEqual(cache.namesFor(`192.0.2.${i}`), [`n${i}.test`]);
  });

  it('is bounded in names per address: the one expiring first goes', () => {
    const cache = new NameCache({ maxNamesPerAddress: 2, minTtlMs: 0 });
    cache.add('192.0.2.1', 'long.test', 600);
    cache.add('192.0.2.1', 'short.test', 60);
    cache.add('192.0.2.1', 'new.test', 300);
    assert.deepEqual(cache.namesFor('192.0.2.1').sort(), ['long.test', 'new.test']);
  });

  it('rejects what is not an address or a name', () => {
    const cache = new NameCache();
    assert.equal(cache.add('not-an-ip', 'x.test', 60), false);
    assert.equal(cache.add('192.0.2.1', 'bad name!', 60), false);
    assert.equal(cache.add('fe80::1%eth0', 'x.test', 60), false);
    assert.deepEqual(cache.learn('odd\\.label.test', [a('odd\\.label.test', '192.0.2.1')]), []);
    assert.equal(cache.size, 0);
    assert.throws(() => new NameCache({ maxAddresses: 0 }), RangeError);
    assert.throws(() => new NameCache({ minTtlMs: 10, maxTtlMs: 5 }), RangeError);
  });

  it('canonicalIp gives one spelling per address', () => {
    assert.equal(canonicalIp('2001:DB8:0:0::1'), '2001:db8::1');
    assert.equal(canonicalIp('::ffff:10.0.0.1'), '10.0.0.1');
    assert.equal(canonicalIp('10.0.0.1'), '10.0.0.1');
    assert.equal(canonicalIp('example.com'), undefined);
  });
});
