import assert from 'node:assert/strict';
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { KeyObject, randomBytes, webcrypto, X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { CertificateAuthority } from '../src/tls/certificate-authority.js';
import { readDer } from '../src/tls/der.js';
import { certificatePem, certificateSubjectName, LeafTemplate, type LeafFields } from '../src/tls/leaf-template.js';
import { generateTlsKeyPair } from '../src/tls/key-pair.js';
import { silentLogger } from '../src/core/log.js';

x509.cryptoProvider.set(webcrypto);

const CURVES = {
  'P-256': { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256', nodeHash: 'sha256' },
  'P-384': { name: 'ECDSA', namedCurve: 'P-384', hash: 'SHA-384', nodeHash: 'sha384' },
} as const;

interface TestCa {
  cert: x509.X509Certificate;
  keys: webcrypto.CryptoKeyPair;
  algorithm: (typeof CURVES)[keyof typeof CURVES];
  template: LeafTemplate;
  aki: x509.AuthorityKeyIdentifierExtension;
}

async function makeCa(curve: keyof typeof CURVES, name: x509.JsonName): Promise<TestCa> {
  const algorithm = CURVES[curve];
  const keys = (await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: curve }, false, [
    'sign',
    'verify',
  ])) as webcrypto.CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: '01',
    name,
    notBefore: new Date('2026-01-01T00:00:00Z'),
    notAfter: new Date('2060-01-01T00:00:00Z'),
    signingAlgorithm: algorithm,
    keys,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const aki = await x509.AuthorityKeyIdentifierExtension.create(cert, false);
  const template = new LeafTemplate({
    issuerName: certificateSubjectName(new Uint8Array(cert.rawData)),
    authorityKeyIdExtension: new Uint8Array(aki.rawData),
    hash: algorithm.nodeHash,
    signingKey: KeyObject.from(keys.privateKey),
  });
  return { cert, keys, algorithm, template, aki };
}

/** What the CA built with @peculiar/x509 before the template, for the same inputs. */
async function reference(ca: TestCa, fields: LeafFields): Promise<x509.X509Certificate> {
  const first = fields.dnsNames[0]!;
  return x509.X509CertificateGenerator.create({
    serialNumber: Buffer.from(fields.serial).toString('hex'),
    subject: first.length <= 64 ? [{ CN: [first] }] : [],
    issuer: ca.cert.subjectName,
    notBefore: fields.notBefore,
    notAfter: fields.notAfter,
    signingAlgorithm: ca.algorithm,
    publicKey: fields.publicKeySpki,
    signingKey: ca.keys.privateKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(fields.dnsNames.map((value) => ({ type: 'dns' as const, value }))),
      ca.aki,
    ],
  });
}

function serial(): Buffer {
  const bytes = randomBytes(16);
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes;
}

/** Compares a template leaf with the reference one through both parsers, field by field. */
async function assertSameMeaning(ca: TestCa, fields: LeafFields): Promise<void> {
  const der = await ca.template.issue(fields);
  const ref = await reference(ca, fields);
  // Same TBSCertificate, byte for byte; only the (randomised) ECDSA signature differs.
  const refDer = new Uint8Array(ref.rawData);
  const refTbs = readDer(refDer, readDer(refDer, 0).contentStart);
  assert.deepEqual(ca.template.tbsCertificate(fields), Buffer.from(refDer.subarray(refTbs.start, refTbs.end)));

  const ours = new x509.X509Certificate(certificatePem(der));
  assert.equal(ours.subject, ref.subject);
  assert.equal(ours.issuer, ref.issuer);
  assert.equal(ours.serialNumber, ref.serialNumber);
  assert.equal(ours.notBefore.getTime(), ref.notBefore.getTime());
  assert.equal(ours.notAfter.getTime(), ref.notAfter.getTime());
  assert.deepEqual(
    ours.extensions.map((e) => [e.type, e.critical, Buffer.from(e.value).toString('hex')]),
    ref.extensions.map((e) => [e.type, e.critical, Buffer.from(e.value).toString('hex')]),
  );
  assert.deepEqual(
    ours.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON(),
    fields.dnsNames.map((value) => ({ type: 'dns', value })),
  );
  assert.equal(await ours.verify({ publicKey: ca.keys.publicKey, signatureOnly: true }), true);

  const node = new X509Certificate(der);
  const nodeRef = new X509Certificate(Buffer.from(ref.rawData));
  assert.equal(node.subject, nodeRef.subject);
  assert.equal(node.issuer, nodeRef.issuer);
  assert.equal(node.subjectAltName, nodeRef.subjectAltName);
  assert.equal(node.validFrom, nodeRef.validFrom);
  assert.equal(node.validTo, nodeRef.validTo);
  assert.equal(node.serialNumber, nodeRef.serialNumber);
  assert.equal(node.ca, false);
  assert.deepEqual(node.keyUsage, ['1.3.6.1.5.5.7.3.1']);
  assert.equal(node.checkIssued(new X509Certificate(Buffer.from(ca.cert.rawData))), true);
  assert.equal(node.verify(KeyObject.from(ca.keys.publicKey)), true);
  assert.deepEqual(
    new Uint8Array(node.publicKey.export({ type: 'spki', format: 'der' })),
    new Uint8Array(fields.publicKeySpki),
  );
}

describe('leaf template', () => {
  let spki: Uint8Array;
  let p256: TestCa;
  let p384: TestCa;
  before(async () => {
    spki = (await generateTlsKeyPair()).spkiDer;
    p256 = await makeCa('P-256', [{ CN: ['test CA 1'] }, { O: ['enclave-runtime'] }]);
    // A UTF8String attribute in the issuer must be copied as is, not re-encoded.
    p384 = await makeCa('P-384', [{ CN: ['test_CA é'] }]);
  });

  const times = { notBefore: new Date('2026-12-02T13:11:40.123Z'), notAfter: new Date('2026-12-05T13:16:40.999Z') };

  it('matches the @peculiar/x509 leaf for a short name (CN subject)', async () => {
    await assertSameMeaning(p256, {
      serial: serial(),
      ...times,
      dnsNames: ['short.example', `${'ab'.repeat(40)}.short.example`],
      publicKeySpki: spki,
    });
  });

  it('matches for a nonce-sized name (empty subject) and a multi-kilobyte SAN label', async () => {
    await assertSameMeaning(p256, {
      serial: serial(),
      ...times,
      dnsNames: [`${'0f'.repeat(32)}.attest.example.com`, `${'c4'.repeat(4600)}.example.com`],
      publicKeySpki: spki,
    });
  });

  it('matches for a name that is not a PrintableString, a P-384 CA and dates past 2049', async () => {
    await assertSameMeaning(p384, {
      serial: serial(),
      notBefore: new Date('2049-12-31T23:59:59Z'),
      notAfter: new Date('2050-01-02T00:00:00Z'),
      dnsNames: ['under_score.example'],
      publicKeySpki: spki,
    });
  });

  it('the CA issues through the template: the leaf chains to its ca.pem', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'leaf-template-'));
    after(() => rm(dir, { recursive: true, force: true }));
    const ca = await CertificateAuthority.open(dir, { logger: silentLogger() });
    const leaf = await ca.issue({ dnsNames: ['a.example', 'b.example'], publicKeySpki: spki });
    const node = new X509Certificate(leaf.certPem);
    const caCert = new X509Certificate(ca.certificatePem);
    assert.equal(node.checkIssued(caCert), true);
    assert.equal(node.verify(caCert.publicKey), true);
    assert.equal(node.subjectAltName, 'DNS:a.example, DNS:b.example');
    assert.equal(new Date(node.validTo).getTime(), Math.floor(leaf.notAfter.getTime() / 1000) * 1000);
    assert.match(leaf.certPem, /^-----BEGIN CERTIFICATE-----\n([A-Za-z0-9+/=]{1,64}\n)+-----END CERTIFICATE-----\n$/);
  });

  it('refuses what would make a malformed leaf', () => {
    const base: LeafFields = { serial: serial(), ...times, dnsNames: ['a.example'], publicKeySpki: spki };
    const refused = (fields: Partial<LeafFields>, message: RegExp) =>
      assert.throws(() => p256.template.tbsCertificate({ ...base, ...fields }), { code: 'ERR_TLS_ISSUE', message });
    refused({ dnsNames: [] }, /at least one DNS name/);
    refused({ dnsNames: ['bad.ëxample'] }, /ASCII/);
    refused({ publicKeySpki: spki.subarray(0, spki.length - 1) }, /SubjectPublicKeyInfo/);
    refused({ publicKeySpki: Buffer.concat([spki, Buffer.of(0)]) }, /SubjectPublicKeyInfo/);
    refused({ serial: Buffer.of(0x80, 1) }, /positive/);
    refused({ serial: Buffer.alloc(0) }, /positive/);
  });

  it('reads DER lengths in every form and refuses truncated ones', () => {
    const long = Buffer.concat([Buffer.of(0x04, 0x83, 0x01, 0x00, 0x00), Buffer.alloc(0x10000)]);
    assert.deepEqual(readDer(long, 0), { tag: 4, start: 0, contentStart: 5, end: long.length });
    assert.throws(() => readDer(long.subarray(0, 100), 0), { code: 'ERR_TLS_CA_STATE' });
    assert.throws(() => readDer(Buffer.of(0x30, 0x80), 0), { code: 'ERR_TLS_CA_STATE' });
  });
});
