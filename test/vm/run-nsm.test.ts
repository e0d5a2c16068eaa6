/**
 * `enclave-runtime run` with attestation.mode = "nsm" on the guest's real /dev/nsm: the runtime is the guest's PID 1
 * (the bundle, started by scripts/vm/guest/init.sh with test/vm/enclave-vm.toml) and this file runs as its app.
 * Documents come from QEMU's unsigned NSM, so their fields are checked with a SCHEMA-ONLY decode (guest.ts); the
 * verifier's rejection of such documents is asserted in nsm.test.ts.
 */
import assert from 'node:assert/strict';
import { X509Certificate, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import { parseAddress } from '../../src/net/address.js';
import { connect } from '../../src/net/transport.js';
import { connectTls, documentFromSan, peerLeaf } from '../helpers/attested-tls.js';
import { GUEST_SKIP, LOCAL_CID, RUNTIME, get, schemaOnlyDecode } from './guest.js';

const spki = (cert: X509Certificate): Buffer => cert.publicKey.export({ type: 'spki', format: 'der' });

/** A TLS connection to the runtime's ingress through vsock loopback, as the parent would make it. */
async function ingressTls(servername: string): Promise<tls.TLSSocket> {
  const socket = await connect(parseAddress(`vsock:${LOCAL_CID}:${RUNTIME.ingressPort}`), { timeoutMs: 10_000 });
  return connectTls({ socket }, { servername, checkName: RUNTIME.serverName });
}

describe(
  'run with attestation.mode = "nsm" on the real /dev/nsm (the runtime is PID 1)',
  { skip: GUEST_SKIP, timeout: 120_000 },
  () => {
    let app: http.Server;
    before(async () => {
      app = http.createServer((req, res) => res.end(`app saw ${req.method} ${req.url}`));
      app.listen(RUNTIME.app.port, RUNTIME.app.host);
      await once(app, 'listening');
    });
    after(() => new Promise<void>((resolve) => app.close(() => resolve())));

    it('run: GET /attestation-doc carries the requested nonce, user_data and public_key (schema-only decode)', async () => {
      const nonce = randomBytes(32);
      const userData = randomBytes(64);
      const publicKey = randomBytes(91);
      const path = `/attestation-doc?nonce=${nonce.toString('hex')}&user_data=${userData.toString('hex')}&public_key=${publicKey.toString('hex')}`;
      const response = await get({ ...RUNTIME.api, path });
      assert.equal(response.status, 200);
      assert.equal(response.headers['content-type'], 'application/cbor');
      const { payload } = schemaOnlyDecode(new Uint8Array(Buffer.from(response.body, 'latin1')));
      assert.deepEqual(Buffer.from(payload.nonce!), nonce);
      assert.deepEqual(Buffer.from(payload.userData!), userData);
      assert.deepEqual(Buffer.from(payload.publicKey!), publicKey);
    });

    it('run: POST /attestation-doc (JSON) carries nonce, challenge as user_data and publicKey (schema-only decode)', async () => {
      const publicKey = randomBytes(65);
      const json = JSON.stringify({
        nonce: 'vm-nonce-1',
        challenge: 'vm-challenge',
        publicKey: publicKey.toString('base64'),
      });
      const response = await get(
        {
          ...RUNTIME.api,
          path: '/attestation-doc',
          method: 'POST',
          headers: { 'content-type': 'application/json', accept: 'application/json' },
        },
        false,
        json,
      );
      assert.equal(response.status, 200);
      const body = JSON.parse(response.body) as { attestation_doc: string };
      const { payload } = schemaOnlyDecode(new Uint8Array(Buffer.from(body.attestation_doc, 'base64')));
      assert.equal(Buffer.from(payload.nonce!).toString(), 'vm-nonce-1');
      assert.equal(Buffer.from(payload.userData!).toString(), 'vm-challenge');
      assert.deepEqual(Buffer.from(payload.publicKey!), publicKey);
    });

    it('run: GET /health says the NSM works', async () => {
      const response = await get({ ...RUNTIME.api, path: '/health' });
      const body = JSON.parse(response.body) as { parts: Record<string, { ok: boolean }> };
      assert.equal(body.parts.attestation?.ok, true, JSON.stringify(body));
    });

    it('run: TLS on <nonce>.attest.<host> over vsock:1:7777 gets a certificate whose document carries the nonce and binds the leaf key', async () => {
      const nonce = randomBytes(16);
      const socket = await ingressTls(`${nonce.toString('hex')}.attest.${RUNTIME.serverName}`);
      const leaf = peerLeaf(socket);
      const { payload } = schemaOnlyDecode(documentFromSan(leaf));
      assert.deepEqual(Buffer.from(payload.nonce!), nonce);
      assert.deepEqual(Buffer.from(payload.userData!), spki(leaf), 'user_data is the leaf SPKI');

      // The same connection carries the app's bytes: ingress -> TLS -> the app on 127.0.0.1:8008.
      socket.end(`GET /through-ingress HTTP/1.1\r\nhost: ${RUNTIME.serverName}\r\nconnection: close\r\n\r\n`);
      const chunks: Buffer[] = [];
      for await (const chunk of socket) chunks.push(chunk as Buffer);
      const reply = Buffer.concat(chunks).toString();
      assert.match(reply, /^HTTP\/1\.1 200/);
      assert.match(reply, /app saw GET \/through-ingress/);
    });

    it('run: TLS on the base name gets a certificate whose document has no nonce and binds the leaf key', async () => {
      const socket = await ingressTls(RUNTIME.serverName);
      const leaf = peerLeaf(socket);
      socket.destroy();
      const { payload } = schemaOnlyDecode(documentFromSan(leaf));
      assert.equal(payload.nonce, null);
      assert.deepEqual(Buffer.from(payload.userData!), spki(leaf));
    });
  },
);
