import assert from 'node:assert/strict';
import { once } from 'node:events';
import { randomBytes, X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect, createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { CertificateAuthority } from '../src/tls/certificate-authority.js';
import type { CertificateSource } from '../src/tls/certificate-source.js';
import { CertificateStore } from '../src/tls/certificate-store.js';
import { generateTlsKeyPair, type TlsKeyPair } from '../src/tls/key-pair.js';
import { contextSharingWorks, LeafContexts } from '../src/tls/leaf-contexts.js';
import { silentLogger } from '../src/core/log.js';
import { duplexPair } from './helpers/attested-tls.js';

/**
 * One handshake over an in-memory pipe whose SNICallback hands over `serve`'s choice; resolves the SANs
 * the client saw, and how many bytes the server sent until the handshake was done.
 */
async function handshakeBytes(
  name: string,
  serve: (callback: (err: Error | null, ctx?: SecureContext) => void) => void,
): Promise<{ san: string | undefined; bytes: number; issuer: string | undefined }> {
  const [serverEnd, clientEnd] = duplexPair();
  let bytes = 0;
  clientEnd.on('data', (chunk: Buffer) => (bytes += chunk.length));
  const server = new TLSSocket(serverEnd, {
    isServer: true,
    secureContext: createSecureContext({}),
    SNICallback: (_servername, callback) => serve(callback),
  });
  server.on('error', () => undefined);
  const client = connect({ socket: clientEnd, servername: name, rejectUnauthorized: false });
  try {
    await once(client, 'secureConnect');
    const peer = client.getPeerCertificate(true);
    return { san: peer.subjectaltname, bytes, issuer: peer.issuerCertificate?.fingerprint256 };
  } finally {
    client.destroy();
    server.destroy();
  }
}

async function handshake(
  name: string,
  serve: (callback: (err: Error | null, ctx?: SecureContext) => void) => void,
): Promise<string | undefined> {
  return (await handshakeBytes(name, serve)).san;
}

describe('leaf contexts', () => {
  let dir: string;
  let ca: CertificateAuthority;
  let keyPair: TlsKeyPair;
  const leaves = new Map<string, { leaf: string; chain: string }>();
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'leaf-contexts-'));
    ca = await CertificateAuthority.open(dir, { logger: silentLogger() });
    keyPair = await generateTlsKeyPair();
    for (let i = 0; i < 6; i++) {
      const issued = await ca.issue({ dnsNames: [`n${i}.example`], publicKeySpki: keyPair.spkiDer });
      leaves.set(`n${i}.example`, { leaf: issued.certPem, chain: issued.chainPem });
    }
  });
  after(() => rm(dir, { recursive: true, force: true }));

  it('sharing one context between fresh leaves is proved to work on this Node', async () => {
    // The Dockerfile's Node 24 and CI's Node 20 both keep setCert and the synchronous copy; if a Node
    // drops either, this fails here first while the runtime falls back to a context per leaf.
    assert.equal(await contextSharingWorks(), true);
    assert.equal(new LeafContexts(keyPair.privateKey, true).sharing, true);
  });

  for (const sharing of [true, false]) {
    it(`concurrent handshakes each get their own leaf (sharing ${sharing ? 'on' : 'off'})`, async () => {
      const contexts = new LeafContexts(keyPair.privateKey, sharing);
      let built = 0;
      const seen = await Promise.all(
        [...leaves].map(([name, { leaf, chain }]) =>
          handshake(name, (callback) =>
            contexts.handOver(leaf, chain, callback, () => {
              built += 1;
              return contexts.create(leaf, chain);
            }),
          ),
        ),
      );
      assert.deepEqual(
        seen,
        [...leaves.keys()].map((name) => `DNS:${name}`),
      );
      // With sharing, no leaf needed a context of its own: the first set up the shared one.
      assert.equal(built, sharing ? 0 : leaves.size);
    });
  }

  it('a certificate for another key gets its own context and leaves the shared one working', async () => {
    const contexts = new LeafContexts(keyPair.privateKey, true);
    const other = await generateTlsKeyPair();
    const foreign = await ca.issue({ dnsNames: ['foreign.example'], publicKeySpki: other.spkiDer });
    let fallbacks = 0;
    const { leaf, chain } = leaves.get('n0.example')!;
    const serveN0 = (callback: (err: Error | null, ctx?: SecureContext) => void) =>
      contexts.handOver(leaf, chain, callback, () => {
        fallbacks += 1;
        return contexts.create(leaf, chain);
      });
    assert.equal(await handshake('n0.example', serveN0), 'DNS:n0.example');
    const seen = await handshake('foreign.example', (callback) =>
      contexts.handOver(foreign.certPem, foreign.chainPem, callback, () => {
        fallbacks += 1;
        return new LeafContexts(other.privateKey, false).create(foreign.certPem, foreign.chainPem);
      }),
    );
    assert.equal(seen, 'DNS:foreign.example');
    assert.equal(fallbacks, 1);
    assert.equal(await handshake('n0.example', serveN0), 'DNS:n0.example');
    assert.equal(fallbacks, 1);
  });

  it('swapping leaves does not grow the chain a handshake sends', async () => {
    const contexts = new LeafContexts(keyPair.privateKey, true);
    const own = new LeafContexts(keyPair.privateKey, false);
    const { leaf, chain } = leaves.get('n1.example')!;
    const reference = await handshakeBytes('n1.example', (callback) => callback(null, own.create(leaf, chain)));
    for (let i = 0; i < 40; i++)
      for (const pem of leaves.values()) contexts.handOver(pem.leaf, pem.chain, () => {}, assert.fail);
    const shared = await handshakeBytes('n1.example', (callback) =>
      contexts.handOver(leaf, chain, callback, assert.fail),
    );
    assert.equal(shared.san, 'DNS:n1.example');
    // Same leaf, same chain, so the same bytes within the handshake's random-length parts.
    assert.ok(Math.abs(shared.bytes - reference.bytes) < 64, `${shared.bytes} bytes shared, ${reference.bytes} own`);
  });

  it('a new chain (a renewed CA) gets a new shared context holding it', async () => {
    const contexts = new LeafContexts(keyPair.privateKey, true);
    const { leaf, chain } = leaves.get('n2.example')!;
    contexts.handOver(leaf, chain, () => {}, assert.fail);
    const dir2 = await mkdtemp(join(tmpdir(), 'leaf-contexts-'));
    after(() => rm(dir2, { recursive: true, force: true }));
    const ca2 = await CertificateAuthority.open(dir2, { logger: silentLogger() });
    const renewed = await ca2.issue({ dnsNames: ['n2.example'], publicKeySpki: keyPair.spkiDer });
    const client = await handshakeBytes('n2.example', (callback) =>
      contexts.handOver(renewed.certPem, renewed.chainPem, callback, assert.fail),
    );
    const own = await handshakeBytes('n2.example', (callback) =>
      callback(null, contexts.create(renewed.certPem, renewed.chainPem)),
    );
    assert.equal(client.san, 'DNS:n2.example');
    assert.equal(client.issuer, new X509Certificate(ca2.certificatePem).fingerprint256);
    assert.ok(Math.abs(client.bytes - own.bytes) < 64, `${client.bytes} bytes shared, ${own.bytes} own`);
  });

  it('a source certificate for another key fails its issuance (the base is served), not a handshake', async () => {
    const other = await generateTlsKeyPair();
    let foreign = false;
    const source: CertificateSource = {
      kind: 'test',
      trustAnchorPem: ca.certificatePem,
      async issue(request) {
        const publicKeySpki = foreign ? other.spkiDer : request.publicKeySpki;
        const leaf = await ca.issue({ dnsNames: request.dnsNames, publicKeySpki });
        return { certPem: leaf.certPem, chainPem: leaf.chainPem, notAfter: leaf.notAfter };
      },
      async close() {},
    };
    const nsm = await openSimulatedNsm({ stateDir: dir });
    const store = await CertificateStore.create({ nsm, source, serverName: 'localhost', logger: silentLogger() });
    try {
      await store.forNonce(randomBytes(16));
      foreign = true;
      await assert.rejects(store.forNonce(randomBytes(16)), { code: 'ERR_TLS_ISSUE', message: /not for the leaf key/ });
      assert.equal(store.stats().failures, 1);
    } finally {
      store.close();
      await nsm.close();
    }
  });
});
