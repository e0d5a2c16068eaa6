import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import {
  encodeProxyHeader,
  parseProxyHeader,
  PROXY_V2_SIGNATURE,
  ProxyProtocolError,
  readProxyHeader,
  type ProxyHeader,
} from '../src/net/proxy-protocol.js';
import { Prng } from './helpers/prng.js';

function v2(verCmd: number, fam: number, payload: Buffer): Buffer {
  const head = Buffer.from([verCmd, fam, 0, 0]);
  head.writeUInt16BE(payload.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, head, payload]);
}

function tlv(type: number, value: Buffer): Buffer {
  const head = Buffer.from([type, 0, 0]);
  head.writeUInt16BE(value.length, 1);
  return Buffer.concat([head, value]);
}

function parsed(buf: Buffer, accept: 'v1' | 'v2' | 'any' = 'any'): { header: ProxyHeader; length: number } {
  const result = parseProxyHeader(buf, accept);
  assert.equal(result.kind, 'header');
  return result as { header: ProxyHeader; length: number };
}

function rejects(buf: Buffer, pattern: RegExp, accept: 'v1' | 'v2' | 'any' = 'any'): void {
  assert.throws(
    () => parseProxyHeader(buf, accept),
    (error: unknown) =>
      error instanceof ProxyProtocolError && error.code === 'ERR_PROXY_PROTOCOL' && pattern.test(error.message),
  );
}

const ascii = (text: string): Buffer => Buffer.from(text, 'latin1');

describe('PROXY v1', () => {
  it('parses TCP4 and reports the header length', () => {
    const { header, length } = parsed(ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nGET /'));
    assert.equal(length, 45);
    assert.deepEqual(header, {
      version: 1,
      command: 'PROXY',
      family: 'tcp4',
      source: { address: '192.0.2.1', port: 56324 },
      destination: { address: '198.51.100.7', port: 443 },
    });
  });

  it('parses TCP6 and canonicalises the addresses', () => {
    const { header } = parsed(ascii('PROXY TCP6 2001:DB8:0:0:0:0:0:1 ::1 0 65535\r\n'));
    assert.equal(header.family, 'tcp6');
    assert.deepEqual(header.source, { address: '2001:db8::1', port: 0 });
    assert.deepEqual(header.destination, { address: '::1', port: 65535 });
  });

  it('accepts UNKNOWN and ignores the rest of its line', () => {
    assert.deepEqual(parseProxyHeader(ascii('PROXY UNKNOWN\r\n'), 'v1'), {
      kind: 'header',
      header: { version: 1, command: 'PROXY', family: 'unknown' },
      length: 15,
    });
    const long = `PROXY UNKNOWN ffff:f...f:ffff ${'f'.repeat(60)} 65535 65535\r\n`;
    assert.equal(parsed(ascii(long)).length, long.length);
  });

  it('says incomplete until the CRLF arrives', () => {
    for (const text of ['', 'P', 'PROXY', 'PROXY TCP4 1.2.3.4', 'PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r']) {
      assert.deepEqual(parseProxyHeader(ascii(text), 'any'), { kind: 'incomplete' }, text);
    }
  });

  it('rejects malformed lines with a message naming the problem', () => {
    rejects(ascii(`PROXY TCP4 ${'1'.repeat(120)}`), /no CRLF within 107 bytes/);
    const longest = `PROXY UNKNOWN ${'x'.repeat(107 - 16)}\r\n`;
    assert.equal(parsed(ascii(longest)).length, 107);
    rejects(ascii(`PROXY UNKNOWN ${'x'.repeat(107 - 15)}\r\n`), /no CRLF within 107 bytes/);
    rejects(ascii('PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n'), /source address "1\.2\.3\.256"/);
    rejects(ascii('PROXY TCP4 1.2.3.4 ::1 1 2\r\n'), /destination address "::1" is not a valid IPv4/);
    rejects(ascii('PROXY TCP6 1.2.3.4 ::1 1 2\r\n'), /not a valid IPv6/);
    rejects(ascii('PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n'), /not a valid IPv6/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n'), /source port "65536"/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n'), /destination port "080"/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 +80\r\n'), /destination port/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 80x\r\n'), /destination port/);
    rejects(ascii('PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n'), /6 single-space separated fields/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n'), /6 single-space separated fields/);
    rejects(ascii('PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n'), /must be TCP4, TCP6 or UNKNOWN/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n'), /non-printable byte 0x0a/);
    rejects(ascii('PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n'), /CR not followed by LF/);
    rejects(ascii('GET / HTTP/1.1\r\n'), /must start with "PROXY "/);
    rejects(ascii('PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n'), /expected a PROXY protocol v2 header, got v1/, 'v2');
  });
});

describe('PROXY v2', () => {
  it('parses PROXY over TCP4 with TLVs', () => {
    const addresses = Buffer.from([192, 0, 2, 1, 198, 51, 100, 7, 0xdc, 0x04, 0x01, 0xbb]);
    const tlvs = Buffer.concat([
      tlv(0x01, ascii('h2')),
      tlv(0xea, Buffer.from([0x01, 0x76, 0x70, 0x63])),
      tlv(0x04, Buffer.alloc(0)),
    ]);
    const input = Buffer.concat([v2(0x21, 0x11, Buffer.concat([addresses, tlvs])), ascii('payload')]);
    const { header, length } = parsed(input);
    assert.equal(length, input.length - 7);
    assert.deepEqual(header, {
      version: 2,
      command: 'PROXY',
      family: 'tcp4',
      source: { address: '192.0.2.1', port: 56324 },
      destination: { address: '198.51.100.7', port: 443 },
      tlvs: [
        { type: 0x01, value: ascii('h2') },
        { type: 0xea, value: Buffer.from([0x01, 0x76, 0x70, 0x63]) },
        { type: 0x04, value: Buffer.alloc(0) },
      ],
    });
  });

  it('parses PROXY over TCP6, including IPv4-mapped addresses', () => {
    const src = Buffer.from('20010db8000000000000000000000001', 'hex');
    const dst = Buffer.from('00000000000000000000ffff0a000001', 'hex');
    const { header } = parsed(
      v2(0x21, 0x21, Buffer.concat([src, dst, Buffer.from([0, 80, 0x01, 0xbb]), tlv(0x02, ascii('example.com'))])),
    );
    assert.equal(header.family, 'tcp6');
    assert.deepEqual(header.source, { address: '2001:db8::1', port: 80 });
    assert.deepEqual(header.destination, { address: '::ffff:10.0.0.1', port: 443 });
    assert.deepEqual(header.tlvs, [{ type: 0x02, value: ascii('example.com') }]);
  });

  it('parses PROXY over UNIX with paths and port 0', () => {
    const path = (p: string): Buffer => Buffer.concat([ascii(p), Buffer.alloc(108 - p.length)]);
    const { header } = parsed(v2(0x21, 0x31, Buffer.concat([path('/run/a.sock'), path('/run/b.sock')])));
    assert.equal(header.family, 'unix');
    assert.deepEqual(header.source, { address: '/run/a.sock', port: 0 });
    assert.deepEqual(header.destination, { address: '/run/b.sock', port: 0 });
  });

  it('parses LOCAL (health checks) and discards its address block', () => {
    assert.deepEqual(parseProxyHeader(v2(0x20, 0x00, Buffer.alloc(0)), 'v2'), {
      kind: 'header',
      header: { version: 2, command: 'LOCAL', family: 'unknown' },
      length: 16,
    });
    assert.deepEqual(parsed(v2(0x20, 0x11, Buffer.alloc(12, 7))).header, {
      version: 2,
      command: 'LOCAL',
      family: 'unknown',
    });
  });

  it('parses PROXY with UNSPEC family as "use the real endpoints"', () => {
    const { header } = parsed(v2(0x21, 0x00, tlv(0x05, ascii('id'))));
    assert.deepEqual(header, {
      version: 2,
      command: 'PROXY',
      family: 'unknown',
      tlvs: [{ type: 0x05, value: ascii('id') }],
    });
  });

  it('says incomplete for every strict prefix of a valid header', () => {
    const full = v2(0x21, 0x11, Buffer.concat([Buffer.alloc(12, 1), tlv(0x01, ascii('http/1.1'))]));
    for (let i = 0; i < full.length; i++)
      assert.deepEqual(parseProxyHeader(full.subarray(0, i), 'v2'), { kind: 'incomplete' }, `prefix ${i}`);
  });

  it('rejects malformed headers with a message naming the problem', () => {
    const good = v2(0x21, 0x11, Buffer.alloc(12));
    const bad = (offset: number, byte: number): Buffer => {
      const copy = Buffer.from(good);
      copy[offset] = byte;
      return copy;
    };
    rejects(bad(5, 0x00), /bad PROXY protocol v2 signature/);
    rejects(ascii('\r\n\r\n\0\r\nQUIX'), /bad PROXY protocol v2 signature/);
    rejects(bad(12, 0x11), /unsupported PROXY protocol version 1/);
    rejects(bad(12, 0x31), /unsupported PROXY protocol version 3/);
    rejects(bad(12, 0x22), /unknown PROXY v2 command 0x02/);
    rejects(bad(13, 0x12), /family\/transport byte 0x12/);
    rejects(bad(13, 0x41), /family\/transport byte 0x41/);
    rejects(v2(0x21, 0x21, Buffer.alloc(12)), /tcp6 needs 36 address bytes, the header declares 12/);
    rejects(v2(0x21, 0x11, Buffer.alloc(1025)), /payload of 1025 bytes exceeds the limit of 1024/);
    const lengthOnly = Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x21, 0x11, 0xff, 0xff])]);
    rejects(lengthOnly, /payload of 65535 bytes exceeds/);
    rejects(
      v2(0x21, 0x11, Buffer.concat([Buffer.alloc(12), Buffer.from([0x01, 0x00])])),
      /truncated PROXY v2 TLV header/,
    );
    rejects(
      v2(0x21, 0x11, Buffer.concat([Buffer.alloc(12), Buffer.from([0x01, 0x00, 0x05, 0x61])])),
      /TLV type 0x01 declares 5 bytes, only 1 remain/,
    );
    rejects(good, /expected a PROXY protocol v1 header, got a v2 signature/, 'v1');
  });
});

describe('encodeProxyHeader', () => {
  const cases = [
    { source: { address: '192.0.2.1', port: 1 }, destination: { address: '10.0.0.1', port: 65535 } },
    { source: { address: '2001:db8::1', port: 443 }, destination: { address: '::ffff:10.0.0.1', port: 0 } },
    { source: { address: '::', port: 8 }, destination: { address: 'fe80:0:0:0:1:2:3:4', port: 9 } },
  ];
  for (const version of [1, 2] as const) {
    it(`round-trips v${version} through parseProxyHeader`, () => {
      for (const info of cases) {
        const encoded = encodeProxyHeader(version, info);
        const { header, length } = parsed(encoded, version === 1 ? 'v1' : 'v2');
        assert.equal(length, encoded.length);
        assert.equal(header.version, version);
        assert.equal(header.command, 'PROXY');
        assert.equal(header.family, info.source.address.includes(':') ? 'tcp6' : 'tcp4');
        assert.equal(header.source?.port, info.source.port);
        assert.equal(header.destination?.port, info.destination.port);
        const canonical = (a: string): string =>
          parsed(encodeProxyHeader(1, { source: { address: a, port: 0 }, destination: { address: a, port: 0 } })).header
            .source!.address;
        assert.equal(header.source?.address, canonical(info.source.address));
        assert.equal(header.destination?.address, canonical(info.destination.address));
      }
    });
  }

  it('encodes "no addresses" as v1 UNKNOWN and v2 LOCAL', () => {
    assert.equal(encodeProxyHeader(1, null).toString('latin1'), 'PROXY UNKNOWN\r\n');
    assert.deepEqual(parsed(encodeProxyHeader(2, null)).header, { version: 2, command: 'LOCAL', family: 'unknown' });
  });

  it('encodes the exact v2 bytes for TCP4', () => {
    const encoded = encodeProxyHeader(2, {
      source: { address: '1.2.3.4', port: 0x1234 },
      destination: { address: '5.6.7.8', port: 443 },
    });
    assert.equal(encoded.toString('hex'), `${PROXY_V2_SIGNATURE.toString('hex')}2111000c0102030405060708123401bb`);
  });

  it('refuses mixed families and bad ports', () => {
    const bad = [
      { source: { address: '1.2.3.4', port: 1 }, destination: { address: '::1', port: 1 } },
      { source: { address: 'example.com', port: 1 }, destination: { address: 'example.com', port: 1 } },
      { source: { address: '1.2.3.4', port: 65536 }, destination: { address: '1.2.3.4', port: 1 } },
      { source: { address: '1.2.3.4', port: 1.5 }, destination: { address: '1.2.3.4', port: 1 } },
    ];
    for (const info of bad) assert.throws(() => encodeProxyHeader(2, info), ProxyProtocolError);
  });
});

describe('readProxyHeader', () => {
  it('assembles a header fed byte by byte and returns the following bytes exactly', async () => {
    for (const header of [
      encodeProxyHeader(1, {
        source: { address: '192.0.2.1', port: 5 },
        destination: { address: '192.0.2.2', port: 6 },
      }),
      encodeProxyHeader(2, {
        source: { address: '2001:db8::1', port: 5 },
        destination: { address: '2001:db8::2', port: 6 },
      }),
    ]) {
      const stream = new PassThrough();
      const body = Buffer.from(Array.from({ length: 300 }, (_, i) => i & 0xff));
      const input = Buffer.concat([header, body]);
      const reading = readProxyHeader(stream, 'any', { timeoutMs: 5000 });
      // Byte by byte up to the last header byte, then that byte together with data.
      for (let i = 0; i < header.length - 1; i++) {
        stream.write(input.subarray(i, i + 1));
        await new Promise((r) => setImmediate(r));
      }
      stream.write(input.subarray(header.length - 1, header.length + 7));
      stream.write(input.subarray(header.length + 7));
      const { header: got, rest } = await reading;
      assert.equal(got.source?.port, 5);
      assert.deepEqual(rest, body.subarray(0, 7));
      // Nothing the reader left behind may be lost, and it must not keep consuming.
      assert.equal(stream.listenerCount('data'), 0);
      assert.equal(stream.isPaused(), true);
      const after: Buffer[] = [];
      stream.on('data', (c: Buffer) => after.push(c));
      stream.resume();
      stream.end();
      await new Promise((r) => stream.on('end', r));
      assert.deepEqual(Buffer.concat([rest, ...after]), body);
    }
  });

  it('keeps the rest of a single chunk that carries header and data', async () => {
    const stream = new PassThrough();
    const reading = readProxyHeader(stream, 'v1', { timeoutMs: 5000 });
    stream.write(ascii('PROXY UNKNOWN\r\nhello'));
    const { header, rest } = await reading;
    assert.equal(header.family, 'unknown');
    assert.equal(rest.toString(), 'hello');
  });

  it('times out with ERR_PROXY_PROTOCOL_TIMEOUT and detaches', async () => {
    const stream = new PassThrough();
    stream.write(ascii('PROXY TCP4'));
    await assert.rejects(readProxyHeader(stream, 'any', { timeoutMs: 30 }), (error: unknown) => {
      return (
        error instanceof ProxyProtocolError &&
        error.code === 'ERR_PROXY_PROTOCOL_TIMEOUT' &&
        /30 ms/.test(error.message)
      );
    });
    assert.equal(stream.listenerCount('data'), 0);
    assert.equal(stream.listenerCount('end'), 0);
  });

  it('fails on malformed input, early end, stream errors and the byte bound', async () => {
    const malformed = new PassThrough();
    const reading = readProxyHeader(malformed, 'any', { timeoutMs: 5000 });
    malformed.write(ascii('HELLO'));
    await assert.rejects(reading, /must start with "PROXY "/);

    const ended = new PassThrough();
    const endReading = readProxyHeader(ended, 'any', { timeoutMs: 5000 });
    ended.end(ascii('PROXY TCP4 '));
    await assert.rejects(endReading, /ended after 11 bytes/);

    const failed = new PassThrough();
    const failReading = readProxyHeader(failed, 'any', { timeoutMs: 5000 });
    failed.destroy(new Error('reset by peer'));
    await assert.rejects(
      failReading,
      (e: unknown) => e instanceof ProxyProtocolError && /reset by peer/.test(e.message),
    );

    const bounded = new PassThrough();
    const boundReading = readProxyHeader(bounded, 'v1', { timeoutMs: 5000, maxBytes: 20 });
    bounded.write(ascii('PROXY TCP4 1.2.3.4 5.6.7.8'));
    await assert.rejects(boundReading, /within 20 bytes/);

    const gone = new PassThrough();
    gone.destroy();
    await assert.rejects(readProxyHeader(gone, 'any', { timeoutMs: 5000 }), ProxyProtocolError);
  });
});

describe('parseProxyHeader fuzz', () => {
  it('returns a result or throws ProxyProtocolError for 20k random, truncated and mutated inputs', () => {
    const prng = new Prng(0x5eed_0001);
    const seeds = [
      ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n'),
      ascii('PROXY TCP6 2001:db8::1 ::1 1 2\r\n'),
      ascii('PROXY UNKNOWN\r\n'),
      encodeProxyHeader(2, { source: { address: '1.2.3.4', port: 1 }, destination: { address: '5.6.7.8', port: 2 } }),
      encodeProxyHeader(2, { source: { address: '2001:db8::1', port: 1 }, destination: { address: '::1', port: 2 } }),
      encodeProxyHeader(2, null),
      v2(0x21, 0x11, Buffer.concat([Buffer.alloc(12, 9), tlv(1, ascii('h2')), tlv(0x20, Buffer.alloc(30, 1))])),
      v2(0x21, 0x31, Buffer.alloc(216, 0x41)),
    ];
    for (let i = 0; i < 20_000; i++) {
      const seed = prng.pick(seeds);
      const mode = prng.int(3);
      const input =
        mode === 0
          ? prng.bytes(prng.int(200))
          : mode === 1
            ? seed.subarray(0, prng.int(seed.length + 1))
            : prng.mutate(seed);
      if (mode === 0 && prng.int(2) === 0)
        input.set(prng.pick([PROXY_V2_SIGNATURE, ascii('PROXY ')]).subarray(0, input.length));
      for (const accept of ['v1', 'v2', 'any'] as const) {
        try {
          const result = parseProxyHeader(input, accept);
          if (result.kind === 'header') assert.ok(result.length > 0 && result.length <= input.length, `case ${i}`);
        } catch (error) {
          if (!(error instanceof ProxyProtocolError))
            throw new Error(`case ${i}: ${input.toString('hex')} threw ${String(error)}`, { cause: error });
        }
      }
    }
  });
});
