import assert from 'node:assert/strict';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import { verifyAttestation } from '../src/verify/verifier.js';
import { Encoder } from 'cbor-x';
import {
  attestedDnsNames,
  documentSigningCertificateNotAfter,
  UNSIGNED_DOCUMENT_LIFETIME_MS,
} from '../src/tls/attested-certificate.js';
import { decodeCoseSign1 } from '../src/verify/cose-sign1.js';
import { decodeAttestationPayload } from '../src/verify/document.js';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority } from '../src/tls/certificate-authority.js';
import { generateTlsKeyPair } from '../src/tls/key-pair.js';
import { silentLogger } from '../src/core/log.js';
import { captureLogs } from './helpers/log-capture.js';
import {
  connectTls,
  documentFromSan,
  peerLeaf,
  duplexPair,
  echo,
  listenTls,
  openTerminator,
  type TerminatorFixture,
} from './helpers/attested-tls.js';

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
    socket.once('close', () =>
      length >= payload.length ? resolve() : reject(new Error(`closed after ${length} bytes`)),
    );
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
    // An app that speaks HTTP/2 too: tls.alpn offers h2 first (the default offers http/1.1 only).
    fx = await openTerminator({ logger: logs.logger, terminator: { alpn: ['h2', 'http/1.1'] } });
    listener = await listenTls(fx.terminator, echo);
  });
  after(async () => {
    await listener.close();
    await fx.close();
  });

  it('answers SNI <hexnonce>.attest.localhost with a leaf whose SAN document carries the nonce and binds the leaf key', async () => {
    const nonce = randomBytes(16);
    const socket = await connectTls(listener, {
      servername: `${nonce.toString('hex')}.attest.localhost`,
      ca: fx.caPem,
    });
    try {
      const leaf = peerLeaf(socket);
      const document = documentFromSan(leaf);
      const verified = verifyAttestation(document, { root: fx.simRootPem });
      assert.deepEqual(Buffer.from(verified.document.nonce!), nonce);
      assert.deepEqual(Buffer.from(verified.document.userData!), Buffer.from(spkiOf(leaf)));
      assert.equal(verified.document.publicKey, null);
      // The SANs SPEC fixes, and nothing else: the server name asked for, and the document under it.
      const asked = `${nonce.toString('hex')}.attest.localhost`;
      assert.equal(leaf.subjectAltName, `DNS:${asked}, DNS:${Buffer.from(document).toString('hex')}.${asked}`);
      assert.deepEqual(
        attestedDnsNames(asked, document)
          .map((n) => `DNS:${n}`)
          .join(', '),
        leaf.subjectAltName,
      );
      // The chain is the state dir's CA, and the leaf is fit for a TLS server.
      assert.equal(socket.authorized, true, String(socket.authorizationError));
      assert.ok(leaf.checkIssued(new X509Certificate(fx.caPem)));
      assert.match(leaf.subject, /CN=[0-9a-f]+\.attest\.localhost/);
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
      assert.ok(
        logs.lines.some((l) => l['level'] === 20 && l['sni'] === 'NOTHEX.attest.localhost'),
        'a debug line names the label',
      );
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
});

describe('attested certificates over a generic Duplex (as the vsock/unix transports hand over)', () => {
  let fx: TerminatorFixture;
  before(async () => {
    fx = await openTerminator({ terminator: { alpn: ['h2', 'http/1.1'] } });
  });
  after(async () => {
    await fx.close();
  });

  it('handshakes, attests the nonce and echoes exact bytes over a duplex pair', async () => {
    const [serverEnd, clientEnd] = duplexPair();
    const secure = fx.terminator.wrap(serverEnd);
    echo(secure);
    const nonce = randomBytes(20);
    const client = await connectTls(
      { socket: clientEnd },
      { servername: `${nonce.toString('hex')}.attest.localhost`, ca: fx.caPem, alpn: ['h2', 'http/1.1'] },
    );
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

describe('the self CA (tls.source = "self")', () => {
  const dirs: string[] = [];
  const freshDir = async () => {
    const dir = await mkdtemp(join(tmpdir(), 'enclave-ca-'));
    dirs.push(dir);
    return dir;
  };
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });
  const open = (dir: string, now?: () => number) =>
    CertificateAuthority.open(dir, { logger: silentLogger(), ...(now ? { now } : {}) });

  it('is generated once per state dir: ca.pem, and a 0600 key file, reused on the next start', async () => {
    const dir = await freshDir();
    const first = await open(dir);
    assert.equal(await readFile(join(dir, CA_CERT_FILE), 'utf8'), first.certificatePem);
    assert.equal((await stat(join(dir, CA_KEY_FILE))).mode & 0o777, 0o600);
    const again = await open(dir);
    assert.equal(again.certificatePem, first.certificatePem);
    const ca = new X509Certificate(first.certificatePem);
    assert.equal(ca.ca, true);
    assert.equal(ca.publicKey.asymmetricKeyDetails?.namedCurve, 'prime256v1');
  });

  it('rewrites a deleted ca.pem from the key file', async () => {
    const dir = await freshDir();
    const first = await open(dir);
    await unlink(join(dir, CA_CERT_FILE));
    await open(dir);
    assert.equal(await readFile(join(dir, CA_CERT_FILE), 'utf8'), first.certificatePem);
  });

  it('ends up with one CA when several opens race on a fresh state dir', async () => {
    const dir = await freshDir();
    const all = await Promise.all(Array.from({ length: 8 }, () => open(dir)));
    assert.equal(new Set(all.map((ca) => ca.certificatePem)).size, 1);
    assert.equal(await readFile(join(dir, CA_CERT_FILE), 'utf8'), all[0]!.certificatePem);
  });

  it('refuses a key file whose key does not match its certificate', async () => {
    const [a, b] = [await freshDir(), await freshDir()];
    await open(a);
    await open(b);
    const keyOfA = (await readFile(join(a, CA_KEY_FILE), 'utf8')).split('-----BEGIN CERTIFICATE-----')[0]!;
    const certOfB = await readFile(join(b, CA_CERT_FILE), 'utf8');
    await writeFile(join(a, CA_KEY_FILE), keyOfA + certOfB, { mode: 0o600 });
    await assert.rejects(open(a), { code: 'ERR_TLS_CA_STATE' });
  });

  it('replaces a CA that is about to expire', async () => {
    const dir = await freshDir();
    const first = await open(dir);
    const later = await open(dir, () => first.notAfter.getTime() - 24 * 3600_000);
    assert.notEqual(later.certificatePem, first.certificatePem);
    assert.equal(await readFile(join(dir, CA_CERT_FILE), 'utf8'), later.certificatePem);
  });

  it('issues short-lived serverAuth leaves, also from a P-384 CA found in the state dir', async () => {
    const dir = await freshDir();
    const alg = { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384' };
    const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as webcrypto.CryptoKeyPair;
    const caCert = await x509.X509CertificateGenerator.createSelfSigned({
      name: 'CN=operator CA',
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 400 * 24 * 3600_000),
      signingAlgorithm: alg,
      keys,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true),
      ],
    });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)).toString('base64');
    await writeFile(
      join(dir, CA_KEY_FILE),
      `-----BEGIN PRIVATE KEY-----\n${pkcs8}\n-----END PRIVATE KEY-----\n${caCert.toString('pem')}\n`,
      { mode: 0o600 },
    );
    const ca = await open(dir);
    const leafKey = await generateTlsKeyPair();
    const leaf = await ca.issue({ dnsNames: ['enclave.example'], publicKeySpki: leafKey.spkiDer });
    const cert = new X509Certificate(leaf.certPem);
    assert.ok(cert.verify(new X509Certificate(ca.certificatePem).publicKey));
    assert.equal(cert.subjectAltName, 'DNS:enclave.example');
    const lifetime = leaf.notAfter.getTime() - leaf.notBefore.getTime();
    assert.ok(lifetime > 24 * 3600_000 && lifetime < 7 * 24 * 3600_000, `lifetime ${lifetime} ms`);
    assert.deepEqual(
      Buffer.from(new Uint8Array(cert.publicKey.export({ type: 'spki', format: 'der' }))),
      Buffer.from(leafKey.spkiDer),
    );
  });

  it('issues one leaf after another from the prebuilt parts: each chains to the CA, with its own names and the fixed extensions', async () => {
    const ca = await open(await freshDir());
    const caCert = new X509Certificate(ca.certificatePem);
    const names = ['a.example', 'b.example', 'c.example'];
    for (const name of names) {
      const key = await generateTlsKeyPair();
      const cert = new X509Certificate((await ca.issue({ dnsNames: [name], publicKeySpki: key.spkiDer })).certPem);
      assert.ok(cert.checkIssued(caCert), `${name} names the CA as issuer`);
      assert.ok(cert.verify(caCert.publicKey));
      assert.equal(cert.issuer, caCert.subject);
      assert.equal(cert.subjectAltName, `DNS:${name}`);
      assert.equal(cert.ca, false);
      assert.deepEqual(cert.keyUsage, ['1.3.6.1.5.5.7.3.1']);
    }
  });
});

describe('documents of an emulated NSM that signs nothing (QEMU virtio-nsm)', () => {
  // What QEMU's device returns: protected header {1: -1}, zero signature, zero-byte certificate and cabundle.
  const cbor = new Encoder({ useRecords: false, tagUint8Array: false, mapsAsObjects: false, variableMapSize: true });
  const payload = new Map<string, unknown>([
    ['module_id', 'i-234-enc5678'],
    ['digest', 'SHA384'],
    ['timestamp', Date.now()],
    ['pcrs', new Map([[0, new Uint8Array(48).fill(1)]])],
    ['certificate', new Uint8Array(64)],
    ['cabundle', [new Uint8Array(64)]],
    ['public_key', null],
    ['user_data', new Uint8Array(91)],
    ['nonce', null],
  ]);
  const unsigned = new Uint8Array(
    cbor.encode([cbor.encode(new Map([[1, -1]])), new Map(), cbor.encode(payload), new Uint8Array(64)]),
  );

  it('still get certificates, renewed UNSIGNED_DOCUMENT_LIFETIME_MS ahead, while the verifier rejects the document', () => {
    const now = Date.UTC(2026, 0, 1);
    assert.equal(documentSigningCertificateNotAfter(unsigned, now).getTime(), now + UNSIGNED_DOCUMENT_LIFETIME_MS);
    assert.throws(() => verifyAttestation(unsigned, { allowDebug: true }), { code: 'ERR_ATTESTATION_SIGNATURE' });
  });

  it('an unreadable document is still an error (ERR_TLS_ATTESTATION_DOCUMENT)', () => {
    assert.throws(() => documentSigningCertificateNotAfter(new Uint8Array([0x83, 1, 2, 3])), {
      code: 'ERR_TLS_ATTESTATION_DOCUMENT',
    });
    const noCertificate = new Map(payload);
    noCertificate.delete('certificate');
    const document = new Uint8Array(
      cbor.encode([cbor.encode(new Map([[1, -1]])), new Map(), cbor.encode(noCertificate), new Uint8Array(64)]),
    );
    assert.throws(() => documentSigningCertificateNotAfter(document), { code: 'ERR_TLS_ATTESTATION_DOCUMENT' });
  });
});

describe('the notAfter of the document signing certificate (parsed once per certificate)', () => {
  const dirs: string[] = [];
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });
  const signingNotAfter = (document: Uint8Array) =>
    new Date(new X509Certificate(decodeAttestationPayload(decodeCoseSign1(document).payload).certificate).validTo);

  it('follows a change of signing certificate instead of repeating the first one it read', async () => {
    const lifetimes = [3 * 3600_000, 5 * 3600_000];
    const documents: Uint8Array[] = [];
    for (const signingCertLifetimeMs of lifetimes) {
      const dir = await mkdtemp(join(tmpdir(), 'enclave-notafter-'));
      dirs.push(dir);
      const nsm = await openSimulatedNsm({ stateDir: dir, signingCertLifetimeMs });
      documents.push(await nsm.attest({ nonce: randomBytes(8) }), await nsm.attest({ nonce: randomBytes(8) }));
    }
    // Alternating, so each read follows one from the other certificate.
    for (const document of [documents[0]!, documents[2]!, documents[1]!, documents[3]!, documents[0]!]) {
      assert.equal(documentSigningCertificateNotAfter(document).getTime(), signingNotAfter(document).getTime());
    }
    assert.notEqual(signingNotAfter(documents[0]!).getTime(), signingNotAfter(documents[2]!).getTime());
  });

  it("hands each caller its own Date, so one caller changing it cannot move another's expiry", async () => {
    const dir = await mkdtemp(join(tmpdir(), 'enclave-notafter-'));
    dirs.push(dir);
    const nsm = await openSimulatedNsm({ stateDir: dir });
    const document = await nsm.attest({});
    const first = documentSigningCertificateNotAfter(document);
    const expected = first.getTime();
    first.setTime(0);
    assert.equal(documentSigningCertificateNotAfter(document).getTime(), expected);
  });
});
