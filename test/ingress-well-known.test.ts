import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { PassThrough } from 'node:stream';
import { setImmediate as tick } from 'node:timers/promises';
import type tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import type { Ingress } from '../src/ingress/ingress.js';
import {
  classifyFirstRequest,
  readFirstRequest,
  WELL_KNOWN_HEAD_MAX_BYTES,
} from '../src/ingress/well-known-attestation.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import {
  connectTls,
  documentFromSan,
  openTerminator,
  peerLeaf,
  startTlsIngress,
  type TerminatorFixture,
} from './helpers/attested-tls.js';
import { readAll } from './helpers/net.js';

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
const WELL_KNOWN = 'GET /.well-known/attestation HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n';

interface Answer {
  head: string;
  body: string;
}

function split(raw: Buffer): Answer {
  const text = raw.toString('utf8');
  const end = text.indexOf('\r\n\r\n');
  return { head: text.slice(0, end), body: text.slice(end + 4) };
}

/** Everything a peeked (hence paused) stream still yields; the ingress's pipe() resumes it the same way. */
function drain(stream: PassThrough): Promise<Buffer> {
  const all = readAll(stream);
  stream.resume();
  return all;
}

/** Write `request` (all at once, or byte by byte), then read the whole answer up to the server's close. */
async function ask(socket: tls.TLSSocket, request: string, byteByByte = false): Promise<Answer> {
  const answer = readAll(socket);
  if (!byteByByte) socket.write(request);
  else {
    for (const byte of Buffer.from(request)) {
      socket.write(Buffer.from([byte]));
      await tick();
    }
  }
  return split(await answer);
}

describe('HTTP-aware ingress: GET /.well-known/attestation over TLS', () => {
  let fx: TerminatorFixture;
  let app: http.Server;
  let aware: Ingress;
  let plain: Ingress;
  /** What the app received: "METHOD URL body". */
  const seen: string[] = [];

  before(async () => {
    fx = await openTerminator();
    app = http.createServer((request, response) => {
      let body = '';
      request.on('data', (chunk: Buffer) => (body += chunk.toString()));
      request.on('end', () => {
        seen.push(`${request.method} ${request.url} ${body}`.trim());
        response.end(`app: ${request.method} ${request.url}`);
      });
    });
    app.listen(0, '127.0.0.1');
    await once(app, 'listening');
    const appPort = (app.address() as AddressInfo).port;
    aware = await startTlsIngress(fx.terminator, appPort, { httpAware: true });
    plain = await startTlsIngress(fx.terminator, appPort, { httpAware: false });
  });
  after(async () => {
    await aware.stop(0);
    await plain.stop(0);
    app.close();
    await fx.close();
  });

  const port = (ingress: Ingress) => (ingress.address as { port: number }).port;

  it('answers with the document of the certificate served on the connection, base or nonce, and closes', async () => {
    const before = seen.length;
    const socket = await connectTls({ port: port(aware) }, { servername: 'localhost' });
    const leaf = peerLeaf(socket);
    const answer = await ask(socket, WELL_KNOWN);
    assert.match(answer.head, /^HTTP\/1\.1 200 OK\r\n/);
    assert.match(answer.head, /\r\ncontent-type: application\/json\r\n/);
    assert.match(answer.head, /\r\nconnection: close(\r\n|$)/);
    const document = Buffer.from((JSON.parse(answer.body) as { attestation_doc: string }).attestation_doc, 'base64');
    assert.equal(
      hex(document),
      hex(documentFromSan(leaf)),
      'the document embedded in the certificate of this connection',
    );
    verifyAttestation(document, {
      root: fx.simRootPem,
      userData: leaf.publicKey.export({ type: 'spki', format: 'der' }),
    });

    const nonce = randomBytes(16);
    const nonceName = `${hex(nonce)}.attest.localhost`;
    const nonceSocket = await connectTls({ port: port(aware) }, { servername: nonceName, checkName: nonceName });
    const nonceAnswer = await ask(nonceSocket, WELL_KNOWN.replace(' HTTP/1.1', '?fresh=1 HTTP/1.1'));
    const nonceDocument = Buffer.from(
      (JSON.parse(nonceAnswer.body) as { attestation_doc: string }).attestation_doc,
      'base64',
    );
    const verified = verifyAttestation(nonceDocument, { root: fx.simRootPem, nonce });
    assert.equal(hex(verified.document.nonce!), hex(nonce));
    assert.equal(seen.length, before, 'the app never saw these requests');
    assert.ok(aware.stats.wellKnownAnswered >= 2);
  });

  it('with ?nonce=HEX answers a fresh document carrying it and binding the key served on that very connection', async () => {
    for (const servername of ['localhost', `${hex(randomBytes(16))}.attest.localhost`]) {
      const socket = await connectTls({ port: port(aware) }, { servername, checkName: servername });
      const leaf = peerLeaf(socket);
      const nonce = randomBytes(24);
      const answer = await ask(
        socket,
        WELL_KNOWN.replace(' HTTP/1.1', `?nonce=${hex(nonce).toUpperCase()}&_=1 HTTP/1.1`),
      );
      assert.match(answer.head, /^HTTP\/1\.1 200 OK\r\n/);
      assert.match(answer.head, /\r\naccess-control-allow-origin: \*\r\n/);
      const document = Buffer.from((JSON.parse(answer.body) as { attestation_doc: string }).attestation_doc, 'base64');
      assert.notEqual(hex(document), hex(documentFromSan(leaf)), 'made for this request, not the certificate’s');
      const verified = verifyAttestation(document, {
        root: fx.simRootPem,
        nonce,
        userData: leaf.publicKey.export({ type: 'spki', format: 'der' }),
      });
      assert.equal(hex(verified.document.nonce!), hex(nonce), servername);
    }
  });

  it('recognises the request however it is fragmented', async () => {
    const socket = await connectTls({ port: port(aware) }, { servername: 'localhost' });
    const answer = await ask(socket, WELL_KNOWN, true);
    assert.match(answer.head, /^HTTP\/1\.1 200 OK/);
    assert.ok((JSON.parse(answer.body) as { attestation_doc: string }).attestation_doc.length > 100);
  });

  it('passes every other request to the app unchanged', async () => {
    const cases: Array<[string, string]> = [
      ['GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n', 'GET /'],
      [
        'GET /.well-known/attestation2 HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n',
        'GET /.well-known/attestation2',
      ],
      [
        'GET /.well-known/attestation/x HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n',
        'GET /.well-known/attestation/x',
      ],
      [
        'POST /.well-known/attestation HTTP/1.1\r\nhost: x\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello',
        'POST /.well-known/attestation hello',
      ],
      [
        'GET /.well-known/attestation HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc',
        'GET /.well-known/attestation abc',
      ],
      [
        `GET /.well-known/attestation HTTP/1.1\r\nhost: x\r\nx-pad: ${'p'.repeat(WELL_KNOWN_HEAD_MAX_BYTES)}\r\nconnection: close\r\n\r\n`,
        'GET /.well-known/attestation',
      ],
    ];
    for (const [request, expected] of cases) {
      const socket = await connectTls({ port: port(aware) }, { servername: 'localhost' });
      const answer = await ask(socket, request);
      assert.match(answer.head, /^HTTP\/1\.1 200 OK/, expected);
      assert.equal(answer.body, `app: ${expected.split(' ').slice(0, 2).join(' ')}`);
      assert.equal(seen.at(-1), expected);
    }
  });

  it('looks only at the first request of a connection', async () => {
    const socket = await connectTls({ port: port(aware) }, { servername: 'localhost' });
    const answer = readAll(socket);
    socket.write('GET /first HTTP/1.1\r\nhost: x\r\n\r\n' + WELL_KNOWN);
    const text = (await answer).toString();
    assert.match(text, /app: GET \/first/);
    assert.match(text, /app: GET \/\.well-known\/attestation/);
    assert.deepEqual(seen.slice(-2), ['GET /first', 'GET /.well-known/attestation']);
  });

  it('a client that closes in the middle of the well-known head reaches nothing', async () => {
    const before = seen.length;
    const socket = await connectTls({ port: port(aware) }, { servername: 'localhost' });
    const answer = readAll(socket);
    socket.end('GET /.well-known/attestation HTTP/1.1\r\nhost:');
    assert.equal((await answer).length, 0);
    assert.equal(seen.length, before);
  });

  it('with ingress.http_aware off, the path is the app’s', async () => {
    const socket = await connectTls({ port: port(plain) }, { servername: 'localhost' });
    const answer = await ask(socket, WELL_KNOWN);
    assert.equal(answer.body, 'app: GET /.well-known/attestation');
    assert.equal(plain.stats.wellKnownAnswered, 0);
  });
});

describe('first-request peek', () => {
  it('decides as early as the bytes allow', () => {
    assert.equal(classifyFirstRequest(Buffer.from('G')), undefined);
    assert.equal(classifyFirstRequest(Buffer.from('P')), 'other');
    assert.equal(classifyFirstRequest(Buffer.from('PRI * HTTP/2.0\r\n')), 'other', 'an h2 preface goes to the app');
    assert.equal(classifyFirstRequest(Buffer.from('GET /.well-known/attestation')), undefined);
    assert.equal(classifyFirstRequest(Buffer.from('GET /.well-known/attestations')), 'other');
    assert.equal(classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/1.1\r\nhost: x\r\n')), undefined);
    assert.equal(
      classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/1.1\r\nhost: x\r\n\r\n')),
      'well-known',
    );
    assert.equal(classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/1.0\r\n\r\n')), 'well-known');
    assert.equal(classifyFirstRequest(Buffer.from('GET /.well-known/attestation?n=1 HTTP/1.1\r\n\r\n')), 'well-known');
    assert.equal(classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/2\r\n\r\n')), 'other');
    assert.equal(
      classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n')),
      'other',
    );
    assert.equal(
      classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/1.1\r\ncontent-length: 0\r\n\r\n')),
      'well-known',
    );
    assert.equal(
      classifyFirstRequest(Buffer.from('GET /.well-known/attestation HTTP/1.1\r\nbroken header\r\n\r\n')),
      'other',
    );
    assert.equal(
      classifyFirstRequest(
        Buffer.concat([Buffer.from('GET /.well-known/attestation HTTP/1.1\r\nx: '), Buffer.alloc(100, 0x61)]),
        64,
      ),
      'other',
      'over the head bound',
    );
  });

  it('gives up after its time bound with the bytes put back, and reports a close', async () => {
    const idle = new PassThrough();
    idle.write('GET /.well-known/att');
    assert.equal(await readFirstRequest(idle, { timeoutMs: 20 }), 'other');
    idle.end('estation HTTP/1.1\r\n\r\n');
    assert.equal(
      (await drain(idle)).toString(),
      'GET /.well-known/attestation HTTP/1.1\r\n\r\n',
      'nothing read was lost',
    );

    const other = new PassThrough();
    other.end('GET / HTTP/1.1\r\n\r\n');
    assert.equal(await readFirstRequest(other, { timeoutMs: 10_000 }), 'other');
    assert.equal((await drain(other)).toString(), 'GET / HTTP/1.1\r\n\r\n', 'bytes and end both survive the peek');

    const closed = new PassThrough();
    closed.end();
    assert.equal(await readFirstRequest(closed, { timeoutMs: 10_000 }), 'closed');
  });
});
