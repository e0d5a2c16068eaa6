import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  buildErrorResponse,
  buildFormErr,
  buildNxdomain,
  buildRefused,
  DnsFormatError,
  DnsRcode,
  DnsTcpFrameReader,
  DnsType,
  encodeDnsName,
  encodeTcpFrame,
  parseDnsHeader,
  parseDnsQuery,
  parseDnsResponse,
} from '../src/wire/dns-message.js';
import { Prng } from './helpers/prng.js';

// A deliberately separate, dumb encoder: the bytes `dig +noedns` would send, built by hand.
const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const u32 = (n: number): Buffer => Buffer.from([n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff]);
const name = (...labels: string[]): Buffer =>
  Buffer.concat([
    ...labels.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')])),
    Buffer.from([0]),
  ]);
const labels = (...parts: string[]): Buffer =>
  Buffer.concat(parts.map((l) => Buffer.concat([Buffer.from([l.length]), Buffer.from(l, 'latin1')])));
const pointer = (offset: number): Buffer => u16(0xc000 | offset);
const header = (o: { id?: number; flags?: number; qd?: number; an?: number; ns?: number; ar?: number } = {}): Buffer =>
  Buffer.concat([
    u16(o.id ?? 0xbeef),
    u16(o.flags ?? 0x0100),
    u16(o.qd ?? 1),
    u16(o.an ?? 0),
    u16(o.ns ?? 0),
    u16(o.ar ?? 0),
  ]);
const question = (qname: Buffer, type: number = DnsType.A, cls = 1): Buffer =>
  Buffer.concat([qname, u16(type), u16(cls)]);
const record = (owner: Buffer, type: number, ttl: number, rdata: Buffer): Buffer =>
  Buffer.concat([owner, u16(type), u16(1), u32(ttl), u16(rdata.length), rdata]);

function rejects(fn: () => unknown, pattern: RegExp): void {
  assert.throws(
    fn,
    (error: unknown) =>
      error instanceof DnsFormatError && error.code === 'ERR_DNS_FORMAT' && pattern.test(error.message),
  );
}

const exampleQuery = Buffer.concat([
  header({ id: 0x1234, flags: 0x0100 }),
  question(name('ExAmPlE', 'CoM'), DnsType.AAAA),
]);

describe('parseDnsQuery', () => {
  it('reads the header and the single question, keeping the case', () => {
    const { header: h, question: q } = parseDnsQuery(exampleQuery);
    assert.equal(h.id, 0x1234);
    assert.equal(h.qr, false);
    assert.equal(h.rd, true);
    assert.equal(h.opcode, 0);
    assert.deepEqual(q, { name: 'ExAmPlE.CoM', type: DnsType.AAAA, class: 1 });
  });

  it('ignores an EDNS OPT record in the additional section', () => {
    const opt = Buffer.concat([Buffer.from([0]), u16(DnsType.OPT), u16(1232), u32(0), u16(0)]);
    const q = parseDnsQuery(Buffer.concat([header({ ar: 1 }), question(name('a', 'example')), opt]));
    assert.equal(q.question.name, 'a.example');
    assert.equal(q.header.arcount, 1);
  });

  it('escapes label bytes that are not plain printable ASCII', () => {
    const q = parseDnsQuery(Buffer.concat([header(), question(name('a.b', 'x\\y', 'sp ace', '\u0000\u00ff'))]));
    assert.equal(q.question.name, 'a\\.b.x\\\\y.sp\\032ace.\\000\\255');
    assert.deepEqual(encodeDnsName(q.question.name), name('a.b', 'x\\y', 'sp ace', '\u0000\u00ff'));
  });

  it('reads the root name as "."', () => {
    assert.equal(parseDnsQuery(Buffer.concat([header(), question(Buffer.from([0]), DnsType.NS)])).question.name, '.');
  });

  it('requires exactly one question and a query', () => {
    rejects(() => parseDnsQuery(header({ qd: 0 })), /has 0 questions; exactly one is required/);
    rejects(
      () => parseDnsQuery(Buffer.concat([header({ qd: 2 }), question(name('a')), question(name('b'))])),
      /has 2 questions/,
    );
    rejects(
      () => parseDnsQuery(Buffer.concat([header({ flags: 0x8180 }), question(name('a'))])),
      /is a response, not a query/,
    );
  });

  it('rejects every truncation of a query', () => {
    for (let i = 0; i < exampleQuery.length; i++) {
      assert.throws(() => parseDnsQuery(exampleQuery.subarray(0, i)), DnsFormatError, `length ${i}`);
    }
    rejects(() => parseDnsQuery(Buffer.alloc(5)), /shorter than the 12-byte header/);
    rejects(
      () => parseDnsQuery(exampleQuery.subarray(0, exampleQuery.length - 2)),
      /question for ExAmPlE\.CoM is truncated/,
    );
    rejects(() => parseDnsHeader(Buffer.alloc(65536)), /exceeds 65535/);
  });
});

describe('DNS names with compression', () => {
  // Offsets: the question name starts at 12.
  const qname = name('www', 'example', 'com');
  const q = question(qname);
  const answerStart = 12 + q.length;
  const cnameRdata = Buffer.concat([labels('cdn'), pointer(16)]); // cdn.example.com
  const cnameRecord = record(pointer(12), DnsType.CNAME, 300, cnameRdata);
  const cnameTarget = answerStart + 2 + 10; // where the CNAME rdata (cdn...) starts
  const response = Buffer.concat([
    header({ flags: 0x8180, an: 3 }),
    q,
    cnameRecord,
    record(pointer(cnameTarget), DnsType.A, 0x80000000, Buffer.from([93, 184, 216, 34])),
    record(pointer(cnameTarget), DnsType.AAAA, 60, Buffer.from('20010db8000000000000000000000001', 'hex')),
  ]);

  it('follows pointers in owner names and CNAME targets', () => {
    const parsed = parseDnsResponse(response);
    assert.equal(parsed.header.qr, true);
    assert.equal(parsed.header.ra, true);
    assert.deepEqual(parsed.questions, [{ name: 'www.example.com', type: DnsType.A, class: 1 }]);
    assert.deepEqual(parsed.answers, [
      { name: 'www.example.com', type: DnsType.CNAME, class: 1, ttl: 300, data: 'cdn.example.com' },
      { name: 'cdn.example.com', type: DnsType.A, class: 1, ttl: 0, data: '93.184.216.34' },
      { name: 'cdn.example.com', type: DnsType.AAAA, class: 1, ttl: 60, data: '2001:db8::1' },
    ]);
  });

  it('returns other record types without data', () => {
    const mx = parseDnsResponse(
      Buffer.concat([
        header({ flags: 0x8180, an: 1 }),
        q,
        record(pointer(12), DnsType.MX, 5, Buffer.concat([u16(10), pointer(12)])),
      ]),
    );
    assert.deepEqual(mx.answers, [{ name: 'www.example.com', type: DnsType.MX, class: 1, ttl: 5 }]);
  });

  it('rejects every truncation of a response', () => {
    for (let i = 0; i < response.length; i++)
      assert.throws(() => parseDnsResponse(response.subarray(0, i)), DnsFormatError, `length ${i}`);
  });

  it('rejects pointer loops, forward pointers and pointers into the header', () => {
    rejects(() => parseDnsQuery(Buffer.concat([header(), question(pointer(12))])), /does not point backwards/);
    // 12: "a" then a pointer to 17; 17: a pointer back to 12 -- a two-step loop.
    const pingPong = Buffer.concat([header(), labels('a'), pointer(17), pointer(12), u16(1), u16(1)]);
    rejects(() => parseDnsQuery(pingPong), /does not point backwards \(to 17\)/);
    rejects(() => parseDnsQuery(Buffer.concat([header(), question(pointer(3))])), /points into the header/);
    // A name that continues with a pointer to its own start: "b.b.b..." forever.
    const selfSuffix = Buffer.concat([
      header({ flags: 0x8180, an: 1 }),
      question(name('a')),
      record(Buffer.concat([labels('b'), pointer(19)]), 1, 1, Buffer.alloc(4)),
    ]);
    rejects(() => parseDnsResponse(selfSuffix), /pointer at offset 21 does not point backwards \(to 19\)/);
  });

  it('bounds names at 255 bytes, even when built from a pointer chain', () => {
    rejects(
      () => parseDnsQuery(Buffer.concat([header(), question(name(...Array<string>(5).fill('x'.repeat(63))))])),
      /longer than 255 bytes/,
    );
    // Question i is a 37-byte label plus a pointer to question i-1: each one 38 bytes longer.
    const questions = [question(name('z'))];
    let start = 12;
    for (let i = 1; i < 10; i++) {
      questions.push(question(Buffer.concat([labels('y'.repeat(37)), pointer(start)])));
      start += questions[i - 1]!.length;
    }
    const chain = Buffer.concat([header({ flags: 0x8180, qd: questions.length }), ...questions]);
    rejects(() => parseDnsResponse(chain), /longer than 255 bytes/);
    const ok = Buffer.concat([header({ flags: 0x8180, qd: 6 }), ...questions.slice(0, 6)]);
    assert.equal(parseDnsResponse(ok).questions[5]!.name.length, 5 * 38 + 1);
  });

  it('rejects extended label types and bad address lengths', () => {
    rejects(
      () => parseDnsQuery(Buffer.concat([header(), Buffer.from([0x41, 0x00, 0x00]), u16(1), u16(1)])),
      /unsupported label type 0x40/,
    );
    rejects(
      () => parseDnsQuery(Buffer.concat([header(), Buffer.from([0x81, 0x00, 0x00]), u16(1), u16(1)])),
      /unsupported label type 0x80/,
    );
    const badA = Buffer.concat([
      header({ flags: 0x8180, an: 1 }),
      q,
      record(pointer(12), DnsType.A, 1, Buffer.alloc(5)),
    ]);
    rejects(() => parseDnsResponse(badA), /A record for www\.example\.com has 5 data bytes, not 4/);
    const longCname = Buffer.concat([
      header({ flags: 0x8180, an: 1 }),
      q,
      record(pointer(12), DnsType.CNAME, 1, Buffer.concat([pointer(12), Buffer.from([0])])),
    ]);
    rejects(() => parseDnsResponse(longCname), /bytes after its target name/);
    const overrun = Buffer.concat([
      header({ flags: 0x8180, an: 1 }),
      q,
      pointer(12),
      u16(1),
      u16(1),
      u32(1),
      u16(50),
      Buffer.alloc(4),
    ]);
    rejects(() => parseDnsResponse(overrun), /runs past the end/);
    const cnameEscapesRdata = Buffer.concat([
      header({ flags: 0x8180, an: 1 }),
      q,
      pointer(12),
      u16(DnsType.CNAME),
      u16(1),
      u32(1),
      u16(2),
      labels('abc'),
      Buffer.from([0]),
    ]);
    rejects(() => parseDnsResponse(cnameEscapesRdata), /truncated/);
  });
});

describe('responses built for a query', () => {
  it('REFUSED and NXDOMAIN echo ID, RD and the question with QR=1, RA=1', () => {
    const query = parseDnsQuery(exampleQuery);
    const refused = buildRefused(query);
    assert.deepEqual(
      refused,
      Buffer.concat([
        u16(0x1234),
        u16(0x8185),
        u16(1),
        u16(0),
        u16(0),
        u16(0),
        question(name('ExAmPlE', 'CoM'), DnsType.AAAA),
      ]),
    );
    const parsed = parseDnsResponse(refused);
    assert.equal(parsed.header.rcode, DnsRcode.REFUSED);
    assert.deepEqual(parsed.questions, [query.question]);

    const noRecursion = parseDnsQuery(Buffer.concat([header({ id: 7, flags: 0x0010 }), question(name('a', 'b'))]));
    const nx = parseDnsHeader(buildNxdomain(noRecursion));
    assert.deepEqual(
      [nx.id, nx.qr, nx.rd, nx.ra, nx.cd, nx.aa, nx.tc, nx.rcode, nx.qdcount, nx.ancount],
      [7, true, false, true, true, false, false, DnsRcode.NXDOMAIN, 1, 0],
    );
    assert.equal(parseDnsHeader(buildErrorResponse(noRecursion, DnsRcode.SERVFAIL)).rcode, 2);
  });

  it('FORMERR echoes the ID without a question, and stays silent when it cannot or must not answer', () => {
    const garbage = Buffer.concat([header({ id: 0x4242, flags: 0x0100, qd: 3 }), Buffer.from([0xff])]);
    assert.deepEqual(buildFormErr(garbage), Buffer.concat([u16(0x4242), u16(0x8181), u16(0), u16(0), u16(0), u16(0)]));
    assert.equal(buildFormErr(Buffer.alloc(11)), undefined);
    assert.equal(buildFormErr(Buffer.concat([header({ flags: 0x8180 })])), undefined);
  });
});

describe('encodeDnsName', () => {
  it('encodes plain, trailing-dot, root and escaped names', () => {
    assert.deepEqual(encodeDnsName('example.com'), name('example', 'com'));
    assert.deepEqual(encodeDnsName('example.com.'), name('example', 'com'));
    assert.deepEqual(encodeDnsName('.'), Buffer.from([0]));
    assert.deepEqual(encodeDnsName('a\\.'), name('a.'));
    assert.deepEqual(encodeDnsName('\\065b'), name('Ab'));
  });

  it('rejects names it cannot encode', () => {
    rejects(() => encodeDnsName('a..b'), /empty or over-long label/);
    rejects(() => encodeDnsName(`${'a'.repeat(64)}.com`), /empty or over-long label/);
    rejects(() => encodeDnsName(Array<string>(5).fill('a'.repeat(63)).join('.')), /longer than 255 bytes/);
    rejects(() => encodeDnsName('ü.com'), /not ASCII/);
    rejects(() => encodeDnsName('a\\'), /lone backslash/);
  });
});

describe('DNS over TCP framing', () => {
  it('frames and reassembles messages split and joined arbitrarily', () => {
    const a = exampleQuery;
    const b = Buffer.concat([header({ id: 2 }), question(name('b'))]);
    const stream = Buffer.concat([encodeTcpFrame(a), encodeTcpFrame(b), encodeTcpFrame(a)]);
    const reader = new DnsTcpFrameReader();
    const got: Buffer[] = [];
    for (let i = 0; i < stream.length; i++) got.push(...reader.push(stream.subarray(i, i + 1)));
    assert.deepEqual(got, [a, b, a]);
    assert.equal(reader.buffered, 0);
    const whole = new DnsTcpFrameReader();
    assert.deepEqual(whole.push(Buffer.concat([stream, stream.subarray(0, 5)])), [a, b, a]);
    assert.equal(whole.buffered, 5);
  });

  it('rejects frames outside the bounds', () => {
    rejects(() => new DnsTcpFrameReader(512).push(u16(513)), /declares 513 bytes; allowed is 12\.\.512/);
    rejects(() => new DnsTcpFrameReader().push(u16(3)), /declares 3 bytes/);
    rejects(() => encodeTcpFrame(Buffer.alloc(65536)), /too long for TCP framing/);
    assert.throws(() => new DnsTcpFrameReader(70000), RangeError);
  });
});

describe('DNS parser fuzz', () => {
  it('returns results or DnsFormatError for 20k random, truncated and mutated messages', () => {
    const prng = new Prng(0x5eed_0003);
    const seeds = [
      exampleQuery,
      Buffer.concat([
        header({ flags: 0x8180, an: 2 }),
        question(name('www', 'example', 'com')),
        record(pointer(12), DnsType.CNAME, 1, Buffer.concat([labels('cdn'), pointer(16)])),
        record(pointer(33 + 12), DnsType.A, 9, Buffer.from([1, 2, 3, 4])),
      ]),
      Buffer.concat([
        header({ flags: 0x8180, an: 1 }),
        question(name('a')),
        record(pointer(12), DnsType.AAAA, 9, Buffer.alloc(16, 1)),
      ]),
    ];
    for (let i = 0; i < 20_000; i++) {
      const mode = prng.int(3);
      const seed = prng.pick(seeds);
      const input =
        mode === 0
          ? Buffer.concat([header({ qd: prng.int(3), an: prng.int(4) }), prng.bytes(prng.int(80))])
          : mode === 1
            ? seed.subarray(0, prng.int(seed.length + 1))
            : prng.mutate(seed);
      for (const parse of [parseDnsQuery, parseDnsResponse]) {
        try {
          const result = parse(input);
          if ('question' in result) {
            // Whatever parsed must answer cleanly and echo the exact question bytes.
            const answer = parseDnsResponse(buildRefused(result));
            assert.deepEqual(answer.questions, [result.question], `case ${i}`);
          }
        } catch (error) {
          if (!(error instanceof DnsFormatError))
            throw new Error(`case ${i}: ${input.toString('hex')} threw ${String(error)}`, { cause: error });
        }
      }
      buildFormErr(input);
      try {
        new DnsTcpFrameReader().push(input);
      } catch (error) {
        if (!(error instanceof DnsFormatError)) throw error;
      }
    }
  });
});
