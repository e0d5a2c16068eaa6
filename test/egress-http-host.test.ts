import assert from 'node:assert/strict';
import { request } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { describe, it } from 'node:test';
import { HttpHostError, parseHttpHost, type HttpHostResult } from '../src/egress/http-host.js';
import { Prng } from './helpers/prng.js';

const head = (text: string): Buffer => Buffer.from(text, 'latin1');

function request_(text: string): Omit<Extract<HttpHostResult, { kind: 'http-request' }>, 'kind'> {
  const result = parseHttpHost(head(text));
  assert.equal(result.kind, 'http-request', text);
  const { kind: _kind, ...rest } = result as Extract<HttpHostResult, { kind: 'http-request' }>;
  return rest;
}

function rejects(text: string, pattern: RegExp): void {
  assert.throws(
    () => parseHttpHost(head(text)),
    (e: unknown) => e instanceof HttpHostError && e.code === 'ERR_HTTP_HOST' && pattern.test(e.message),
    text,
  );
}

describe('parseHttpHost', () => {
  it('reads the Host header case-insensitively and strips the port', () => {
    const text = 'GET /index.html HTTP/1.1\r\nUser-Agent: t\r\nhOsT:   Example.COM:8080  \r\n\r\nbody';
    assert.deepEqual(request_(text), {
      method: 'GET',
      target: '/index.html',
      version: '1.1',
      host: 'Example.COM',
      port: 8080,
      headLength: text.length - 4,
    });
    assert.deepEqual(request_('GET / HTTP/1.1\r\nHost: example.com\r\n\r\n').host, 'example.com');
    assert.equal(request_('GET / HTTP/1.1\r\nHost: example.com\r\n\r\n').port, undefined);
    const v6 = 'GET / HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n';
    assert.deepEqual(request_(v6), {
      method: 'GET',
      target: '/',
      version: '1.1',
      host: '2001:db8::1',
      port: 443,
      headLength: v6.length,
    });
    assert.equal(request_('OPTIONS * HTTP/1.1\r\nHost: 10.0.0.1:\r\n\r\n').host, '10.0.0.1');
  });

  it('does not look into a body that arrives with the head', () => {
    const text = 'POST /upload HTTP/1.1\r\nHost: a.example\r\nContent-Length: 4\r\n\r\n\n\u0000\r\u00ff';
    assert.equal(request_(text).headLength, text.length - 4);
  });

  it('allows HTTP/1.0 without Host', () => {
    assert.deepEqual(request_('GET / HTTP/1.0\r\n\r\n'), {
      method: 'GET',
      target: '/',
      version: '1.0',
      headLength: 18,
    });
  });

  it('takes the host of absolute-form and CONNECT targets', () => {
    const proxied = 'GET http://api.example.com:81/x?y HTTP/1.1\r\nHost: API.example.com\r\n\r\n';
    assert.deepEqual(request_(proxied), {
      method: 'GET',
      target: 'http://api.example.com:81/x?y',
      version: '1.1',
      host: 'api.example.com',
      port: 81,
      headLength: proxied.length,
    });
    assert.equal(request_('GET HTTPS://[::1]/ HTTP/1.1\r\n\r\n').host, '::1');
    assert.deepEqual(request_('CONNECT api.example.com:443 HTTP/1.1\r\nHost: api.example.com:443\r\n\r\n').port, 443);
    assert.equal(request_('CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n').host, '2001:db8::1');
  });

  it('tells incomplete from not-http from the first bytes', () => {
    for (const text of ['', 'G', 'GET', 'GET ', 'GET / HTTP/1.1\r\n', 'GET / HTTP/1.1\r\nHost: a\r\n\r'])
      assert.deepEqual(parseHttpHost(head(text)), { kind: 'incomplete' }, JSON.stringify(text));
    for (const data of [
      head('get / HTTP/1.1'),
      head(' GET /'),
      head('ABCDEFGHIJKLMNOPQ'),
      Buffer.from([0x16, 0x03, 0x01]),
      head('SSH-2.0-x'),
    ]) {
      assert.deepEqual(parseHttpHost(data), { kind: 'not-http' }, data.toString('latin1'));
    }
  });

  it('rejects ambiguous or malformed heads with a message naming the problem', () => {
    rejects('GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n', /more than one Host header/);
    rejects('GET / HTTP/1.1\r\nHost: a.example\r\nhost: a.example\r\n\r\n', /more than one Host header/);
    rejects('GET / HTTP/1.1\r\nHost : a.example\r\n\r\n', /no valid field name/);
    rejects('GET / HTTP/1.1\r\nX: y\r\n  folded\r\n\r\n', /obs-fold/);
    rejects('GET / HTTP/1.1\nHost: a\n\n', /bare LF at offset 14/);
    rejects('GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n', /bare CR/);
    rejects('GET / HTTP/1.1\r\nHost: a\u0000\r\n\r\n', /NUL byte/);
    rejects('GET / HTTP/1.1\r\nHost: user@a.example\r\n\r\n', /Host header "user@a.example" is not a host name/);
    rejects('GET / HTTP/1.1\r\nHost: a.example:99999\r\n\r\n', /port "99999", not 1\.\.65535/);
    rejects('GET / HTTP/1.1\r\nHost: a.example:0\r\n\r\n', /port "0"/);
    rejects('GET / HTTP/1.1\r\nHost:\r\n\r\n', /Host header "" is not a host name/);
    rejects('GET / HTTP/1.1\r\nHost: [::1\r\n\r\n', /malformed IPv6 literal/);
    rejects('GET / HTTP/1.1\r\nHost: [1.2.3.4]\r\n\r\n', /malformed IPv6 literal/);
    rejects('GET / HTTP/1.1\r\nHost: ::1\r\n\r\n', /is not a host name/);
    rejects('GET / HTTP/1.1\r\nHost: b\u00fccher.example\r\n\r\n', /is not a host name/);
    rejects('GET http://user@good.example/ HTTP/1.1\r\n\r\n', /request target authority "user@good.example"/);
    rejects(
      'GET http://a.example/ HTTP/1.1\r\nHost: b.example\r\n\r\n',
      /Host header "b.example" disagrees with the request target's "a.example"/,
    );
    rejects('CONNECT a.example HTTP/1.1\r\n\r\n', /CONNECT target "a.example" has no port/);
    rejects('GET ftp://a.example/ HTTP/1.1\r\n\r\n', /is not origin-, absolute-, authority- or asterisk-form/);
    rejects('GET / HTTP/2.0\r\n\r\n', /unsupported HTTP version "HTTP\/2.0"/);
    rejects('PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n', /unsupported HTTP version/);
    rejects('GET  / HTTP/1.1\r\n\r\n', /not METHOD TARGET VERSION/);
    rejects('GET /\u00e9 HTTP/1.1\r\n\r\n', /outside printable ASCII/);
    assert.throws(() => parseHttpHost(head(`GET / HTTP/1.1\r\nX: ${'a'.repeat(9000)}`)), /exceeds 8192 bytes/);
    assert.throws(() => parseHttpHost(head(`GET / HTTP/1.1\r\nX: ${'a'.repeat(100)}`), 64), /exceeds 64 bytes/);
  });

  it('reads the head node:http really sends, at every split', async () => {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const port = (server.address() as AddressInfo).port;
    const received = new Promise<Buffer>((resolve) => {
      server.on('connection', (socket) => {
        let data = Buffer.alloc(0);
        socket.on('data', (chunk: Buffer) => {
          data = Buffer.concat([data, chunk]);
          if (data.includes('\r\n\r\n')) {
            socket.destroy();
            resolve(data);
          }
        });
      });
    });
    const client = request({
      host: '127.0.0.1',
      port,
      path: '/v1/items?q=1',
      method: 'POST',
      headers: { host: 'api.example.com:8443', 'content-length': '0' },
    });
    client.on('error', () => {});
    client.end();
    const data = await received;
    server.close();
    assert.deepEqual(parseHttpHost(data), {
      kind: 'http-request',
      method: 'POST',
      target: '/v1/items?q=1',
      version: '1.1',
      host: 'api.example.com',
      port: 8443,
      headLength: data.indexOf('\r\n\r\n') + 4,
      contentLength: 0,
    });
    for (let i = 0; i < data.indexOf('\r\n\r\n') + 4; i++)
      assert.deepEqual(parseHttpHost(data.subarray(0, i)), { kind: 'incomplete' }, `prefix ${i}`);
  });

  it('survives 20k mutated, truncated and random inputs with only typed errors', () => {
    const prng = new Prng(0x5eed_0005);
    const seeds = [
      'GET /a HTTP/1.1\r\nHost: a.example:80\r\nAccept: */*\r\n\r\n',
      'CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n',
      'GET http://a.example/ HTTP/1.0\r\n\r\n',
    ].map(head);
    for (let i = 0; i < 20_000; i++) {
      const seed = prng.pick(seeds);
      const mode = prng.int(3);
      const input =
        mode === 0
          ? Buffer.concat([head(prng.pick(['GET ', 'CONNECT ', ''])), prng.bytes(prng.int(100))])
          : mode === 1
            ? seed.subarray(0, prng.int(seed.length + 1))
            : prng.mutate(seed);
      try {
        const result = parseHttpHost(input, 256);
        if (result.kind === 'http-request') assert.ok(result.headLength <= input.length, `case ${i}`);
      } catch (error) {
        if (!(error instanceof HttpHostError))
          throw new Error(`case ${i}: ${JSON.stringify(input.toString('latin1'))} threw ${String(error)}`, {
            cause: error,
          });
      }
    }
  });
});
