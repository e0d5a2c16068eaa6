import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  EgressHeaderError,
  EgressStatus,
  EGRESS_HEADER_MAX_LENGTH,
  encodeEgressHeader,
  encodeEgressReply,
  parseEgressHeader,
  parseEgressReply,
  type EgressHeader,
} from '../src/wire/egress-header.js';
import { canonicalIp } from '../src/egress/name-cache.js';
import { Prng } from './helpers/prng.js';

const LABEL_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789-';

function randomName(prng: Prng): string {
  if (prng.int(4) === 0) return '';
  const labels: string[] = [];
  const count = 1 + prng.int(4);
  for (let i = 0; i < count; i++) {
    let label = String.fromCharCode(97 + prng.int(26));
    for (let j = prng.int(12); j > 0; j--) label += prng.pick([...LABEL_CHARS]);
    labels.push(label.replace(/-+$/, 'x'));
  }
  return `${labels.join('.')}.test`;
}

function randomIp(prng: Prng): string {
  if (prng.int(2) === 0) return [prng.int(256), prng.int(256), prng.int(256), prng.int(256)].join('.');
  const groups = Array.from({ length: 8 }, () => (prng.int(3) === 0 ? 0 : prng.int(0x10000)).toString(16));
  return groups.join(':');
}

function randomHeader(prng: Prng): EgressHeader {
  return { name: randomName(prng), ip: randomIp(prng), port: 1 + prng.int(65535) };
}

const canonical = (ip: string) => canonicalIp(ip)!;

describe('egress header', () => {
  it('round-trips names, IPv4 and IPv6 (canonical) addresses and ports', () => {
    for (const header of [
      { name: 'api.example.com', ip: '203.0.113.7', port: 443 },
      { name: '', ip: '2001:db8::1', port: 25 },
      { name: 'x.test', ip: '::', port: 1 },
      { name: 'x.test', ip: '::1.2.3.4', port: 65535 },
      { name: 'x.test', ip: '2001:DB8:0:0:0:0:0:1', port: 8080 },
    ]) {
      const encoded = encodeEgressHeader(header);
      const parsed = parseEgressHeader(Buffer.concat([encoded, Buffer.from('payload')]));
      assert.equal(parsed.kind, 'header');
      if (parsed.kind !== 'header') continue;
      assert.equal(parsed.length, encoded.length);
      assert.deepEqual(parsed.header, { ...header, ip: canonical(header.ip) });
    }
  });

  it('carries IPv4-mapped IPv6 as the IPv4 address', () => {
    const parsed = parseEgressHeader(encodeEgressHeader({ name: '', ip: '::ffff:192.0.2.1', port: 80 }));
    assert.deepEqual(parsed.kind === 'header' && parsed.header, { name: '', ip: '192.0.2.1', port: 80 });
  });

  it('refuses to encode bad input', () => {
    for (const header of [
      { name: 'Upper.Case.test', ip: '192.0.2.1', port: 80 },
      { name: 'a b', ip: '192.0.2.1', port: 80 },
      { name: 'x.test', ip: 'example.com', port: 80 },
      { name: 'x.test', ip: 'fe80::1%eth0', port: 80 },
      { name: 'x.test', ip: '192.0.2.1', port: 0 },
      { name: 'x.test', ip: '192.0.2.1', port: 65536 },
      { name: `${'a'.repeat(63)}.`.repeat(4) + 'test', ip: '192.0.2.1', port: 80 },
    ]) {
      assert.throws(() => encodeEgressHeader(header), EgressHeaderError, JSON.stringify(header));
    }
  });

  it('reports incomplete for every strict prefix, and rejects wrong magic, version, family, port and name', () => {
    const encoded = encodeEgressHeader({ name: 'api.example.com', ip: '2001:db8::1', port: 443 });
    for (let end = 0; end < encoded.length; end++)
      assert.deepEqual(parseEgressHeader(encoded.subarray(0, end)), { kind: 'incomplete' });
    const corrupt = (offset: number, value: number) => {
      const copy = Buffer.from(encoded);
      copy[offset] = value;
      return copy;
    };
    assert.throws(() => parseEgressHeader(corrupt(0, 0x47)), /bad magic/);
    assert.throws(() => parseEgressHeader(Buffer.from('GET / HTTP/1.1\r\n')), /bad magic/);
    assert.throws(() => parseEgressHeader(corrupt(2, 2)), /unsupported version 2/);
    assert.throws(() => parseEgressHeader(corrupt(3, 5)), /family 5/);
    assert.throws(
      () => parseEgressHeader(Buffer.concat([encoded.subarray(0, 4), Buffer.from([0, 0]), encoded.subarray(6)])),
      /port 0/,
    );
    assert.throws(() => parseEgressHeader(corrupt(6, 254)), /exceeds 253/);
    assert.throws(() => parseEgressHeader(corrupt(encoded.length - 1, 0x41)), /normalised/); // 'M' instead of 'm'
    assert.throws(() => parseEgressHeader(corrupt(encoded.length - 1, 0x00)), /printable ASCII/);
  });

  it('fuzz: random headers round-trip; mutated bytes parse, stay incomplete or fail with EgressHeaderError only', () => {
    const prng = new Prng(0xe9e55);
    for (let i = 0; i < 3000; i++) {
      const header = randomHeader(prng);
      const encoded = encodeEgressHeader(header);
      assert.ok(encoded.length <= EGRESS_HEADER_MAX_LENGTH);
      const parsed = parseEgressHeader(encoded);
      assert.deepEqual(
        parsed,
        { kind: 'header', header: { ...header, ip: canonical(header.ip) }, length: encoded.length },
        `seed iteration ${i}`,
      );

      const mutated = prng.mutate(encoded);
      try {
        const result = parseEgressHeader(mutated);
        if (result.kind === 'header') {
          assert.ok(result.length <= mutated.length && result.length <= EGRESS_HEADER_MAX_LENGTH);
          // Whatever parses must encode back to exactly the bytes it was read from.
          assert.deepEqual(encodeEgressHeader(result.header), mutated.subarray(0, result.length), `iteration ${i}`);
        }
      } catch (error) {
        assert.ok(error instanceof EgressHeaderError, `iteration ${i}: ${(error as Error).stack}`);
        assert.equal((error as EgressHeaderError).code, 'ERR_EGRESS_HEADER');
      }
    }
  });

  it('fuzz: random bytes never throw anything but EgressHeaderError', () => {
    const prng = new Prng(77);
    for (let i = 0; i < 3000; i++) {
      const data = Buffer.concat([Buffer.from('EG\x01'), prng.bytes(prng.int(300))]);
      try {
        parseEgressHeader(data);
      } catch (error) {
        assert.ok(error instanceof EgressHeaderError, `iteration ${i}: ${(error as Error).stack}`);
      }
    }
  });

  it('encodes and parses replies', () => {
    for (const status of Object.values(EgressStatus)) {
      const reply = encodeEgressReply(status);
      assert.deepEqual(parseEgressReply(Buffer.concat([reply, Buffer.from('banner')])), {
        kind: 'reply',
        status,
        length: 4,
      });
      for (let end = 0; end < reply.length; end++)
        assert.deepEqual(parseEgressReply(reply.subarray(0, end)), { kind: 'incomplete' });
    }
    assert.throws(() => parseEgressReply(Buffer.from([0x45, 0x47, 1, 99])), /unknown status 99/);
    assert.throws(() => parseEgressReply(Buffer.from('220 smtp')), /bad magic/);
  });
});
