import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import { request } from 'undici';
import { defaultSimulatedPcr } from '../src/attestation/sim-nsm.js';
import { createAttestedAgent, verifyPeerAttestation, type PeerAttestation } from '../src/tls/attested-client.js';
import { parseNonceLabel } from '../src/tls/nonce-label.js';
import { connectTls, listenTls, openTerminator, type TerminatorFixture } from './helpers/attested-tls.js';
import { NITRO_FIXTURES } from './helpers/paths.js';

const fromHex = (hex: string) => new Uint8Array(Buffer.from(hex, 'hex'));
// SOURCES.md: evervault's tests pin FAKETIME=1674054914 for the beta certificates.
const EVERVAULT_BETA_TIME = new Date(1674054914 * 1000);
const NON_DEBUG_PCRS = {
  0: fromHex('d265a83faa7b4fa0d73b82b6d06253e894445922937d0ee5a74fe4891da9817611a71e71b98e5329232902de3cf419af'),
  1: fromHex('bcdf05fefccaa8e55bf2c8d6dee9e79bbff31e34bf28a99aa19e6b29c37ee80b214a414b7607236edf26fcb78654e63f'),
  2: fromHex('e4f634d24ad83b7f6e49fe283bafdb220f6252fb4a278a858e19d15b7cd0f263b9168ed0bacefb4444266df9f9a77f24'),
  8: fromHex('97c5395a83c0d6a04d53ff962663c714c178c24500bf97f78456ed3721d922cf3f940614da4bb90107c439bc4a1443ca'),
};
const fixture = (name: string) => readFile(join(NITRO_FIXTURES, name));

describe('verifyPeerAttestation on the published evervault certificates', () => {
  it('accepts the non-debug certificate (PEM and DER) at the pinned time with the published PCRs', async () => {
    const pem = new X509Certificate(
      await fixture('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem'),
    );
    const der = new Uint8Array(
      await fixture('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.der.crt'),
    );
    for (const cert of [pem, der]) {
      const verified = verifyPeerAttestation(cert, { at: EVERVAULT_BETA_TIME, expectedPcrs: [NON_DEBUG_PCRS] });
      assert.equal(verified.document.moduleId, 'i-0ec0e572c8263d8ff-enc0185c4fd382eeb25');
      assert.equal(verified.document.userData?.byteLength, 120);
    }
    assert.doesNotThrow(() =>
      verifyPeerAttestation(pem, { at: EVERVAULT_BETA_TIME, expectedPcrs: [{ 8: NON_DEBUG_PCRS[8] }] }),
    );
  });

  it('accepts the debug-mode certificate only with allowDebug', async () => {
    const cert = new X509Certificate(
      await fixture('evervault-beta-debug-mode-cert-containing-attestation-doc-18-1-23.pem'),
    );
    const zero = new Uint8Array(48);
    const verified = verifyPeerAttestation(cert, {
      at: EVERVAULT_BETA_TIME,
      allowDebug: true,
      expectedPcrs: [{ 0: zero, 1: zero, 2: zero, 8: zero }],
    });
    assert.equal(verified.document.nonce?.byteLength, 256);
    assert.throws(() => verifyPeerAttestation(cert, { at: EVERVAULT_BETA_TIME }), { code: 'ERR_ATTESTATION_DEBUG' });
  });

  it('refuses wrong PCRs, a wrong expected nonce, the current time, and a certificate without a document', async () => {
    const cert = new X509Certificate(
      await fixture('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem'),
    );
    assert.throws(
      () => verifyPeerAttestation(cert, { at: EVERVAULT_BETA_TIME, expectedPcrs: [{ 0: new Uint8Array(48) }] }),
      { code: 'ERR_ATTESTATION_PCR' },
    );
    assert.throws(() => verifyPeerAttestation(cert, { at: EVERVAULT_BETA_TIME, expectedNonce: randomBytes(16) }), {
      code: 'ERR_ATTESTATION_NONCE',
    });
    assert.throws(
      () => verifyPeerAttestation(cert, {}),
      (err: { code?: string }) => /^ERR_ATTESTATION_(EXPIRED|CHAIN)$/.test(err.code ?? ''),
    );
    const plain = new Uint8Array(await fixture('evervault-ga-valid-certificate.der'));
    assert.throws(() => verifyPeerAttestation(plain, { at: new Date(1695050165 * 1000) }), {
      code: 'ERR_ATTESTATION_FORMAT',
    });
  });
});

/**
 * A tiny HTTP/1.1 app behind the terminator that counts every decrypted byte it receives: the
 * proof that a refused client sent nothing is that this count stays 0.
 */
async function startAttestedApp(fx: TerminatorFixture) {
  const state = { decryptedBytes: 0, connections: 0, servernames: [] as string[] };
  const open = new Set<Promise<void>>();
  const listener = await listenTls(fx.terminator, (socket: tls.TLSSocket) => {
    state.connections += 1;
    const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
    open.add(closed);
    void closed.then(() => open.delete(closed));
    socket.on('secure', () =>
      state.servernames.push(String((socket as tls.TLSSocket & { servername?: string | false }).servername)),
    );
    let head = '';
    socket.on('data', (chunk: Buffer) => {
      state.decryptedBytes += chunk.length;
      head += chunk.toString('latin1');
      if (head.includes('\r\n\r\n')) {
        head = '';
        socket.end('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok');
      }
    });
  });
  /** Resolves once every server-side connection so far has closed: no byte can still arrive. */
  const settled = async () => {
    while (open.size > 0) await Promise.all([...open]);
  };
  return { state, listener, settled, url: `https://127.0.0.1:${listener.port}/` };
}

describe('createAttestedAgent against a local TlsTerminator', () => {
  let fx: TerminatorFixture;
  let app: Awaited<ReturnType<typeof startAttestedApp>>;
  const pcrs = (indexes: number[]) => Object.fromEntries(indexes.map((i) => [i, defaultSimulatedPcr(i)]));

  before(async () => {
    fx = await openTerminator();
    app = await startAttestedApp(fx);
  });
  after(async () => {
    await app.listener.close();
    await fx.close();
  });

  it('sends the request once the enclave attested with the expected PCRs', async () => {
    const seen: PeerAttestation[] = [];
    const agent = createAttestedAgent({
      servername: 'localhost',
      verify: { root: fx.simRootPem, expectedPcrs: [pcrs([0, 1, 2])] },
      onAttested: ({ attestation }) => seen.push(attestation),
    });
    try {
      const response = await request(app.url, { dispatcher: agent });
      assert.equal(response.statusCode, 200);
      assert.equal(await response.body.text(), 'ok');
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.document.nonce, null);
    } finally {
      await agent.close();
    }
  });

  it('refuses an enclave whose PCRs differ, before any request byte is written', async () => {
    const bytesBefore = app.state.decryptedBytes;
    const connectionsBefore = app.state.connections;
    const agent = createAttestedAgent({
      servername: 'localhost',
      verify: { root: fx.simRootPem, expectedPcrs: [{ 0: new Uint8Array(48).fill(7) }] },
    });
    try {
      await assert.rejects(request(app.url, { dispatcher: agent, method: 'POST', body: 'secret payload' }), {
        code: 'ERR_ATTESTATION_PCR',
      });
    } finally {
      await agent.destroy();
    }
    await app.settled();
    // ERR_ATTESTATION_PCR can only come from the server's certificate, so the handshake did run.
    assert.ok(app.state.connections > connectionsBefore, 'the client did connect');
    assert.equal(app.state.decryptedBytes - bytesBefore, 0, 'no application byte reached the server');
  });

  it('refuses a document from another root (not the simulated NSM it was told to trust)', async () => {
    const bytesBefore = app.state.decryptedBytes;
    const agent = createAttestedAgent({ servername: 'localhost' });
    try {
      await assert.rejects(request(app.url, { dispatcher: agent }), (err: { code?: string }) =>
        /^ERR_ATTESTATION_(CHAIN|ROOT)$/.test(err.code ?? ''),
      );
    } finally {
      await agent.destroy();
    }
    await app.settled();
    assert.equal(app.state.decryptedBytes - bytesBefore, 0);
  });

  it('puts a fresh nonce in SNI per connection and requires it in the document', async () => {
    const nonces: string[] = [];
    const agent = createAttestedAgent({
      servername: 'localhost',
      freshNonce: true,
      verify: { root: fx.simRootPem },
      onAttested: ({ servername, attestation }) => {
        assert.equal(
          Buffer.from(attestation.document.nonce!).toString('hex'),
          Buffer.from(parseNonceLabel(servername)!).toString('hex'),
        );
        nonces.push(Buffer.from(attestation.document.nonce!).toString('hex'));
      },
    });
    const callsBefore = fx.nsm.nonceCalls;
    try {
      for (let i = 0; i < 2; i++) {
        const response = await request(app.url, { dispatcher: agent });
        assert.equal(await response.body.text(), 'ok');
      }
    } finally {
      await agent.close();
    }
    assert.equal(nonces.length, 2);
    assert.notEqual(nonces[0], nonces[1]);
    assert.ok(nonces.every((n) => n.length === 32));
    assert.equal(fx.nsm.nonceCalls - callsBefore, 2);
    assert.ok(app.state.servernames.some((name) => name === `${nonces[0]}.attest.localhost`));
  });

  it('checks the chain and host name too when given the CA, and refuses a wrong CA or name', async () => {
    const good = createAttestedAgent({
      servername: 'localhost',
      ca: fx.caPem,
      freshNonce: true,
      verify: { root: fx.simRootPem },
    });
    try {
      const response = await request(app.url, { dispatcher: good });
      assert.equal(await response.body.text(), 'ok');
    } finally {
      await good.close();
    }
    const bytesBefore = app.state.decryptedBytes;
    const other = await openTerminator();
    const wrongCa = createAttestedAgent({ servername: 'localhost', ca: other.caPem, verify: { root: fx.simRootPem } });
    const wrongName = createAttestedAgent({ servername: 'example.com', ca: fx.caPem, verify: { root: fx.simRootPem } });
    try {
      await assert.rejects(request(app.url, { dispatcher: wrongCa }), { code: 'ERR_TLS_UNTRUSTED_CHAIN' });
      await assert.rejects(request(app.url, { dispatcher: wrongName }), { code: 'ERR_TLS_HOST_MISMATCH' });
    } finally {
      await wrongCa.destroy();
      await wrongName.destroy();
      await other.close();
    }
    await app.settled();
    assert.equal(app.state.decryptedBytes - bytesBefore, 0);
  });

  it('refuses plain http: origins, which cannot be attested', async () => {
    const agent = createAttestedAgent({ verify: { root: fx.simRootPem } });
    try {
      await assert.rejects(request(`http://127.0.0.1:${app.listener.port}/`, { dispatcher: agent }), {
        code: 'ERR_TLS_NOT_TLS',
      });
    } finally {
      await agent.destroy();
    }
  });

  it('verifies a live socket with verifyPeerAttestation', async () => {
    const nonce = randomBytes(16);
    const socket = await connectTls(app.listener, { servername: `${nonce.toString('hex')}.attest.localhost` });
    try {
      const verified = verifyPeerAttestation(socket, { root: fx.simRootPem, expectedNonce: nonce });
      assert.equal(Buffer.from(verified.document.nonce!).toString('hex'), nonce.toString('hex'));
      // Reading the peer certificate must not consume it (Node 20's getPeerX509Certificate does).
      assert.doesNotThrow(() => verifyPeerAttestation(socket, { root: fx.simRootPem, expectedNonce: nonce }));
      assert.throws(
        () => verifyPeerAttestation(socket, { root: fx.simRootPem, nonce: randomBytes(16), expectedNonce: nonce }),
        { code: 'ERR_TLS_NONCE_CONFLICT' },
      );
    } finally {
      socket.destroy();
    }
  });
});
