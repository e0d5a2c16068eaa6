import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import { decodeDocumentInput } from '../src/verify/document-encoding.js';
import { defaultSimulatedPcr } from '../src/attestation/sim-nsm.js';
import {
  AttestationError,
  attestedAgent,
  attestedFetch,
  verifyAttestationDocument,
  verifyAttestedCertificate,
  type PeerAttestation,
} from '../src/client/index.js';
import { listenTls, openTerminator, type TerminatorFixture } from './helpers/attested-tls.js';
import { NITRO_FIXTURES } from './helpers/paths.js';

const hex = (bytes: Uint8Array | null) => (bytes === null ? 'null' : Buffer.from(bytes).toString('hex'));
const WORLDCOIN = decodeDocumentInput(
  readFileSync(join(NITRO_FIXTURES, 'worldcoin-pontifex-real-attestation-doc.b64')),
).bytes;
const WORLDCOIN_AT = new Date(1758628609 * 1000);

describe('enclave-runtime/client: verifying documents and certificates', () => {
  it('verifies a real Nitro document against the bundled AWS root, with one PCR set or a list of them (hex or bytes)', () => {
    const { document } = verifyAttestationDocument(WORLDCOIN, { at: WORLDCOIN_AT });
    const pcr0 = document.pcrs.get(0)!;
    const wrong = 'ab'.repeat(48);
    assert.doesNotThrow(() => verifyAttestationDocument(WORLDCOIN, { at: WORLDCOIN_AT, pcrs: { 0: hex(pcr0) } }));
    assert.doesNotThrow(
      () =>
        verifyAttestationDocument(WORLDCOIN, {
          at: WORLDCOIN_AT,
          pcrs: [{ 0: wrong }, { '0': pcr0, 1: document.pcrs.get(1)! }],
        }),
      'rolling deploy: the second set matches',
    );
    assert.throws(
      () => verifyAttestationDocument(WORLDCOIN, { at: WORLDCOIN_AT, pcrs: [{ 0: wrong }] }),
      (e: unknown) => e instanceof AttestationError && e.code === 'ERR_ATTESTATION_PCR',
    );
    assert.throws(() => verifyAttestationDocument(WORLDCOIN, { at: WORLDCOIN_AT, nonce: '00' }), {
      code: 'ERR_ATTESTATION_NONCE',
    });
    assert.throws(
      () => verifyAttestationDocument(WORLDCOIN),
      { code: 'ERR_ATTESTATION_EXPIRED' },
      'at defaults to now',
    );
    assert.throws(() => verifyAttestationDocument(WORLDCOIN, { at: WORLDCOIN_AT, pcrs: { 0: 'not hex' } }), RangeError);
    assert.throws(
      () => verifyAttestationDocument(WORLDCOIN, { at: WORLDCOIN_AT, pcrs: { 99: hex(pcr0) } }),
      RangeError,
    );
    assert.throws(() => verifyAttestationDocument(WORLDCOIN, { at: new Date(Number.NaN) }), RangeError);
  });

  it('verifies the document a certificate embeds and its binding to the certificate key', () => {
    const cert = new X509Certificate(
      readFileSync(join(NITRO_FIXTURES, 'evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem')),
    );
    const at = new Date(1674054914 * 1000);
    const verified = verifyAttestedCertificate(cert, { at });
    assert.equal(verified.document.userData?.byteLength, 120);
    assert.throws(
      () =>
        verifyAttestedCertificate(
          new Uint8Array(readFileSync(join(NITRO_FIXTURES, 'evervault-ga-valid-certificate.der'))),
          { at },
        ),
      { code: 'ERR_ATTESTATION_FORMAT' },
    );
  });
});

describe('enclave-runtime/client: attestedAgent and attestedFetch against a local TLS terminator', () => {
  let fx: TerminatorFixture;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  let received = 0;
  let origin: string;

  before(async () => {
    fx = await openTerminator();
    listener = await listenTls(fx.terminator, (socket: tls.TLSSocket) => {
      let head = '';
      socket.on('data', (chunk: Buffer) => {
        received += chunk.length;
        head += chunk.toString('latin1');
        if (head.includes('\r\n\r\n'))
          socket.end('HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello');
      });
      socket.on('error', () => {});
    });
    origin = `https://127.0.0.1:${listener.port}`;
  });
  after(async () => {
    await listener.close();
    await fx.close();
  });

  it('attestedFetch: a fresh nonce per connection by default, PCRs checked, the body read', async () => {
    const seen: PeerAttestation[] = [];
    const response = await attestedFetch(`${origin}/x`, {
      root: fx.simRootPem,
      servername: 'localhost',
      pcrs: [{ 0: defaultSimulatedPcr(0), 1: defaultSimulatedPcr(1), 2: defaultSimulatedPcr(2) }],
      onAttested: ({ attestation }) => seen.push(attestation),
    });
    assert.equal(response.status, 200);
    assert.equal(await response.text(), 'hello');
    assert.equal(seen.length, 1);
    assert.equal(seen[0]!.document.nonce?.byteLength, 16, 'freshNonce is on by default');
  });

  it('refuses before any request byte is sent, with the AttestationError itself (not fetch’s TypeError)', async () => {
    const before = received;
    await assert.rejects(
      attestedFetch(`${origin}/secret`, {
        root: fx.simRootPem,
        servername: 'localhost',
        pcrs: { 0: 'ab'.repeat(48) },
        init: { method: 'POST', body: 'secret payload' },
      }),
      (e: unknown) => e instanceof AttestationError && e.code === 'ERR_ATTESTATION_PCR',
    );
    await assert.rejects(
      attestedFetch(`${origin}/`, { servername: 'localhost' }),
      (e: { code?: string }) => /^ERR_ATTESTATION_(ROOT|CHAIN)$/.test(e.code ?? ''),
      'the default root is AWS',
    );
    assert.equal(received, before, 'the server decrypted nothing');
  });

  it('attestedAgent is a reusable undici Dispatcher; freshNonce: false asks for the base certificate', async () => {
    const nonces: Array<string> = [];
    const agent = attestedAgent({
      root: fx.simRootPem,
      servername: 'localhost',
      freshNonce: false,
      onAttested: ({ attestation }) => nonces.push(hex(attestation.document.nonce)),
    });
    try {
      for (let i = 0; i < 2; i++) {
        const response = await attestedFetch(`${origin}/`, { dispatcher: agent });
        assert.equal(await response.text(), 'hello');
      }
    } finally {
      await agent.close();
    }
    assert.deepEqual(nonces, ['null', 'null']);
  });
});
