import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../src/core/log.js';
import { generateAcmePrivateKeyPem } from '../src/tls/acme-account-key.js';
import { checkIssued } from '../src/tls/acme-order.js';
import { openSelfCertificateSource, type SelfCertificateSource } from '../src/tls/certificate-source.js';

describe('checking what the ACME CA returned', () => {
  let dir: string;
  let ca: SelfCertificateSource;
  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'acme-issued-'));
    ca = await openSelfCertificateSource(dir, { logger: silentLogger() });
  });
  after(async () => rm(dir, { recursive: true, force: true }));

  async function issue(keyPem: string, names: string[]): Promise<string> {
    const spki = new Uint8Array(createPublicKey(keyPem).export({ type: 'spki', format: 'der' }));
    const leaf = await ca.issue({
      serverName: names[0]!,
      dnsNames: names,
      publicKeySpki: spki,
      attestationDocument: new Uint8Array(),
    });
    return leaf.certPem + leaf.chainPem;
  }

  it('splits the leaf from its chain and reads its validity', async () => {
    const key = await generateAcmePrivateKeyPem();
    const issued = checkIssued(await issue(key, ['a.example', 'b.example']), key, ['a.example', 'b.example']);
    assert.match(issued.certPem, /^-----BEGIN CERTIFICATE-----\n[\s\S]+-----END CERTIFICATE-----\n$/);
    assert.equal(issued.chainPem.match(/BEGIN CERTIFICATE/g)?.length, 1, 'the CA certificate follows the leaf');
    assert.ok(issued.notAfter.getTime() > issued.notBefore.getTime());
  });

  it('refuses a certificate for another key, or one that misses a domain', async () => {
    const key = await generateAcmePrivateKeyPem();
    const other = await generateAcmePrivateKeyPem();
    assert.throws(() => checkIssued('', key, ['a.example']), {
      code: 'ERR_TLS_ACME_CERTIFICATE',
      message: /no certificate/,
    });
    const forOther = await issue(other, ['a.example']);
    assert.throws(() => checkIssued(forOther, key, ['a.example']), {
      code: 'ERR_TLS_ACME_CERTIFICATE',
      message: /another key/,
    });
    const partial = await issue(key, ['a.example']);
    assert.throws(() => checkIssued(partial, key, ['a.example', 'b.example']), {
      code: 'ERR_TLS_ACME_CERTIFICATE',
      message: /does not name b\.example/,
    });
  });
});
