import { createHash, X509Certificate } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Encoder } from 'cbor-x';
import { AttestationError, type AttestationErrorCode } from '../src/verify/attestation-error.js';
import {
  certificateSpki,
  extractAttestationFromCertificate,
  verifyAttestationForCertificate,
  verifyCertificateAttestation,
} from '../src/verify/certificate-binding.js';
import { decodeAttestationInput, decodeDocumentInput } from '../src/verify/document-encoding.js';
import { isDebugDocument } from '../src/verify/document.js';
import { AWS_NITRO_ROOT_G1_SHA256, awsNitroRoot, bundledRootPath } from '../src/verify/root-store.js';
import {
  decodeAttestation,
  verifyAttestation,
  type VerifiedAttestation,
  type VerifyOptions,
} from '../src/verify/verifier.js';
import { NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';

const SOURCES = readFileSync(join(NITRO_FIXTURES, 'SOURCES.md'), 'utf8');
const ROOT_PEM_FILE = 'AWS_NitroEnclaves_Root-G1.root.pem';
const PRESENT = new Date();

// ---------------------------------------------------------------------------------------------
// The fixture table. Every verification time is copied from SOURCES.md, "Per-file provenance and
// published verifier behaviour" (the clock each upstream test pinned, or the chain-check time).
// ---------------------------------------------------------------------------------------------
interface Fixture {
  file: string;
  /** Seconds since the epoch (fractions allowed) or an ISO string, as SOURCES.md gives it. */
  at: number | string;
  /** The document sits in the certificate's longest DNS SAN (evervault format). */
  certificate?: boolean;
  /** The decoded section of SOURCES.md describing this file, when it is listed under another name. */
  sourcesName?: string;
}

const FIXTURES: readonly Fixture[] = [
  // blindai: "accepted at 2023-03-22 14:28:27.405" (naive datetime taken as UTC).
  { file: 'blindai-nitro_attestation_document_valid.cbor', at: '2023-03-22T14:28:27.405Z' },
  // blocky/nitrite: NitroAttestationTime = 2024-09-07T14:37:39.545Z.
  { file: 'blocky-nitrite-nitro_attestation.b64', at: '2024-09-07T14:37:39.545Z' },
  // blocky/nitrite: DebugNitroAttestationTime = 2024-09-07T14:38:06.508Z.
  { file: 'blocky-nitrite-nitro_attestation_debug.b64', at: '2024-09-07T14:38:06.508Z' },
  // eternis: parse_verify_with(..., unix_time=1726606091).
  { file: 'eternis-test_verify-literal.b64', at: 1726606091 },
  // eternis negative fixture: "chain OK at 1721770180 (2024-07-23T21:29:40Z), ES384 signature FAILS".
  { file: 'eternis-invalid_attestation.b64', at: 1721770180 },
  // evervault beta debug doc: "chain + signature verify here at T = 1665582606".
  { file: 'evervault-beta-debug-mode-attestation-doc.cbor', at: 1665582606 },
  // evervault beta valid doc: "Chain + signature verified here at T = 1665651482 (the doc timestamp)".
  { file: 'evervault-beta-valid-attestation-doc.cbor', at: 1665651482 },
  // evervault GA: FAKETIME 1695050165.
  { file: 'evervault-ga-valid-attestation-doc.b64', at: 1695050165 },
  // sui: verify_nitro_attestation(..., 1731627987382) in ms, 2.07 s before the document's own timestamp.
  { file: 'sui-nitro_attestation_tests.hex', at: 1731627987.382 },
  // worldcoin/pontifex: "Chain verified here at the doc timestamp, 1758628609".
  { file: 'worldcoin-pontifex-real-attestation-doc.b64', at: 1758628609 },
  // yawn/nitro-attest: OffsetDateTime::from_unix_timestamp(1736179625).
  { file: 'yawn-nitro-attest-attestation.cose', at: 1736179625 },
  // evervault beta certificates: FAKETIME 1674054914.
  { file: 'evervault-beta-debug-mode-cert-containing-attestation-doc-18-1-23.pem', at: 1674054914, certificate: true },
  {
    file: 'evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem',
    at: 1674054914,
    certificate: true,
  },
  {
    file: 'evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.der.crt',
    at: 1674054914,
    certificate: true,
    sourcesName: 'evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem',
  },
];
/** SOURCES.md: the only document whose signature does not verify. */
const NEGATIVE_FIXTURE = 'eternis-invalid_attestation.b64';
/** SOURCES.md: the TLS certificate (no embedded document) whose SPKI the GA document's user_data carries. */
const GA_DOCUMENT = 'evervault-ga-valid-attestation-doc.b64';
const GA_CERTIFICATE = 'evervault-ga-valid-certificate.der';
const GA_AT = 1695050165;

// ---------------------------------------------------------------------------------------------
// What SOURCES.md says each document contains ("Decoded fields"), parsed rather than retyped.
// ---------------------------------------------------------------------------------------------
interface DecodedFacts {
  coseLength: number;
  coseSha256: string;
  moduleId: string;
  timestamp: number;
  leafNotBefore: number;
  leafNotAfter: number;
  pcrCount: number;
  nonZeroPcrs: Map<number, string>;
  debug: boolean;
  signatureFails: boolean;
  fields: Record<'public_key' | 'user_data' | 'nonce', number | null>;
}

function decodedFacts(name: string): DecodedFacts {
  const sections = SOURCES.split(/^#### decoded: /m);
  const section = sections.find((s) => s.startsWith(`\`${name}\``));
  assert.ok(section !== undefined, `SOURCES.md has a decoded section for ${name}`);
  const body = section.split(/^## /m)[0]!;
  const need = (re: RegExp): RegExpExecArray => {
    const m = re.exec(body);
    assert.ok(m !== null, `SOURCES.md section ${name} matches ${re}`);
    return m;
  };
  const cose = need(/COSE_Sign1 bytes[^:]*: (\d+) B, sha256 `([0-9a-f]{64})`/);
  const head = need(/module_id `([^`]+)`; digest `SHA384`; timestamp (\d+) ms/);
  const leaf = need(/leaf certificate \(\d+ B\): CN `[^`]+`; notBefore \S+ \((\d+)\); notAfter \S+ \((\d+)\)/);
  const pcrs = need(/pcrs: indices 0\.\.15 \((\d+) entries\)/);
  const field = (key: string): number | null => {
    const m = need(new RegExp(`^- ${key}: (CBOR null|(\\d+) B)`, 'm'));
    return m[2] === undefined ? null : Number(m[2]);
  };
  return {
    coseLength: Number(cose[1]),
    coseSha256: cose[2]!,
    moduleId: head[1]!,
    timestamp: Number(head[2]),
    leafNotBefore: Number(leaf[1]) * 1000,
    leafNotAfter: Number(leaf[2]) * 1000,
    pcrCount: Number(pcrs[1]),
    nonZeroPcrs: new Map([...body.matchAll(/^\s+- PCR(\d+) `([0-9a-f]+)`/gm)].map((m) => [Number(m[1]), m[2]!])),
    debug: /PCR0 all-zero ⇒ debug-mode enclave/.test(body),
    signatureFails: /signature does NOT verify/.test(body),
    fields: { public_key: field('public_key'), user_data: field('user_data'), nonce: field('nonce') },
  };
}

// ---------------------------------------------------------------------------------------------
// Loading, independently of the code under test (document-encoding is checked against this).
// ---------------------------------------------------------------------------------------------
function fixtureTime(fixture: Pick<Fixture, 'at'>): Date {
  return typeof fixture.at === 'number' ? new Date(Math.round(fixture.at * 1000)) : new Date(fixture.at);
}

function fixtureBytes(file: string): Buffer {
  return readFileSync(join(NITRO_FIXTURES, file));
}

function certificateDer(file: string): Buffer {
  const raw = fixtureBytes(file);
  return file.endsWith('.pem') ? Buffer.from(new X509Certificate(raw).raw) : raw;
}

/** The COSE_Sign1 a fixture holds, decoded by file type, and for certificates via Node's own SAN parser. */
function documentBytes(fixture: Fixture): Buffer {
  const raw = fixtureBytes(fixture.file);
  if (fixture.certificate === true) {
    const names = (new X509Certificate(certificateDer(fixture.file)).subjectAltName ?? '')
      .split(', ')
      .filter((n) => n.startsWith('DNS:'))
      .map((n) => n.slice(4));
    const longest = names.reduce((a, b) => (b.length > a.length ? b : a), '');
    return Buffer.from(longest.split('.')[0]!, 'hex');
  }
  if (fixture.file.endsWith('.b64')) return Buffer.from(raw.toString('latin1').trim(), 'base64');
  if (fixture.file.endsWith('.hex')) return Buffer.from(raw.toString('latin1').trim(), 'hex');
  return raw;
}

function fixture(file: string): Fixture {
  const found = FIXTURES.find((f) => f.file === file);
  assert.ok(found !== undefined, `${file} is in the fixture table`);
  return found;
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

function hex(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'hex'));
}

function rejects(fn: () => unknown, code: AttestationErrorCode, message?: string): AttestationError {
  let caught: unknown;
  try {
    fn();
  } catch (error) {
    caught = error;
  }
  assert.ok(
    caught instanceof AttestationError,
    `${message ?? 'call'} throws an AttestationError (got ${String(caught)})`,
  );
  assert.equal(caught.code, code, `${message ?? 'call'}: ${caught.message}`);
  assert.ok(!caught.message.includes('\n'), 'the reason is one line');
  return caught;
}

function verifyFixture(f: Fixture, options: VerifyOptions): VerifiedAttestation {
  const bytes = documentBytes(f);
  return f.certificate === true
    ? verifyCertificateAttestation(certificateDer(f.file), options)
    : verifyAttestation(bytes, options);
}

// ---------------------------------------------------------------------------------------------

describe('the fixture table', () => {
  it('covers every attestation document in fixtures/nitro', () => {
    const notDocuments = new Set([ROOT_PEM_FILE, 'AWS_NitroEnclaves_Root-G1.zip', 'SOURCES.md', GA_CERTIFICATE]);
    const documents = readdirSync(NITRO_FIXTURES)
      .filter((f) => !notDocuments.has(f))
      .sort();
    assert.deepEqual(documents, FIXTURES.map((f) => f.file).sort());
    // SOURCES.md: "the signature and the chain of all 13 distinct documents verify ... except" one.
    assert.equal(new Set(FIXTURES.map((f) => decodedFacts(f.sourcesName ?? f.file).coseSha256)).size, 13);
  });

  it('matches SOURCES.md byte for byte, and every pinned time lies in the leaf validity window', () => {
    for (const f of FIXTURES) {
      const facts = decodedFacts(f.sourcesName ?? f.file);
      const bytes = documentBytes(f);
      assert.equal(bytes.byteLength, facts.coseLength, f.file);
      assert.equal(sha256(bytes), facts.coseSha256, f.file);
      const t = fixtureTime(f).getTime();
      assert.ok(t >= facts.leafNotBefore && t <= facts.leafNotAfter, `${f.file}: pinned time within the leaf validity`);
    }
  });
});

describe('bundled root', () => {
  it('is the AWS Nitro root G1 from the fixtures, with the fingerprint AWS publishes', () => {
    assert.deepEqual(readFileSync(bundledRootPath()), fixtureBytes(ROOT_PEM_FILE));
    const fixtureRoot = new X509Certificate(fixtureBytes(ROOT_PEM_FILE));
    // SOURCES.md quotes `openssl x509 -fingerprint -sha256` of the fixture root.
    const published = /-fingerprint -sha256` → `([0-9A-F:]{95})`/.exec(SOURCES)?.[1];
    assert.ok(published !== undefined);
    assert.equal(published.replace(/:/g, ''), AWS_NITRO_ROOT_G1_SHA256);
    assert.equal(sha256(fixtureRoot.raw).toUpperCase(), AWS_NITRO_ROOT_G1_SHA256);
    const [loaded] = awsNitroRoot().byFingerprint.values();
    assert.ok(loaded !== undefined && Buffer.from(loaded.raw).equals(fixtureRoot.raw));
  });

  it('is byte-identical to cabundle[0] of every document', () => {
    const root = new X509Certificate(fixtureBytes(ROOT_PEM_FILE)).raw;
    for (const f of FIXTURES) {
      assert.ok(Buffer.from(decodeAttestation(documentBytes(f)).cabundle[0]!).equals(root), f.file);
    }
  });
});

describe('every real document', () => {
  for (const f of FIXTURES) {
    const facts = decodedFacts(f.sourcesName ?? f.file);
    const at = fixtureTime(f);
    if (facts.signatureFails) {
      it(`${f.file} is rejected with ERR_ATTESTATION_SIGNATURE, at its time and now`, () => {
        assert.equal(f.file, NEGATIVE_FIXTURE);
        rejects(() => verifyFixture(f, { at, allowDebug: true }), 'ERR_ATTESTATION_SIGNATURE');
        rejects(() => verifyFixture(f, { at: PRESENT, allowDebug: true }), 'ERR_ATTESTATION_SIGNATURE');
      });
      continue;
    }
    it(`${f.file} verifies at ${at.toISOString()} and decodes to what SOURCES.md lists`, () => {
      const { document, signingCertificate } = verifyFixture(f, { at, allowDebug: facts.debug });
      assert.equal(document.moduleId, facts.moduleId);
      assert.equal(document.digest, 'SHA384');
      assert.equal(document.timestamp, facts.timestamp);
      assert.equal(document.pcrs.size, facts.pcrCount);
      for (const [index, value] of document.pcrs) {
        assert.equal(value.byteLength, 48);
        assert.equal(
          Buffer.from(value).toString('hex'),
          facts.nonZeroPcrs.get(index) ?? '00'.repeat(48),
          `PCR${index}`,
        );
      }
      assert.equal(document.cabundle.length, 4);
      assert.equal(document.publicKey?.byteLength ?? null, facts.fields.public_key);
      assert.equal(document.userData?.byteLength ?? null, facts.fields.user_data);
      assert.equal(document.nonce?.byteLength ?? null, facts.fields.nonce);
      assert.equal(isDebugDocument(document), facts.debug);
      assert.ok(Buffer.from(signingCertificate.raw).equals(Buffer.from(document.certificate)));
      assert.equal(new Date(signingCertificate.validTo).getTime(), facts.leafNotAfter);
    });
    it(`${f.file} fails at the present time with ERR_ATTESTATION_EXPIRED`, () => {
      rejects(() => verifyFixture(f, { allowDebug: true }), 'ERR_ATTESTATION_EXPIRED');
      rejects(() => verifyFixture(f, { at: PRESENT, allowDebug: true }), 'ERR_ATTESTATION_EXPIRED');
    });
    it(`${f.file} is valid exactly within its signing certificate's validity`, () => {
      const options = { allowDebug: true };
      verifyFixture(f, { ...options, at: new Date(facts.leafNotBefore) });
      verifyFixture(f, { ...options, at: new Date(facts.leafNotAfter) });
      const early = rejects(
        () => verifyFixture(f, { ...options, at: new Date(facts.leafNotBefore - 1000) }),
        'ERR_ATTESTATION_EXPIRED',
      );
      assert.match(early.message, /signing certificate .* not valid before/);
      const late = rejects(
        () => verifyFixture(f, { ...options, at: new Date(facts.leafNotAfter + 1000) }),
        'ERR_ATTESTATION_EXPIRED',
      );
      assert.match(late.message, /signing certificate .* expired at/);
    });
  }
});

describe('documents embedded in certificates', () => {
  for (const f of FIXTURES.filter((x) => x.certificate === true)) {
    it(`${f.file}: the document binds the certificate key through user_data`, () => {
      const der = certificateDer(f.file);
      assert.ok(Buffer.from(extractAttestationFromCertificate(der)).equals(documentBytes(f)));
      assert.ok(Buffer.from(extractAttestationFromCertificate(new X509Certificate(der))).equals(documentBytes(f)));
      const { document } = verifyCertificateAttestation(new X509Certificate(der), {
        at: fixtureTime(f),
        allowDebug: true,
      });
      // SPKI computed by OpenSSL, independently of the code under test.
      const spki = new X509Certificate(der).publicKey.export({ type: 'spki', format: 'der' });
      assert.ok(document.userData !== null && Buffer.from(document.userData).equals(spki));
      assert.ok(Buffer.from(certificateSpki(der)).equals(spki));
    });
  }

  it('the PEM and DER copies of the non-debug certificate carry the same document', () => {
    const pem = extractAttestationFromCertificate(
      certificateDer('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem'),
    );
    const der = extractAttestationFromCertificate(
      fixtureBytes('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.der.crt'),
    );
    assert.deepEqual(pem, der);
  });

  it('the evervault GA document binds the GA certificate delivered beside it', () => {
    const cert = fixtureBytes(GA_CERTIFICATE);
    const { document } = verifyAttestationForCertificate(documentBytes(fixture(GA_DOCUMENT)), cert, {
      at: new Date(GA_AT * 1000),
      allowDebug: true,
    });
    const spki = new X509Certificate(cert).publicKey.export({ type: 'spki', format: 'der' });
    assert.ok(document.userData !== null && Buffer.from(document.userData).equals(spki));
    // SOURCES.md: "user_data (91 B) is exactly this cert's DER SubjectPublicKeyInfo (3059301306072a8648ce3d0201…)".
    assert.ok(Buffer.from(document.userData).toString('hex').startsWith('3059301306072a8648ce3d0201'));
  });

  it('a certificate without an embedded document is ERR_ATTESTATION_FORMAT', () => {
    rejects(() => extractAttestationFromCertificate(fixtureBytes(GA_CERTIFICATE)), 'ERR_ATTESTATION_FORMAT');
    rejects(() => verifyCertificateAttestation(fixtureBytes(GA_CERTIFICATE)), 'ERR_ATTESTATION_FORMAT');
    rejects(
      () => extractAttestationFromCertificate(new Uint8Array([0x30, 0x03, 0x02, 0x01, 0x00])),
      'ERR_ATTESTATION_FORMAT',
    );
  });

  it('a genuine document that attests another key is ERR_ATTESTATION_BINDING', () => {
    const beta = certificateDer('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem');
    rejects(
      () =>
        verifyAttestationForCertificate(documentBytes(fixture(GA_DOCUMENT)), beta, {
          at: new Date(GA_AT * 1000),
          allowDebug: true,
        }),
      'ERR_ATTESTATION_BINDING',
    );
    const yawn = fixture('yawn-nitro-attest-attestation.cose');
    // yawn's user_data is null (SOURCES.md), so it binds no certificate at all.
    rejects(
      () => verifyAttestationForCertificate(documentBytes(yawn), beta, { at: fixtureTime(yawn) }),
      'ERR_ATTESTATION_BINDING',
    );
  });
});

describe('policy', () => {
  const betaCert = fixture('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem');
  const betaFacts = decodedFacts(betaCert.file);
  const pcrSet = (facts: DecodedFacts, indices: readonly number[]): Record<number, Uint8Array> =>
    Object.fromEntries(indices.map((i) => [i, hex(facts.nonZeroPcrs.get(i) ?? '00'.repeat(48))]));
  const flipped = (set: Record<number, Uint8Array>, index: number): Record<number, Uint8Array> => {
    const value = new Uint8Array(set[index]!);
    value[value.length - 1]! ^= 0x01;
    return { ...set, [index]: value };
  };
  const atOf = (f: Fixture): Date => fixtureTime(f);

  it('accepts the PCRs evervault publishes for the non-debug certificate, and PCR8 alone', () => {
    const published = pcrSet(betaFacts, [0, 1, 2, 8]);
    verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [published] });
    verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [{ 8: published[8]! }] });
  });

  it('rejects a PCR mismatch with ERR_ATTESTATION_PCR', () => {
    const published = pcrSet(betaFacts, [0, 1, 2, 8]);
    for (const index of [0, 1, 2, 8]) {
      rejects(
        () => verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [flipped(published, index)] }),
        'ERR_ATTESTATION_PCR',
        `PCR${index}`,
      );
    }
    // evervault: zero PCRs are "incorrect" for this non-debug document.
    rejects(
      () =>
        verifyFixture(betaCert, {
          at: atOf(betaCert),
          expectedPcrs: [pcrSet(decodedFacts(GA_DOCUMENT), [0, 1, 2, 8])],
        }),
      'ERR_ATTESTATION_PCR',
    );
    // A PCR the document does not carry never matches.
    rejects(
      () => verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [{ 16: published[8]! }] }),
      'ERR_ATTESTATION_PCR',
    );
    rejects(
      () => verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [{ 8: published[8]!.subarray(0, 32) }] }),
      'ERR_ATTESTATION_PCR',
    );
  });

  it('accepts when any one of several PCR sets matches (rolling deploy)', () => {
    const published = pcrSet(betaFacts, [0, 1, 2, 8]);
    const old = flipped(published, 0);
    verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [old, published] });
    verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [published, old] });
    const err = rejects(
      () => verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [old, flipped(published, 8)] }),
      'ERR_ATTESTATION_PCR',
    );
    assert.match(err.message, /set 1: PCR0 .*set 2: PCR8/);
  });

  it('fails closed on an empty PCR policy', () => {
    rejects(() => verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [] }), 'ERR_ATTESTATION_PCR');
    rejects(() => verifyFixture(betaCert, { at: atOf(betaCert), expectedPcrs: [{}] }), 'ERR_ATTESTATION_PCR');
  });

  it('checks the published PCRs of the other non-debug documents', () => {
    for (const file of [
      'evervault-beta-valid-attestation-doc.cbor',
      'worldcoin-pontifex-real-attestation-doc.b64',
      'yawn-nitro-attest-attestation.cose',
    ]) {
      const f = fixture(file);
      const facts = decodedFacts(file);
      const all = pcrSet(facts, [...Array(16).keys()]);
      verifyFixture(f, { at: atOf(f), expectedPcrs: [all] });
      rejects(() => verifyFixture(f, { at: atOf(f), expectedPcrs: [flipped(all, 4)] }), 'ERR_ATTESTATION_PCR', file);
    }
  });

  it('evervault GA: all-zero PCR0/1/2/8 match only when debug is allowed; PCR8 ending 50000000 does not', () => {
    const ga = fixture(GA_DOCUMENT);
    const zeros = pcrSet(decodedFacts(GA_DOCUMENT), [0, 1, 2, 8]);
    verifyFixture(ga, { at: atOf(ga), allowDebug: true, expectedPcrs: [zeros] });
    rejects(() => verifyFixture(ga, { at: atOf(ga), expectedPcrs: [zeros] }), 'ERR_ATTESTATION_DEBUG');
    const pcr8 = new Uint8Array(48);
    pcr8.set([0x50, 0, 0, 0], 44);
    rejects(
      () => verifyFixture(ga, { at: atOf(ga), allowDebug: true, expectedPcrs: [{ ...zeros, 8: pcr8 }] }),
      'ERR_ATTESTATION_PCR',
    );
  });

  it('rejects every debug-mode document unless allowDebug, and never a non-debug one', () => {
    for (const f of FIXTURES) {
      const facts = decodedFacts(f.sourcesName ?? f.file);
      if (facts.signatureFails) continue;
      if (facts.debug) {
        rejects(() => verifyFixture(f, { at: atOf(f) }), 'ERR_ATTESTATION_DEBUG', f.file);
        rejects(() => verifyFixture(f, { at: atOf(f), allowDebug: false }), 'ERR_ATTESTATION_DEBUG', f.file);
      } else {
        verifyFixture(f, { at: atOf(f) });
      }
    }
    // SOURCES.md: blindai, blocky debug, eternis, evervault beta debug (doc and cert), GA and sui are debug-mode.
    assert.equal(FIXTURES.filter((f) => decodedFacts(f.sourcesName ?? f.file).debug).length, 8);
  });

  it('checks the nonce (eternis: 00…01 expected)', () => {
    const f = fixture('eternis-test_verify-literal.b64');
    const nonce = hex('0000000000000000000000000000000000000001');
    verifyFixture(f, { at: atOf(f), allowDebug: true, nonce });
    rejects(
      () => verifyFixture(f, { at: atOf(f), allowDebug: true, nonce: hex('0000000000000000000000000000000000000000') }),
      'ERR_ATTESTATION_NONCE',
    );
    rejects(
      () => verifyFixture(f, { at: atOf(f), allowDebug: true, nonce: nonce.subarray(0, 19) }),
      'ERR_ATTESTATION_NONCE',
    );
    const yawn = fixture('yawn-nitro-attest-attestation.cose');
    rejects(() => verifyFixture(yawn, { at: atOf(yawn), nonce }), 'ERR_ATTESTATION_NONCE');
  });

  it('checks user_data (blindai: "hello, world!")', () => {
    const f = fixture('blindai-nitro_attestation_document_valid.cbor');
    verifyFixture(f, {
      at: atOf(f),
      allowDebug: true,
      userData: Buffer.from('hello, world!'),
      expectedPcrs: [{ 0: new Uint8Array(48) }],
    });
    rejects(
      () => verifyFixture(f, { at: atOf(f), allowDebug: true, userData: Buffer.from('hello, world?') }),
      'ERR_ATTESTATION_USER_DATA',
    );
    const beta = fixture('evervault-beta-valid-attestation-doc.cbor');
    rejects(
      () => verifyFixture(beta, { at: atOf(beta), userData: Buffer.from('hello, world!') }),
      'ERR_ATTESTATION_USER_DATA',
    );
  });

  it('checks public_key (pontifex attested key 43b98646…)', () => {
    const f = fixture('worldcoin-pontifex-real-attestation-doc.b64');
    const key = hex('43b986461bbdb752dd389e8f36312e5ebc3377f91e694d8125d1bc0079b2e122');
    verifyFixture(f, { at: atOf(f), publicKey: key });
    const other = new Uint8Array(key);
    other[0]! ^= 0x80;
    rejects(() => verifyFixture(f, { at: atOf(f), publicKey: other }), 'ERR_ATTESTATION_PUBLIC_KEY');
    const beta = fixture('evervault-beta-valid-attestation-doc.cbor');
    rejects(() => verifyFixture(beta, { at: atOf(beta), publicKey: key }), 'ERR_ATTESTATION_PUBLIC_KEY');
  });
});

describe('roots', () => {
  const yawn = fixture('yawn-nitro-attest-attestation.cose');
  const bytes = documentBytes(yawn);
  const at = fixtureTime(yawn);

  it('accepts the AWS root given as PEM text, DER bytes or an X509Certificate', () => {
    const pem = fixtureBytes(ROOT_PEM_FILE).toString('utf8');
    const cert = new X509Certificate(pem);
    for (const root of [pem, new Uint8Array(cert.raw), cert]) verifyAttestation(bytes, { at, root });
    // A PEM with several roots trusts each of them.
    const other = new X509Certificate(fixtureBytes(GA_CERTIFICATE)).toString();
    verifyAttestation(bytes, { at, root: `${other}\n${pem}` });
  });

  it('rejects a chain that does not start at the pinned root with ERR_ATTESTATION_ROOT', () => {
    // pontifex's test: the leaf used as the root.
    const document = decodeAttestation(bytes);
    rejects(() => verifyAttestation(bytes, { at, root: document.certificate }), 'ERR_ATTESTATION_ROOT');
    rejects(() => verifyAttestation(bytes, { at, root: document.cabundle[1]! }), 'ERR_ATTESTATION_ROOT');
    rejects(
      () => verifyAttestation(bytes, { at, root: new X509Certificate(fixtureBytes(GA_CERTIFICATE)) }),
      'ERR_ATTESTATION_ROOT',
    );
  });

  it('refuses a root option that is not a certificate', () => {
    rejects(() => verifyAttestation(bytes, { at, root: 'not a pem' }), 'ERR_ATTESTATION_ROOT');
    rejects(() => verifyAttestation(bytes, { at, root: new Uint8Array([1, 2, 3]) }), 'ERR_ATTESTATION_ROOT');
  });

  it('rejects an invalid verification time', () => {
    assert.throws(() => verifyAttestation(bytes, { at: new Date(Number.NaN) }), RangeError);
  });
});

describe('input formats', () => {
  const yawn = fixture('yawn-nitro-attest-attestation.cose');
  const bytes = documentBytes(yawn);
  const at = fixtureTime(yawn);

  it('autodetects raw CBOR, base64 (wrapped, URL-safe) and hex (upper case, 0x, whitespace)', () => {
    const b64 = bytes.toString('base64');
    const hexText = bytes.toString('hex');
    const variants: [string | Buffer, string][] = [
      [bytes, 'cbor'],
      [b64, 'base64'],
      [`  ${b64.replace(/.{76}/g, '$&\n')}\n`, 'base64'],
      [bytes.toString('base64url'), 'base64'],
      [b64.replace(/=+$/, ''), 'base64'],
      [hexText, 'hex'],
      [`0x${hexText.toUpperCase()}\r\n`, 'hex'],
      [hexText.replace(/.{64}/g, '$& '), 'hex'],
    ];
    for (const [text, encoding] of variants) {
      const decoded = decodeAttestationInput(typeof text === 'string' ? Buffer.from(text) : text);
      assert.equal(decoded.kind, 'document');
      assert.equal(decoded.encoding, encoding);
      assert.ok(Buffer.from(decoded.bytes).equals(bytes));
    }
    assert.ok(Buffer.from(decodeDocumentInput(Buffer.from(hexText)).bytes).equals(bytes));
    rejects(() => decodeDocumentInput(fixtureBytes(GA_CERTIFICATE)), 'ERR_ATTESTATION_FORMAT');
    for (const f of FIXTURES) {
      const decoded = decodeAttestationInput(fixtureBytes(f.file));
      assert.equal(decoded.kind, f.certificate === true ? 'certificate' : 'document', f.file);
      if (decoded.kind === 'document') assert.ok(Buffer.from(decoded.bytes).equals(documentBytes(f)), f.file);
    }
  });

  it('rejects what is not a document with ERR_ATTESTATION_FORMAT', () => {
    for (const garbage of ['', '   \n', 'hello world', 'abc', '\u00e9t\u00e9', '8444a1']) {
      rejects(
        () => verifyAttestation(decodeAttestationInput(Buffer.from(garbage)).bytes, { at }),
        'ERR_ATTESTATION_FORMAT',
        JSON.stringify(garbage),
      );
    }
    rejects(() => decodeAttestationInput(Buffer.alloc(200 * 1024, 0x41)), 'ERR_ATTESTATION_FORMAT');
    rejects(() => verifyAttestation(new Uint8Array(0), { at }), 'ERR_ATTESTATION_FORMAT');
    rejects(() => verifyAttestation(Buffer.from('{"json": true}'), { at }), 'ERR_ATTESTATION_FORMAT');
    rejects(() => verifyAttestation(Buffer.alloc(64 * 1024 + 1, 0x84), { at }), 'ERR_ATTESTATION_FORMAT');
    rejects(() => verifyAttestation(Buffer.alloc(20_000, 0x81), { at }), 'ERR_ATTESTATION_FORMAT', 'deep nesting');
  });

  it('rejects truncated documents and trailing bytes (pontifex: f6f6f6) with ERR_ATTESTATION_FORMAT', () => {
    for (const cut of [1, 2, 10, 100, bytes.length - 97, bytes.length - 1]) {
      rejects(() => verifyAttestation(bytes.subarray(0, cut), { at }), 'ERR_ATTESTATION_FORMAT', `cut at ${cut}`);
    }
    rejects(
      () => verifyAttestation(Buffer.concat([bytes, Buffer.from('f6f6f6', 'hex')]), { at }),
      'ERR_ATTESTATION_FORMAT',
    );
  });

  it('accepts the COSE_Sign1 tag 18, which is not signed, and rejects other tags', () => {
    verifyAttestation(Buffer.concat([Buffer.from([0xd2]), bytes]), { at });
    rejects(() => verifyAttestation(Buffer.concat([Buffer.from([0xd1]), bytes]), { at }), 'ERR_ATTESTATION_FORMAT');
  });

  it('keeps the payload bytes as received: the indefinite-length map of pontifex verifies', () => {
    const f = fixture('worldcoin-pontifex-real-attestation-doc.b64');
    const doc = documentBytes(f);
    // SOURCES.md: "payload map header 0xbf (INDEFINITE-length map)".
    assert.ok(doc.includes(Buffer.from('bf696d6f64756c655f6964', 'hex')));
    verifyAttestation(doc, { at: fixtureTime(f) });
  });

  it('reads a document from a view at an offset into a larger buffer', () => {
    const backing = new Uint8Array(bytes.length + 24);
    backing.set(bytes, 11);
    verifyAttestation(backing.subarray(11, 11 + bytes.length), { at });
  });

  it('does not let later writes to the input change the returned document', () => {
    const copy = Buffer.from(bytes);
    const { document } = verifyAttestation(copy, { at });
    const before = Buffer.from(document.certificate);
    copy.fill(0);
    assert.ok(Buffer.from(document.certificate).equals(before));
  });
});

describe('schema', () => {
  const yawn = fixture('yawn-nitro-attest-attestation.cose');
  const original = decodeAttestation(documentBytes(yawn));
  const encoder = new Encoder({ mapsAsObjects: false, useRecords: false, tagUint8Array: false });
  const PROTECTED_ES384 = Buffer.from('a1013822', 'hex');

  const bstr = (bytes: Uint8Array): Buffer => {
    const n = bytes.byteLength;
    const head =
      n < 24
        ? [0x40 | n]
        : n < 256
          ? [0x58, n]
          : n < 65536
            ? [0x59, n >> 8, n & 0xff]
            : [0x5a, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff];
    return Buffer.concat([Buffer.from(head), bytes]);
  };
  const cose = (payload: Uint8Array, protectedHeader: Uint8Array = PROTECTED_ES384): Buffer =>
    Buffer.concat([
      Buffer.from([0x84]),
      bstr(protectedHeader),
      Buffer.from([0xa0]),
      bstr(payload),
      bstr(new Uint8Array(96)),
    ]);
  const baseEntries = (): [unknown, unknown][] => [
    ['module_id', original.moduleId],
    ['digest', original.digest],
    ['timestamp', BigInt(original.timestamp)],
    ['pcrs', new Map([...original.pcrs].map(([i, v]) => [i, Buffer.from(v)]))],
    ['certificate', Buffer.from(original.certificate)],
    ['cabundle', original.cabundle.map((c) => Buffer.from(c))],
    ['public_key', Buffer.from(original.publicKey!)],
    ['user_data', null],
    ['nonce', null],
  ];
  const payloadWith = (change: (m: Map<unknown, unknown>) => void): Buffer => {
    const map = new Map(baseEntries());
    change(map);
    return Buffer.from(encoder.encode(map));
  };

  it('re-encodes the yawn payload into a document that decodes like the original', () => {
    const decoded = decodeAttestation(cose(payloadWith(() => {})));
    assert.deepEqual(decoded, original);
    // Same claims, but not the signed bytes: the signature must fail, not the schema.
    rejects(
      () => verifyAttestation(cose(payloadWith(() => {})), { at: fixtureTime(yawn) }),
      'ERR_ATTESTATION_SIGNATURE',
    );
  });

  it('treats absent optional fields like null (AWS CDDL marks them optional)', () => {
    const decoded = decodeAttestation(
      cose(
        payloadWith((m) => {
          m.delete('public_key');
          m.delete('user_data');
          m.delete('nonce');
        }),
      ),
    );
    assert.equal(decoded.publicKey, null);
    assert.equal(decoded.userData, null);
    assert.equal(decoded.nonce, null);
  });

  const bad: [string, (m: Map<unknown, unknown>) => void][] = [
    ['missing module_id', (m) => m.delete('module_id')],
    ['missing cabundle', (m) => m.delete('cabundle')],
    ['missing pcrs', (m) => m.delete('pcrs')],
    ['unknown key', (m) => m.set('extra', 1)],
    ['integer key', (m) => m.set(7, 1)],
    ['empty module_id', (m) => m.set('module_id', '')],
    ['module_id not text', (m) => m.set('module_id', Buffer.from('x'))],
    ['digest SHA256', (m) => m.set('digest', 'SHA256')],
    ['timestamp negative', (m) => m.set('timestamp', -1)],
    ['timestamp text', (m) => m.set('timestamp', '1736179625472')],
    ['timestamp too large', (m) => m.set('timestamp', 2n ** 63n)],
    ['pcrs empty', (m) => m.set('pcrs', new Map())],
    ['pcr index 32', (m) => m.set('pcrs', new Map([[32, Buffer.alloc(48)]]))],
    ['pcr index negative', (m) => m.set('pcrs', new Map([[-1, Buffer.alloc(48)]]))],
    ['pcr index text', (m) => m.set('pcrs', new Map([['0', Buffer.alloc(48)]]))],
    ['pcr 47 bytes', (m) => m.set('pcrs', new Map([[0, Buffer.alloc(47)]]))],
    ['pcr not bytes', (m) => m.set('pcrs', new Map([[0, 'zero']]))],
    ['pcrs a list', (m) => m.set('pcrs', [Buffer.alloc(48)])],
    ['certificate empty', (m) => m.set('certificate', Buffer.alloc(0))],
    ['certificate 1025 bytes', (m) => m.set('certificate', Buffer.alloc(1025))],
    ['cabundle empty', (m) => m.set('cabundle', [])],
    [
      'cabundle of 9',
      (m) =>
        m.set(
          'cabundle',
          Array.from({ length: 9 }, () => Buffer.from(original.cabundle[0]!)),
        ),
    ],
    ['cabundle entry text', (m) => m.set('cabundle', ['cert'])],
    ['user_data 1025 bytes', (m) => m.set('user_data', Buffer.alloc(1025))],
    ['nonce text', (m) => m.set('nonce', 'abc')],
    ['public_key false', (m) => m.set('public_key', false)],
  ];
  for (const [name, change] of bad) {
    it(`rejects ${name} with ERR_ATTESTATION_SCHEMA`, () => {
      const doc = cose(payloadWith(change));
      rejects(() => decodeAttestation(doc), 'ERR_ATTESTATION_SCHEMA', name);
      rejects(() => verifyAttestation(doc, { at: fixtureTime(yawn) }), 'ERR_ATTESTATION_SCHEMA', name);
    });
  }

  it('accepts 1024-byte optional fields, as real NSM output has them (blocky)', () => {
    const decoded = decodeAttestation(cose(payloadWith((m) => m.set('nonce', Buffer.alloc(1024, 1)))));
    assert.equal(decoded.nonce?.byteLength, 1024);
  });

  it('rejects a payload that is not a map, or not CBOR', () => {
    rejects(() => decodeAttestation(cose(Buffer.from(encoder.encode([1, 2])))), 'ERR_ATTESTATION_SCHEMA');
    rejects(() => decodeAttestation(cose(Buffer.from([0xff, 0x00]))), 'ERR_ATTESTATION_FORMAT');
  });

  it('requires ES384 in the protected header', () => {
    const payload = payloadWith(() => {});
    for (const header of ['a10126', 'a1013823', 'a0', 'a2013822021801']) {
      rejects(
        () => verifyAttestation(cose(payload, Buffer.from(header, 'hex')), { at: fixtureTime(yawn) }),
        'ERR_ATTESTATION_SIGNATURE',
        header,
      );
    }
    rejects(
      () => verifyAttestation(cose(payload, new Uint8Array(0)), { at: fixtureTime(yawn) }),
      'ERR_ATTESTATION_SIGNATURE',
    );
    rejects(
      () => verifyAttestation(cose(payload, Buffer.from('ff', 'hex')), { at: fixtureTime(yawn) }),
      'ERR_ATTESTATION_FORMAT',
    );
  });

  it('rejects a COSE array of the wrong shape with ERR_ATTESTATION_FORMAT', () => {
    const payload = payloadWith(() => {});
    const shapes = [
      Buffer.concat([Buffer.from([0x83]), bstr(PROTECTED_ES384), Buffer.from([0xa0]), bstr(payload)]),
      Buffer.concat([
        Buffer.from([0x84]),
        bstr(PROTECTED_ES384),
        Buffer.from([0xa0]),
        Buffer.from([0xf6]),
        bstr(new Uint8Array(96)),
      ]),
      Buffer.concat([
        Buffer.from([0x84]),
        Buffer.from([0xa1, 0x01, 0x38, 0x22]),
        Buffer.from([0xa0]),
        bstr(payload),
        bstr(new Uint8Array(96)),
      ]),
      Buffer.concat([
        Buffer.from([0x84]),
        bstr(PROTECTED_ES384),
        Buffer.from([0x80]),
        bstr(payload),
        bstr(new Uint8Array(96)),
      ]),
      Buffer.concat([
        Buffer.from([0x84]),
        bstr(PROTECTED_ES384),
        Buffer.from([0xa0]),
        bstr(payload),
        Buffer.from([0x00]),
      ]),
    ];
    for (const shape of shapes) rejects(() => decodeAttestation(shape), 'ERR_ATTESTATION_FORMAT');
  });

  it('rejects a signature that is not 96 bytes with ERR_ATTESTATION_SIGNATURE', () => {
    const doc = documentBytes(yawn);
    // The signature is the last element: a 0x58 0x60 header and 96 bytes.
    assert.equal(doc[doc.length - 98], 0x58);
    assert.equal(doc[doc.length - 97], 96);
    const short = Buffer.concat([
      doc.subarray(0, doc.length - 98),
      Buffer.from([0x58, 95]),
      doc.subarray(doc.length - 95),
    ]);
    rejects(() => verifyAttestation(short, { at: fixtureTime(yawn) }), 'ERR_ATTESTATION_SIGNATURE');
  });
});

it('the bundled root ships where package.json says (src/verify/roots)', () => {
  const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { files: string[] };
  assert.ok(manifest.files.includes('src/verify/roots'));
  assert.equal(bundledRootPath(), join(REPO_ROOT, 'src', 'verify', 'roots', 'aws-nitro-root-g1.pem'));
});
