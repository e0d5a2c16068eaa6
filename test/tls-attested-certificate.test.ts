import assert from 'node:assert/strict';
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import { verifyAttestation } from '../src/attestation/verifier.js';
import { attestedDnsNames } from '../src/tls/attested-certificate.js';
import { captureLogs } from './helpers/log-capture.js';
import { connectTls, documentFromSan, peerLeaf, duplexPair, echo, listenTls, openTerminator, type TerminatorFixture } from './helpers/attested-tls.js';

const spkiOf = (cert: X509Certificate) => new Uint8Array(cert.publicKey.export({ type: 'spki', format: 'der' }));
const fingerprint = (socket: tls.TLSSocket) => peerLeaf(socket).fingerprint256;

/** Write `payload` and read back exactly as many bytes through the echoing app. */
async function roundTrip(socket: tls.TLSSocket, payload: Buffer): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let length = 0;
  const done = new Promise<void>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      chunks.push(chunk);
      length += chunk.length;
      if (length >= payload.length) resolve();
    });
    socket.once('error', reject);
    socket.once('close', () => (length >= payload.length ? resolve() : reject(new Error(`closed after ${length} bytes`))));
  });
  socket.write(payload);
  await done;
  return Buffer.concat(chunks);
}

describe('attested certificates over a real TLS handshake (loopback TCP)', () => {
  let fx: TerminatorFixture;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  const logs = captureLogs('debug');

  before(async () => {
    fx = await openTerminator({ logger: logs.logger });
    listener = await listenTls(fx.terminator, echo);
  });
  after(async () => {
    await listener.close();
    await fx.close();
  });

  it('answers SNI <hexnonce>.attest.localhost with a leaf whose SAN document carries the nonce and binds the leaf key', async () => {
    const nonce = randomBytes(16);
    const socket = await connectTls(listener, { servername: `${nonce.toString('hex')}.attest.localhost`, ca: fx.caPem });
    try {
      const leaf = peerLeaf(socket);
      const document = documentFromSan(leaf);
      const verified = verifyAttestation(document, { root: fx.simRootPem });
      assert.deepEqual(Buffer.from(verified.document.nonce!), nonce);
      assert.deepEqual(Buffer.from(verified.document.userData!), Buffer.from(spkiOf(leaf)));
      assert.equal(verified.document.publicKey, null);
      // The SANs SPEC fixes, and nothing else.
      assert.equal(leaf.subjectAltName, `DNS:localhost, DNS:${Buffer.from(document).toString('hex')}.localhost`);
      assert.deepEqual(attestedDnsNames('localhost', document).map((n) => `DNS:${n}`).join(', '), leaf.subjectAltName);
      // The chain is the state dir's CA, and the leaf is fit for a TLS server.
      assert.equal(socket.authorized, true, String(socket.authorizationError));
      assert.ok(leaf.checkIssued(new X509Certificate(fx.caPem)));
      assert.match(leaf.subject, /CN=localhost/);
      assert.deepEqual(leaf.keyUsage, ['1.3.6.1.5.5.7.3.1']);
      assert.equal(leaf.ca, false);
    } finally {
      socket.destroy();
    }
  });

  it('answers a plain SNI with the base certificate, whose document has no nonce', async () => {
    const first = await connectTls(listener, { servername: 'localhost', ca: fx.caPem });
    const second = await connectTls(listener, {});
    try {
      const leaf = peerLeaf(first);
      const verified = verifyAttestation(documentFromSan(leaf), { root: fx.simRootPem });
      assert.equal(verified.document.nonce, null);
      assert.deepEqual(Buffer.from(verified.document.userData!), Buffer.from(spkiOf(leaf)));
      assert.equal(fingerprint(first), fingerprint(second), 'no SNI gets the same base certificate');
      assert.equal(first.authorized, true);
    } finally {
      first.destroy();
      second.destroy();
    }
  });

  it('serves the base certificate when the nonce label does not decode', async () => {
    const base = await connectTls(listener, { servername: 'localhost' });
    const bad = await connectTls(listener, { servername: 'NOTHEX.attest.localhost' });
    try {
      assert.equal(fingerprint(bad), fingerprint(base));
      assert.equal(verifyAttestation(documentFromSan(peerLeaf(bad)), { root: fx.simRootPem }).document.nonce, null);
      assert.ok(logs.lines.some((l) => l['level'] === 20 && l['sni'] === 'NOTHEX.attest.localhost'), 'a debug line names the label');
    } finally {
      base.destroy();
      bad.destroy();
    }
  });

  it('negotiates h2 and http/1.1 by ALPN, preferring h2', async () => {
    for (const [offer, expected] of [
      [['h2'], 'h2'],
      [['http/1.1'], 'http/1.1'],
      [['http/1.1', 'h2'], 'h2'],
    ] as const) {
      const socket = await connectTls(listener, { servername: 'localhost', alpn: [...offer] });
      assert.equal(socket.alpnProtocol, expected, offer.join(','));
      socket.destroy();
    }
  });

  it('passes the decrypted bytes to the app unchanged, both ways', async () => {
    const socket = await connectTls(listener, { servername: `${randomBytes(8).toString('hex')}.attest.localhost` });
    try {
      const payload = randomBytes(512 * 1024);
      const back = await roundTrip(socket, payload);
      assert.equal(back.length, payload.length);
      assert.equal(createHash('sha256').update(back).digest('hex'), createHash('sha256').update(payload).digest('hex'));
    } finally {
      socket.destroy();
    }
  });

  it('publishes the base document for GET /.well-known/attestation', async () => {
    const socket = await connectTls(listener, { servername: 'localhost' });
    try {
      const body = fx.terminator.wellKnownAttestation();
      const document = new Uint8Array(Buffer.from(body.attestation_doc, 'base64'));
      assert.deepEqual(Buffer.from(document), Buffer.from(documentFromSan(peerLeaf(socket))));
      const verified = verifyAttestation(document, { root: fx.simRootPem });
      assert.deepEqual(Buffer.from(verified.document.userData!), Buffer.from(spkiOf(peerLeaf(socket))));
    } finally {
      socket.destroy();
    }
  });
});

describe('attested certificates over a generic Duplex (as the vsock/unix transports hand over)', () => {
  let fx: TerminatorFixture;
  before(async () => {
    fx = await openTerminator();
  });
  after(async () => {
    await fx.close();
  });

  it('handshakes, attests the nonce and echoes exact bytes over a duplex pair', async () => {
    const [serverEnd, clientEnd] = duplexPair();
    const secure = fx.terminator.wrap(serverEnd);
    echo(secure);
    const nonce = randomBytes(20);
    const client = await connectTls({ socket: clientEnd }, { servername: `${nonce.toString('hex')}.attest.localhost`, ca: fx.caPem, alpn: ['h2', 'http/1.1'] });
    try {
      assert.equal(client.alpnProtocol, 'h2');
      assert.equal(client.authorized, true);
      const leaf = peerLeaf(client);
      const verified = verifyAttestation(documentFromSan(leaf), { root: fx.simRootPem });
      assert.deepEqual(Buffer.from(verified.document.nonce!), nonce);
      assert.deepEqual(Buffer.from(verified.document.userData!), Buffer.from(spkiOf(leaf)));
      const payload = randomBytes(100_000);
      assert.deepEqual(await roundTrip(client, payload), payload);
    } finally {
      client.destroy();
      if (!secure.destroyed) await Promise.race([once(secure, 'close'), new Promise((r) => setImmediate(r))]);
    }
  });

  it('aborts a handshake that never completes, after handshakeTimeoutMs', async () => {
    const quick = await openTerminator({ terminator: { handshakeTimeoutMs: 50 } });
    try {
      const [serverEnd] = duplexPair();
      // The terminator's timer is unref'd (a real transport keeps the loop alive); a pure-JS duplex
      // does not, so this ref'd guard does, and bounds the test if the timeout never fires.
      const guard = setTimeout(() => {}, 30_000);
      const secure = quick.terminator.wrap(serverEnd);
      const errors: NodeJS.ErrnoException[] = [];
      secure.on('error', (err: NodeJS.ErrnoException) => errors.push(err));
      try {
        await new Promise((resolve) => secure.once('close', resolve));
      } finally {
        clearTimeout(guard);
      }
      assert.equal(errors[0]?.code, 'ERR_TLS_HANDSHAKE_TIMEOUT');
      assert.equal(secure.destroyed, true);
      assert.equal(serverEnd.destroyed, true);
    } finally {
      await quick.close();
    }
  });

  it('closes a connection whose peer half-closes before finishing the handshake', async () => {
    const [serverEnd, clientEnd] = duplexPair();
    const secure = fx.terminator.wrap(serverEnd);
    const closed = new Promise((resolve) => secure.once('close', resolve));
    clientEnd.end(Buffer.from([0x16, 0x03, 0x01])); // a partial ClientHello record, then EOF
    await closed;
    assert.equal(secure.destroyed, true);
  });
});

describe('attested certificates with sni_nonce_encoding = "base64"', () => {
  it('decodes an evervault-style base64 label into the document nonce', async () => {
    const fx = await openTerminator({ terminator: { sniNonceEncoding: 'base64' } });
    const listener = await listenTls(fx.terminator, echo);
    try {
      const nonce = Buffer.from([0xfb, 0xff, 0x10, 0x20, 0x30, 0x40, 0x50]);
      for (const label of [nonce.toString('base64url'), nonce.toString('base64').replace(/=+$/, '')]) {
        const socket = await connectTls(listener, { servername: `${label}.attest.localhost` });
        try {
          const verified = verifyAttestation(documentFromSan(peerLeaf(socket)), { root: fx.simRootPem });
          assert.equal(Buffer.from(verified.document.nonce!).toString('hex'), nonce.toString('hex'), label);
        } finally {
          socket.destroy();
        }
      }
    } finally {
      await listener.close();
      await fx.close();
    }
  });
});
