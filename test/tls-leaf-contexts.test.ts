import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { connect, createSecureContext, TLSSocket, type SecureContext } from 'node:tls';
import { CertificateAuthority } from '../src/tls/certificate-authority.js';
import { generateTlsKeyPair, type TlsKeyPair } from '../src/tls/key-pair.js';
import { contextSharingWorks, LeafContexts } from '../src/tls/leaf-contexts.js';
import { silentLogger } from '../src/core/log.js';
import { duplexPair } from './helpers/attested-tls.js';

/** One handshake over an in-memory pipe whose SNICallback hands over `serve`'s choice; resolves the SANs the client saw. */
async function handshake(
  name: string,
  serve: (callback: (err: Error | null, ctx?: SecureContext) => void) => void,
): Promise<string | undefined> {
  const [serverEnd, clientEnd] = duplexPair();
  const server = new TLSSocket(serverEnd, {
    isServer: true,
    secureContext: createSecureContext({}),
    SNICallback: (_servername, callback) => serve(callback),
  });
  server.on('error', () => undefined);
  const client = connect({ socket: clientEnd, servername: name, rejectUnauthorized: false });
  try {
    await once(client, 'secureConnect');
    return client.getPeerCertificate().subjectaltname;
  } finally {
    client.destroy();
    server.destroy();
  }
}

describe('leaf contexts', () => {
  let dir: string;
  let ca: CertificateAuthority;
  let keyPair: TlsKeyPair;
  const leaves = new Map<string, string>();
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'leaf-contexts-'));
    ca = await CertificateAuthority.open(dir, { logger: silentLogger() });
    keyPair = await generateTlsKeyPair();
    for (let i = 0; i < 6; i++) {
      const issued = await ca.issue({ dnsNames: [`n${i}.example`], publicKeySpki: keyPair.spkiDer });
      leaves.set(`n${i}.example`, issued.certPem + issued.chainPem);
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
        [...leaves].map(([name, pem]) =>
          handshake(name, (callback) =>
            contexts.handOver(pem, callback, () => {
              built += 1;
              return contexts.create(pem);
            }),
          ),
        ),
      );
      assert.deepEqual(
        seen,
        [...leaves.keys()].map((name) => `DNS:${name}`),
      );
      // With sharing, no leaf needed a context of its own.
      assert.equal(built, sharing ? 0 : leaves.size);
    });
  }

  it('a certificate for another key gets its own context and leaves the shared one working', async () => {
    const contexts = new LeafContexts(keyPair.privateKey, true);
    const other = await generateTlsKeyPair();
    const foreign = await ca.issue({ dnsNames: ['foreign.example'], publicKeySpki: other.spkiDer });
    const foreignPem = foreign.certPem + foreign.chainPem;
    let fallbacks = 0;
    const seen = await handshake('foreign.example', (callback) =>
      contexts.handOver(foreignPem, callback, () => {
        fallbacks += 1;
        return new LeafContexts(other.privateKey, false).create(foreignPem);
      }),
    );
    assert.equal(seen, 'DNS:foreign.example');
    assert.equal(fallbacks, 1);
    const pem = leaves.get('n0.example')!;
    assert.equal(
      await handshake('n0.example', (callback) => contexts.handOver(pem, callback, () => contexts.create(pem))),
      'DNS:n0.example',
    );
    assert.equal(fallbacks, 1);
  });
});
