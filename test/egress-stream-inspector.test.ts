/**
 * The shared inspection (stream-inspector.ts) and its driver (inspection-gate.ts), on crafted
 * bytes: what is forwarded, when, and what is refused. The judge allows allowed.test (and no
 * host at all), like the policy would for an IP resolved for allowed.test only.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { InspectionGate } from '../src/egress/inspection-gate.js';
import { Prng } from './helpers/prng.js';
import {
  StreamInspector,
  type InspectionRefusal,
  type Sighting,
  type Verdict,
} from '../src/egress/stream-inspector.js';

const u16 = (n: number): Buffer => Buffer.from([n >> 8, n & 0xff]);
const vec16 = (...parts: Buffer[]): Buffer => Buffer.concat([u16(Buffer.concat(parts).length), ...parts]);
const ext = (type: number, data: Buffer): Buffer => Buffer.concat([u16(type), vec16(data)]);
const sni = (name: string): Buffer =>
  ext(0, vec16(Buffer.concat([Buffer.from([0]), vec16(Buffer.from(name, 'latin1'))])));

/** A ClientHello handshake message (no record header) around the given extensions. */
function handshake(extensions: Buffer): Buffer {
  const message = Buffer.concat([
    Buffer.from([3, 3]),
    Buffer.alloc(32, 7),
    Buffer.from([0]),
    vec16(Buffer.from([0x13, 0x01])),
    Buffer.from([1, 0]),
    vec16(extensions),
  ]);
  return Buffer.concat([
    Buffer.from([1, message.length >> 16, (message.length >> 8) & 0xff, message.length & 0xff]),
    message,
  ]);
}

/** The handshake message cut into records of at most `size` bytes, with record version 3.minor. */
function records(message: Buffer, size = 16384, minor = 1): Buffer {
  const out: Buffer[] = [];
  for (let offset = 0; offset < message.length; offset += size) {
    const fragment = message.subarray(offset, offset + size);
    out.push(Buffer.from([0x16, 0x03, minor]), u16(fragment.length), fragment);
  }
  return Buffer.concat(out);
}

const hello = (name: string, options: { size?: number; minor?: number; extra?: Buffer } = {}) =>
  records(handshake(Buffer.concat([sni(name), options.extra ?? Buffer.alloc(0)])), options.size, options.minor);

const judged: Sighting[] = [];
function judge(sighting: Sighting): Verdict {
  judged.push(sighting);
  if (sighting.hostname === undefined || sighting.hostname === 'allowed.test')
    return { allowed: true, reason: 'hostname', name: 'allowed.test' };
  return { allowed: false, reason: 'hostname-denied', name: sighting.hostname };
}

/** Feed `chunks` one by one (then the end, if asked); what was forwarded and the refusal, if any. */
function inspect(
  chunks: Array<Buffer | string>,
  options: { port?: number; allowEch?: boolean; end?: boolean } = {},
): { forwarded: string; refusal?: InspectionRefusal; holding: boolean } {
  const inspector = new StreamInspector({ port: options.port ?? 80, allowEch: options.allowEch ?? false, judge });
  const forwarded: Buffer[] = [];
  for (const chunk of chunks) {
    const step = inspector.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk, 'latin1'));
    forwarded.push(...step.forward);
    if (step.refusal)
      return {
        forwarded: Buffer.concat(forwarded).toString('latin1'),
        refusal: step.refusal,
        holding: inspector.holding,
      };
  }
  if (options.end) {
    const step = inspector.end();
    forwarded.push(...step.forward);
    if (step.refusal)
      return {
        forwarded: Buffer.concat(forwarded).toString('latin1'),
        refusal: step.refusal,
        holding: inspector.holding,
      };
  }
  return { forwarded: Buffer.concat(forwarded).toString('latin1'), holding: inspector.holding };
}

const GET = (host: string, extra = '') => `GET / HTTP/1.1\r\nHost: ${host}\r\n${extra}\r\n`;

describe('stream inspector: TLS', () => {
  it('holds a ClientHello until its last byte, then forwards it whole', () => {
    const data = hello('allowed.test');
    for (let cut = 1; cut < data.length; cut++) {
      const first = inspect([data.subarray(0, cut)], { port: 443 });
      assert.equal(first.forwarded, '', `nothing forwarded after ${cut} bytes`);
      assert.equal(first.holding, true);
    }
    const bytes = [...data].map((byte) => Buffer.from([byte]));
    assert.equal(inspect(bytes, { port: 443 }).forwarded, data.toString('latin1'));
  });

  it('reassembles a ClientHello split over records and segments, and judges its SNI once', () => {
    judged.length = 0;
    const data = hello('cdn-denied.test', { size: 7 });
    const result = inspect([data.subarray(0, 3), data.subarray(3, 50), data.subarray(50)], { port: 443 });
    assert.equal(result.forwarded, '');
    assert.equal(result.refusal?.reason, 'hostname-denied');
    assert.deepEqual(judged, [{ protocol: 'tls', hostname: 'cdn-denied.test' }]);
    assert.equal(inspect([hello('allowed.test', { size: 16 })], { port: 443 }).refusal, undefined);
  });

  it('reads a record of any minor version (0x0305, 0x03ff) as TLS', () => {
    for (const minor of [0x05, 0xff]) {
      const result = inspect([hello('cdn-denied.test', { minor })], { port: 443 });
      assert.deepEqual(result.refusal?.sighting, { protocol: 'tls', hostname: 'cdn-denied.test' }, `minor ${minor}`);
    }
  });

  it('refuses encrypted_client_hello unless allowed', () => {
    const data = hello('allowed.test', { extra: ext(0xfe0d, Buffer.from([0, 1, 2])) });
    assert.equal(inspect([data], { port: 443 }).refusal?.reason, 'encrypted-client-hello');
    assert.equal(inspect([data], { port: 443, allowEch: true }).forwarded, data.toString('latin1'));
  });

  it('refuses what a parser cannot trust, without holding more than the bounds', () => {
    assert.equal(
      inspect([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x00])], { port: 443 }).refusal?.reason,
      'unreadable-first-bytes',
      'empty record',
    );
    // A record header promising a 16 MiB ClientHello is refused on its first 9 bytes, not buffered.
    assert.match(
      inspect([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x04, 0x01, 0xff, 0xff, 0xff])], { port: 443 }).refusal?.problem ??
        '',
      /exceeds 16384/,
    );
    assert.match(
      inspect([Buffer.from([0x16, 0x03, 0x01, 0xff, 0xff])], { port: 443 }).refusal?.problem ?? '',
      /exceeds 16384/,
    );
    assert.match(
      inspect([records(handshake(sni('allowed.test')), 1).subarray(0, 5 * 40)], { port: 443 }).refusal?.problem ?? '',
      /more than 32 records/,
    );
    // Two SNI extensions, or one with a name of another type.
    assert.equal(
      inspect([records(handshake(Buffer.concat([sni('allowed.test'), sni('cdn-denied.test')])))], { port: 443 }).refusal
        ?.reason,
      'unreadable-first-bytes',
    );
    const otherType = ext(0, vec16(Buffer.concat([Buffer.from([1]), vec16(Buffer.from('cdn-denied.test'))])));
    assert.equal(inspect([records(handshake(otherType))], { port: 443 }).refusal?.reason, 'unreadable-first-bytes');
    // The app ends inside its ClientHello.
    assert.equal(
      inspect([hello('allowed.test').subarray(0, 20)], { port: 443, end: true }).refusal?.reason,
      'unreadable-first-bytes',
    );
  });

  it('passes the encrypted rest of an allowed connection unread', () => {
    const data = Buffer.concat([hello('allowed.test'), Buffer.from('\x17\x03\x03\x00\x05GET /')]);
    const result = inspect([data, 'Host: cdn-denied.test\r\n\r\n'], { port: 443 });
    assert.equal(result.refusal, undefined);
    assert.equal(result.forwarded, `${data.toString('latin1')}Host: cdn-denied.test\r\n\r\n`);
  });
});

describe('stream inspector: HTTP', () => {
  it('skips empty lines before the request line', () => {
    assert.equal(inspect([`\r\n\r\n${GET('cdn-denied.test')}`]).refusal?.reason, 'hostname-denied');
    assert.equal(inspect([`\n${GET('cdn-denied.test')}`]).refusal?.reason, 'hostname-denied');
    assert.equal(inspect([`\r\n${GET('allowed.test')}`]).forwarded, `\r\n${GET('allowed.test')}`);
  });

  it('judges every request on a keep-alive connection: pipelined, or later', () => {
    const pipelined = inspect([GET('allowed.test') + GET('cdn-denied.test')]);
    assert.equal(pipelined.forwarded, GET('allowed.test'), 'the first request goes, the second does not');
    assert.deepEqual(pipelined.refusal?.sighting, { protocol: 'http', hostname: 'cdn-denied.test' });
    const later = inspect([GET('allowed.test'), GET('allowed.test'), GET('cdn-denied.test')]);
    assert.equal(later.forwarded, GET('allowed.test').repeat(2));
    assert.equal(later.refusal?.reason, 'hostname-denied');
  });

  it('steps over Content-Length and chunked bodies to find the next head', () => {
    const smuggled = GET('cdn-denied.test');
    const withLength = `POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: ${smuggled.length}\r\n\r\n${smuggled}`;
    assert.deepEqual(inspect([withLength, GET('allowed.test')]), {
      forwarded: withLength + GET('allowed.test'),
      holding: false,
    });
    assert.equal(inspect([withLength + GET('cdn-denied.test')]).refusal?.reason, 'hostname-denied');

    const chunked = `POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n${smuggled.length.toString(16)};ext=1\r\n${smuggled}\r\n0\r\nX-Trailer: y\r\n\r\n`;
    const bytes = [...Buffer.from(chunked + GET('allowed.test'))].map((byte) => Buffer.from([byte]));
    assert.deepEqual(inspect(bytes), { forwarded: chunked + GET('allowed.test'), holding: false }, 'byte by byte');
    assert.equal(inspect([chunked + GET('cdn-denied.test')]).refusal?.reason, 'hostname-denied');
    assert.equal(
      inspect([`${chunked.slice(0, chunked.indexOf('\r\n\r\n') + 4)}5\r\nabcdeXX`]).refusal?.reason,
      'unreadable-request',
      'chunk not followed by CRLF',
    );
    assert.equal(
      inspect([`${chunked.slice(0, chunked.indexOf('\r\n\r\n') + 4)}${'1'.repeat(2000)}`]).refusal?.reason,
      'unreadable-request',
      'chunk line too long',
    );
  });

  it('refuses ambiguous framing and heads: TE with CL, two CLs, other codings, duplicate Host, absolute-form disagreement, obs-fold', () => {
    for (const text of [
      'POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: gzip, chunked\r\n\r\n',
      'POST / HTTP/1.1\r\nHost: allowed.test\r\nContent-Length: -1\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: allowed.test\r\nHost: cdn-denied.test\r\n\r\n',
      'GET http://cdn-denied.test/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n',
      'GET / HTTP/1.1\r\nHost: allowed.test\r\nX: y\r\n cdn-denied.test\r\n\r\n',
    ]) {
      assert.equal(inspect([text]).refusal?.reason, 'unreadable-first-bytes', text);
      assert.equal(inspect([GET('allowed.test') + text]).refusal?.reason, 'unreadable-request', `second: ${text}`);
    }
    assert.equal(
      inspect(['GET http://cdn-denied.test/ HTTP/1.1\r\n\r\n']).refusal?.reason,
      'hostname-denied',
      'absolute-form names the host',
    );
    assert.match(inspect([`GET / HTTP/1.1\r\nX: ${'a'.repeat(9000)}`]).refusal?.problem ?? '', /exceeds 8192 bytes/);
    assert.match(inspect(['\r\n'.repeat(5000)]).refusal?.problem ?? '', /empty lines/);
  });

  it('refuses Upgrade and HTTP/2 in the clear; inspects a CONNECT tunnel from the start', () => {
    assert.equal(
      inspect([GET('allowed.test', 'Upgrade: websocket\r\nConnection: Upgrade\r\n')]).refusal?.reason,
      'http-upgrade',
    );
    assert.equal(inspect(['PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n']).refusal?.reason, 'unreadable-first-bytes');
    assert.equal(inspect(['CONNECT cdn-denied.test:443 HTTP/1.1\r\n\r\n']).refusal?.reason, 'hostname-denied');
    const connect = 'CONNECT allowed.test:443 HTTP/1.1\r\nHost: allowed.test:443\r\n\r\n';
    assert.equal(inspect([connect, hello('cdn-denied.test')]).refusal?.reason, 'hostname-denied', 'the tunnelled SNI');
    assert.equal(inspect([connect, GET('cdn-denied.test')]).refusal?.reason, 'hostname-denied', 'the tunnelled Host');
    assert.equal(
      inspect([connect, Buffer.from([0, 1, 2])]).refusal?.reason,
      'not-tls-or-http',
      'opaque bytes inside a tunnel on port 80',
    );
  });
});

describe('stream inspector: other protocols', () => {
  it('refuses bytes that are neither TLS nor HTTP where TLS or HTTP is expected', () => {
    for (const port of [80, 443, 8080, 8443]) {
      assert.equal(inspect([Buffer.from([0x16, 0x02, 0x01])], { port }).refusal?.reason, 'not-tls-or-http');
      assert.equal(inspect(['SSH-2.0-x\r\n'], { port }).refusal?.reason, 'not-tls-or-http');
    }
  });

  it('lets other protocols pass on other ports, judged without a host', () => {
    judged.length = 0;
    assert.deepEqual(inspect(['HELO app\r\nQUIT\r\n'], { port: 25 }), {
      forwarded: 'HELO app\r\nQUIT\r\n',
      holding: false,
    });
    assert.deepEqual(
      inspect([Buffer.from([0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f])], { port: 5432 }).holding,
      false,
      'binary is decided on its first byte',
    );
    assert.deepEqual(
      inspect(['QUIT'], { port: 25, end: true }).forwarded,
      'QUIT',
      'a last word without newline, at the end',
    );
    assert.equal(inspect(['QUIT'], { port: 25 }).holding, true, 'held while it could still become a request line');
    assert.deepEqual(
      inspect(['through the relay'], { port: 9000 }),
      { forwarded: 'through the relay', holding: false },
      'decided once it cannot be a request line',
    );
    assert.deepEqual(judged, [
      { protocol: 'other' },
      { protocol: 'other' },
      { protocol: 'other' },
      { protocol: 'other' },
    ]);
  });

  it('reads anything a lenient server could take for a request line as HTTP, strictly', () => {
    for (const text of [
      'GET http://cdn-denied.test/\r\n',
      'GET /\r\n',
      'get / HTTP/1.1\r\nHost: cdn-denied.test\r\n\r\n',
      'M-SEARCH / HTTP/1.1\r\nHost: cdn-denied.test\r\n\r\n',
      'GET\t/ HTTP/1.1\r\nHost: cdn-denied.test\r\n\r\n',
      'GET  /  HTTP/1.1\r\nHost: cdn-denied.test\r\n\r\n',
      '\r\nGET / HTTP/1.1\r\nHost: cdn-denied.test\r\n\r\n',
    ]) {
      assert.ok(inspect([text], { port: 8000 }).refusal, text);
    }
  });
});

describe('stream inspector on random input', () => {
  it('forwards only a prefix of what it was given, and never throws, over 5k mutated streams', () => {
    const prng = new Prng(12);
    const seeds = [
      hello('allowed.test'),
      Buffer.from(GET('allowed.test') + GET('allowed.test')),
      Buffer.from('POST / HTTP/1.1\r\nHost: allowed.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n'),
    ];
    for (let round = 0; round < 5000; round++) {
      const input = Buffer.from(seeds[round % seeds.length]!);
      for (let flips = prng.int(4); flips > 0; flips--) input[prng.int(input.length)] = prng.int(256);
      const chunks: Buffer[] = [];
      for (let offset = 0; offset < input.length;) {
        const size = 1 + prng.int(64);
        chunks.push(input.subarray(offset, offset + size));
        offset += size;
      }
      const result = inspect(chunks, { port: round % 2 === 0 ? 443 : 9000, end: true });
      assert.ok(input.toString('latin1').startsWith(result.forwarded), `round ${round}`);
    }
  });
});

describe('inspection gate', () => {
  const gate = (options: { peekMs?: number; inspectTimeoutMs?: number; port?: number } = {}) => {
    const source = new PassThrough();
    const refusals: InspectionRefusal[] = [];
    const inspected = new InspectionGate(source, {
      port: options.port ?? 443,
      allowEch: false,
      judge,
      inspectTimeoutMs: options.inspectTimeoutMs ?? 5000,
      onRefusal: (refusal) => refusals.push(refusal),
    });
    inspected.on('error', () => {});
    return { source, inspected, refusals };
  };

  it("decides 'none' when nothing comes within the peek window, and still inspects what comes later", async () => {
    const { source, inspected, refusals } = gate();
    assert.deepEqual(await inspected.firstDecision(50), { kind: 'none' });
    const forwarded: Buffer[] = [];
    inspected.on('data', (chunk: Buffer) => forwarded.push(chunk));
    const data = hello('allowed.test');
    source.write(data.subarray(0, 10));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(forwarded.length, 0, 'a partial ClientHello is held');
    source.write(data.subarray(10));
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.deepEqual(Buffer.concat(forwarded), data);
    source.write(GET('cdn-denied.test'));
    assert.equal(refusals.length, 0, 'the rest of an allowed TLS connection is opaque');
  });

  it('refuses a late ClientHello naming a denied host, forwarding nothing', async () => {
    const { source, inspected, refusals } = gate();
    assert.deepEqual(await inspected.firstDecision(20), { kind: 'none' });
    const forwarded: Buffer[] = [];
    inspected.on('data', (chunk: Buffer) => forwarded.push(chunk));
    const closed = new Promise((resolve) => inspected.once('close', resolve));
    source.write(hello('cdn-denied.test'));
    await closed;
    assert.equal(forwarded.length, 0);
    assert.deepEqual(
      refusals.map((refusal) => refusal.reason),
      ['hostname-denied'],
    );
  });

  it('gives the first verdict to a caller waiting for it', async () => {
    const { source, inspected } = gate({ port: 80 });
    const decided = inspected.firstDecision(1000);
    source.write(GET('allowed.test'));
    assert.deepEqual(await decided, {
      kind: 'decided',
      sighting: { protocol: 'http', hostname: 'allowed.test' },
      verdict: { allowed: true, reason: 'hostname', name: 'allowed.test' },
    });
  });

  it('refuses bytes trickled past the inspection timeout', async () => {
    const { source, inspected, refusals } = gate({ inspectTimeoutMs: 200 });
    const decision = inspected.firstDecision(20);
    const data = hello('allowed.test');
    let sent = 0;
    const timer = setInterval(() => {
      if (sent < data.length && !source.destroyed) source.write(data.subarray(sent, ++sent));
    }, 10);
    assert.deepEqual(await decision, { kind: 'closed' });
    clearInterval(timer);
    assert.deepEqual(
      refusals.map((refusal) => refusal.reason),
      ['inspection-timeout'],
    );
    assert.ok(sent < data.length, 'refused before the trickle finished');
  });
});
