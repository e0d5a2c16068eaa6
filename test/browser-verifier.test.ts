import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { Agent, fetch as undiciFetch } from 'undici';
import type { Ingress } from '../src/ingress/ingress.js';
import { decodeDocumentInput } from '../src/verify/document-encoding.js';
import { defaultSimulatedPcr, openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import { openTerminator, startTlsIngress, type TerminatorFixture } from './helpers/attested-tls.js';
import { NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';
import { Prng } from './helpers/prng.js';
import { errorCode } from '../src/core/errors.js';

/** The one-file browser build, loaded as a page would load it (Node ≥ 20 has WebCrypto too). */
export const BROWSER_BUNDLE = join(REPO_ROOT, 'dist', 'browser', 'enclave-runtime-browser.js');
type BrowserModule = typeof import('../src/browser/index.js');
const browser = (await import(pathToFileURL(BROWSER_BUNDLE).href)) as BrowserModule;

const hex = (bytes: Uint8Array | null) => (bytes === null ? 'null' : Buffer.from(bytes).toString('hex'));
const fixture = (file: string) => decodeDocumentInput(readFileSync(join(NITRO_FIXTURES, file))).bytes;
// Verification times from SOURCES.md (see attestation-verifier.test.ts for the provenance of each).
const FIXTURES: ReadonlyArray<[string, Date]> = [
  ['blindai-nitro_attestation_document_valid.cbor', new Date('2023-03-22T14:28:27.405Z')],
  ['blocky-nitrite-nitro_attestation.b64', new Date('2024-09-07T14:37:39.545Z')],
  ['blocky-nitrite-nitro_attestation_debug.b64', new Date('2024-09-07T14:38:06.508Z')],
  ['eternis-invalid_attestation.b64', new Date(1721770180 * 1000)],
  ['evervault-ga-valid-attestation-doc.b64', new Date(1695050165 * 1000)],
  ['worldcoin-pontifex-real-attestation-doc.b64', new Date(1758628609 * 1000)],
  ['yawn-nitro-attest-attestation.cose', new Date(1736179625 * 1000)],
];

async function outcome(run: () => unknown): Promise<string> {
  try {
    await run();
    return 'valid';
  } catch (error) {
    return String(errorCode(error) ?? (error as Error).message);
  }
}

describe('enclave-runtime/browser: the WebCrypto verifier in its bundled form', () => {
  it('is one ESM file with no Node built-in and the AWS root built in', () => {
    const text = readFileSync(BROWSER_BUNDLE, 'utf8');
    assert.doesNotMatch(text, /["']node:|\brequire\(["']/);
    assert.match(text, /MIICETCCAZagAwIBAgIRAPkxdWgbkK\/hHUbMtOTn\+FYwCgYIKoZIzj0EAwMw/, 'the AWS Nitro root G1 PEM');
    assert.equal(typeof browser.verifyAttestationDocument, 'function');
    assert.equal(typeof browser.fetchAttestation, 'function');
  });

  it('gives the Node verifier’s verdict on every real Nitro document, at its time and now, with the default AWS root', async () => {
    for (const [file, at] of FIXTURES) {
      const bytes = fixture(file);
      for (const when of [at, new Date()]) {
        for (const allowDebug of [false, true]) {
          const node = await outcome(() => verifyAttestation(bytes, { at: when, allowDebug }));
          const web = await outcome(() => browser.verifyAttestationDocument(bytes, { at: when, allowDebug }));
          assert.equal(web, node, `${file} at ${when.toISOString()} allowDebug=${allowDebug}`);
        }
      }
    }
    const verified = await browser.verifyAttestationDocument(fixture('worldcoin-pontifex-real-attestation-doc.b64'), {
      at: FIXTURES[5]![1],
    });
    assert.equal(verified.document.moduleId, 'i-01b324f0b8b6c25ea-enc01997668bda38b2a');
  });

  it('refuses all 300 mutated documents (bit flips, truncations) as the Node verifier does', async () => {
    const [file, at] = FIXTURES[5]!;
    const original = fixture(file);
    const random = new Prng(18);
    const codes = new Map<string, number>();
    const differing: string[] = [];
    for (let i = 0; i < 300; i++) {
      const bytes = new Uint8Array(original);
      let mutated: Uint8Array = bytes;
      if (i % 10 === 9) mutated = bytes.subarray(0, random.int(bytes.length));
      else bytes[random.int(bytes.length)]! ^= 1 << random.int(8);
      const node = await outcome(() => verifyAttestation(mutated, { at }));
      const web = await outcome(() => browser.verifyAttestationDocument(mutated, { at }));
      // Both must refuse every mutation. The code may differ only where the two X.509 parsers
      // disagree on a damaged signing certificate (OpenSSL vs asn1js with a DER re-encoding check).
      assert.match(web, /^ERR_ATTESTATION_[A-Z_]+$/, `mutation ${i}`);
      assert.match(node, /^ERR_ATTESTATION_[A-Z_]+$/, `mutation ${i}`);
      if (web !== node) differing.push(`${i}: node ${node}, browser ${web}`);
      codes.set(node, (codes.get(node) ?? 0) + 1);
    }
    assert.ok(
      (codes.get('ERR_ATTESTATION_SIGNATURE') ?? 0) > 10,
      `signature failures seen: ${JSON.stringify([...codes])}`,
    );
    assert.ok(differing.length <= 3, `codes differ on: ${differing.join('; ')}`);
    assert.ok(
      differing.every((line) => /ERR_ATTESTATION_(SIGNATURE|CHAIN)$/.test(line)),
      differing.join('; '),
    );
  });

  describe('against simulated-NSM documents', () => {
    let stateDir: string;
    let nsm: SimulatedNsm;
    let rootPem: string;
    before(async () => {
      stateDir = await mkdtemp(join(tmpdir(), 'browser-verifier-'));
      nsm = await openSimulatedNsm({ stateDir });
      rootPem = readFileSync(join(stateDir, 'sim-nsm-root.pem'), 'utf8');
    });
    after(async () => {
      await nsm.close();
      await rm(stateDir, { recursive: true, force: true });
    });

    it('applies PCR sets (hex or bytes, one set or a list), nonce and the pinned root like the Node verifier', async () => {
      const nonce = new Uint8Array([1, 2, 3, 4]);
      const doc = await nsm.attest({ nonce, userData: new Uint8Array([9]) });
      const pcr0 = hex(defaultSimulatedPcr(0));
      const ok = await browser.verifyAttestationDocument(doc, {
        root: rootPem,
        nonce: '01020304',
        pcrs: [{ 0: 'ff'.repeat(48) }, { 0: pcr0, 1: defaultSimulatedPcr(1) }],
      });
      assert.equal(hex(ok.document.nonce), '01020304');
      await assert.rejects(browser.verifyAttestationDocument(doc, { root: rootPem, pcrs: { 0: 'ff'.repeat(48) } }), {
        code: 'ERR_ATTESTATION_PCR',
      });
      await assert.rejects(browser.verifyAttestationDocument(doc, { root: rootPem, pcrs: [] }), {
        code: 'ERR_ATTESTATION_PCR',
      });
      await assert.rejects(browser.verifyAttestationDocument(doc, { root: rootPem, nonce: '01020305' }), {
        code: 'ERR_ATTESTATION_NONCE',
      });
      await assert.rejects(browser.verifyAttestationDocument(doc, { root: rootPem, userData: '0a' }), {
        code: 'ERR_ATTESTATION_USER_DATA',
      });
      await assert.rejects(
        browser.verifyAttestationDocument(doc),
        { code: 'ERR_ATTESTATION_ROOT' },
        'not the AWS root',
      );
      await assert.rejects(browser.verifyAttestationDocument(doc, { root: rootPem, pcrs: { 40: pcr0 } }), RangeError);
      await assert.rejects(browser.verifyAttestationDocument(doc, { root: rootPem, pcrs: { 0: 'xyz' } }), RangeError);
    });
  });

  describe('fetchAttestation', () => {
    let fx: TerminatorFixture;
    let ingress: Ingress;
    let app: http.Server;
    let fake: http.Server;
    let fakeAnswer = '';
    const realFetch = globalThis.fetch;
    let dispatcher: Agent;

    before(async () => {
      fx = await openTerminator();
      app = http.createServer((_request, response) => response.end('app'));
      app.listen(0, '127.0.0.1');
      await once(app, 'listening');
      ingress = await startTlsIngress(fx.terminator, (app.address() as AddressInfo).port, { httpAware: true });
      // Written in two parts: chunked, with no content-length to go by.
      fake = http.createServer((_request, response) => {
        response.write(fakeAnswer.slice(0, 10));
        response.end(fakeAnswer.slice(10));
      });
      fake.listen(0, '127.0.0.1');
      await once(fake, 'listening');
      // A page trusts the server through its own roots; here the global fetch is given the dev CA.
      dispatcher = new Agent({ connect: { ca: fx.caPem, servername: 'localhost' } });
      globalThis.fetch = ((url: string | URL, init?: object) =>
        undiciFetch(url, { ...init, dispatcher })) as typeof fetch;
    });
    after(async () => {
      globalThis.fetch = realFetch;
      await dispatcher.close();
      await ingress.stop(0);
      app.close();
      fake.close();
      await fx.close();
    });

    it('asks the ingress for a fresh document carrying its nonce, bound to the served certificate key', async () => {
      const origin = `https://127.0.0.1:${(ingress.address as { port: number }).port}`;
      const first = await browser.fetchAttestation(origin, { root: fx.simRootPem });
      const second = await browser.fetchAttestation(origin, { root: fx.simRootPem, nonce: 'c0ffee' });
      assert.equal(first.nonce.byteLength, 32);
      assert.equal(hex(first.document.nonce), hex(first.nonce));
      assert.equal(hex(second.document.nonce), 'c0ffee');
      assert.equal(hex(first.document.userData), hex(second.document.userData), 'both bind the same served key');
      assert.equal(
        hex(first.document.userData),
        hex(
          fx.terminator.store.base.document &&
            verifyAttestation(fx.terminator.store.base.document, { root: fx.simRootPem }).document.userData,
        ),
      );
    });

    it('refuses a replayed document (no or another nonce), a tampered one, and answers that are not documents or too long', async () => {
      const origin = `http://127.0.0.1:${(fake.address() as AddressInfo).port}`;
      const document = await fx.nsm.attest({ nonce: new Uint8Array([7]) });
      fakeAnswer = JSON.stringify({ attestation_doc: Buffer.from(document).toString('base64') });
      await assert.rejects(browser.fetchAttestation(origin, { root: fx.simRootPem }), {
        code: 'ERR_ATTESTATION_NONCE',
      });
      const tampered = new Uint8Array(document);
      tampered[tampered.length - 1]! ^= 1;
      fakeAnswer = JSON.stringify({ attestation_doc: Buffer.from(tampered).toString('base64') });
      await assert.rejects(browser.fetchAttestation(origin, { root: fx.simRootPem, nonce: '07' }), {
        code: 'ERR_ATTESTATION_SIGNATURE',
      });
      fakeAnswer = 'not json';
      await assert.rejects(browser.fetchAttestation(origin, { root: fx.simRootPem }), {
        code: 'ERR_ATTESTATION_FETCH',
      });
      fakeAnswer = JSON.stringify({ attestation_doc: 42 });
      await assert.rejects(browser.fetchAttestation(origin, { root: fx.simRootPem }), {
        code: 'ERR_ATTESTATION_FETCH',
      });
      fakeAnswer = JSON.stringify({ attestation_doc: 'A'.repeat(300 * 1024) });
      await assert.rejects(
        browser.fetchAttestation(origin, { root: fx.simRootPem }),
        (e: { code?: string; message?: string }) =>
          e.code === 'ERR_ATTESTATION_FETCH' && /more than 262144 bytes/.test(e.message ?? ''),
      );
    });

    it('the ingress answers a bad nonce 400 in the internal API’s shape, readable cross-origin', async () => {
      const port = (ingress.address as { port: number }).port;
      for (const [query, field] of [
        ['nonce=abc', 'nonce'],
        [`nonce=${'00'.repeat(1025)}`, 'nonce'],
        ['nonce=00&nonce=01', 'nonce'],
      ] as const) {
        const response = await undiciFetch(`https://127.0.0.1:${port}/.well-known/attestation?${query}`, {
          dispatcher,
        });
        assert.equal(response.status, 400, query.slice(0, 40));
        assert.equal(response.headers.get('access-control-allow-origin'), '*');
        assert.equal(response.headers.get('access-control-allow-credentials'), null);
        assert.equal(((await response.json()) as { field: string }).field, field);
      }
    });
  });
});
