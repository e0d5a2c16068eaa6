import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { startAttestationApi } from '../src/attestation/attestation-api.js';
import { SIM_ROOT_FILE } from '../src/attestation/sim-chain.js';
import { defaultSimulatedPcr, openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import { silentLogger } from '../src/core/log.js';

const HOUR = 3600_000;
const scratch = mkdtempSync(join(tmpdir(), 'sim-nsm-verify-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
let dirCount = 0;
const freshStateDir = (): string => join(scratch, `state-${dirCount++}`);
const rootOf = (stateDir: string): string => readFileSync(join(stateDir, SIM_ROOT_FILE), 'utf8');
const bytes = (text: string): Uint8Array => new Uint8Array(Buffer.from(text, 'utf8'));

describe('simulated documents under the real verifier', () => {
  test('verify against <state-dir>/sim-nsm-root.pem and carry the requested fields', async () => {
    const stateDir = freshStateDir();
    const nsm = await openSimulatedNsm({ stateDir });
    const nonce = new Uint8Array(1024).fill(1);
    const userData = new Uint8Array(1024).fill(2);
    const publicKey = new Uint8Array(1024).fill(3);
    const doc = await nsm.attest({ nonce, userData, publicKey });
    const { document, signingCertificate } = verifyAttestation(doc, {
      root: rootOf(stateDir),
      nonce,
      userData,
      publicKey,
    });
    assert.equal(document.moduleId, nsm.moduleId);
    assert.equal(document.digest, 'SHA384');
    assert.equal(document.pcrs.size, 16);
    assert.equal(document.cabundle.length, 4);
    assert.ok(signingCertificate.raw.equals(Buffer.from(document.certificate)));
    assert.deepEqual(document.pcrs.get(0), defaultSimulatedPcr(0));
  });

  test('fail against the default AWS Nitro root', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    const doc = await nsm.attest({});
    assert.throws(() => verifyAttestation(doc), { code: 'ERR_ATTESTATION_ROOT' });
  });

  test('a second open of the state dir still verifies against the same root file', async () => {
    const stateDir = freshStateDir();
    await openSimulatedNsm({ stateDir });
    const root = rootOf(stateDir);
    const again = await openSimulatedNsm({ stateDir });
    verifyAttestation(await again.attest({}), { root });
  });

  test('documents from another state dir do not verify', async () => {
    const mine = freshStateDir();
    await openSimulatedNsm({ stateDir: mine });
    const other = await openSimulatedNsm({ stateDir: freshStateDir() });
    const doc = await other.attest({});
    assert.throws(() => verifyAttestation(doc, { root: rootOf(mine) }), { code: 'ERR_ATTESTATION_ROOT' });
  });

  test('debug mode needs allowDebug; configured PCRs match expectedPcrs', async () => {
    const stateDir = freshStateDir();
    const pcr8 = new Uint8Array(48).fill(8);
    const debug = await openSimulatedNsm({ stateDir, debug: true, pcrs: { 8: pcr8 } });
    const doc = await debug.attest({});
    const root = rootOf(stateDir);
    assert.throws(() => verifyAttestation(doc, { root }), { code: 'ERR_ATTESTATION_DEBUG' });
    verifyAttestation(doc, { root, allowDebug: true, expectedPcrs: [{ 0: new Uint8Array(48), 8: pcr8 }] });
    assert.throws(() => verifyAttestation(doc, { root, allowDebug: true, expectedPcrs: [{ 8: new Uint8Array(48) }] }), {
      code: 'ERR_ATTESTATION_PCR',
    });
  });

  test('rotated signing certificates verify at their own time; the old document expires', async () => {
    const stateDir = freshStateDir();
    let now = Date.now();
    const nsm = await openSimulatedNsm({ stateDir, now: () => now });
    const root = rootOf(stateDir);
    const early = await nsm.attest({});
    const earlyAt = new Date(now);
    now += 2.5 * HOUR;
    const late = await nsm.attest({});
    verifyAttestation(late, { root, at: new Date(now) });
    verifyAttestation(early, { root, at: earlyAt });
    assert.throws(() => verifyAttestation(early, { root, at: new Date(now + HOUR) }), {
      code: 'ERR_ATTESTATION_EXPIRED',
    });
  });
});

describe('documents fetched over the internal API verify with exactly the requested fields', () => {
  test('GET with hex parameters and POST in the evervault form', async () => {
    const stateDir = freshStateDir();
    const nsm = await openSimulatedNsm({ stateDir });
    const root = rootOf(stateDir);
    const api = await startAttestationApi({ listen: { host: '127.0.0.1', port: 0 }, nsm, logger: silentLogger() });
    const base = `http://127.0.0.1:${api.address.port}`;
    try {
      const nonce = Uint8Array.of(0, 1, 2, 0xff);
      const userData = bytes('user data');
      const publicKey = new Uint8Array(91).fill(0x30);
      const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
      const got = await fetch(
        `${base}/attestation-doc?nonce=${hex(nonce)}&user_data=${hex(userData)}&public_key=${hex(publicKey)}`,
      );
      assert.equal(got.status, 200);
      const fromGet = verifyAttestation(new Uint8Array(await got.arrayBuffer()), {
        root,
        nonce,
        userData,
        publicKey,
      }).document;
      assert.deepEqual([fromGet.nonce, fromGet.userData, fromGet.publicKey], [nonce, userData, publicKey]);

      const onlyNonce = await fetch(`${base}/attestation-doc?nonce=${hex(nonce)}`, {
        headers: { accept: 'application/json' },
      });
      const { attestation_doc } = (await onlyNonce.json()) as { attestation_doc: string };
      const sparse = verifyAttestation(Buffer.from(attestation_doc, 'base64'), { root, nonce }).document;
      assert.equal(sparse.userData, null);
      assert.equal(sparse.publicKey, null);

      const posted = await fetch(`${base}/attestation-doc`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          nonce: 'a nonce',
          challenge: 'a challenge',
          publicKey: Buffer.from(publicKey).toString('base64'),
        }),
      });
      assert.equal(posted.status, 200);
      const fromPost = verifyAttestation(new Uint8Array(await posted.arrayBuffer()), {
        root,
        nonce: bytes('a nonce'),
        userData: bytes('a challenge'),
        publicKey,
      }).document;
      assert.deepEqual(
        [fromPost.nonce, fromPost.userData, fromPost.publicKey],
        [bytes('a nonce'), bytes('a challenge'), publicKey],
      );
      assert.throws(
        () => verifyAttestation(new Uint8Array(0), { root }),
        (error: { code?: string }) => /^ERR_ATTESTATION_/.test(error.code ?? ''),
      );
    } finally {
      await api.close();
    }
  });
});
