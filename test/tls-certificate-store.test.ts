import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { verifyAttestation } from '../src/verify/verifier.js';
import { verifyPeerAttestation } from '../src/tls/attested-client.js';
import type { AttestedCertificate } from '../src/tls/attested-certificate.js';
import { CertificateStore } from '../src/tls/certificate-store.js';
import { captureLogs } from './helpers/log-capture.js';
import {
  connectTls,
  documentFromSan,
  echo,
  listenTls,
  openTerminator,
  peerLeaf,
  type TerminatorFixture,
} from './helpers/attested-tls.js';

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');

/** Full check of one store certificate: document signature, chain and nonce, and the key binding. */
function assertAttested(cert: AttestedCertificate, nonce: Uint8Array | null, simRootPem: string): void {
  const leaf = new X509Certificate(cert.certPem);
  const verified = verifyAttestation(cert.document, { root: simRootPem, ...(nonce ? { nonce } : {}) });
  assert.equal(
    verified.document.nonce === null ? null : hex(verified.document.nonce),
    nonce === null ? null : hex(nonce),
  );
  assert.equal(
    hex(verified.document.userData!),
    hex(new Uint8Array(leaf.publicKey.export({ type: 'spki', format: 'der' }))),
  );
  assert.equal(hex(documentFromSan(leaf)), hex(cert.document));
}

describe('certificate store: single flight', () => {
  let fx: TerminatorFixture;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  before(async () => {
    fx = await openTerminator();
    listener = await listenTls(fx.terminator, echo);
  });
  after(async () => {
    await listener.close();
    await fx.close();
  });

  it('100 concurrent handshakes on one nonce make exactly one NSM call and share one certificate', async () => {
    const nonce = randomBytes(16);
    const before = fx.nsm.nonceCalls;
    const sockets = await Promise.all(
      Array.from({ length: 100 }, () => connectTls(listener, { servername: `${hex(nonce)}.attest.localhost` })),
    );
    try {
      assert.equal(fx.nsm.nonceCalls - before, 1);
      const fingerprints = new Set(sockets.map((s) => s.getPeerCertificate().fingerprint256));
      assert.equal(fingerprints.size, 1);
      const attestation = verifyPeerAttestation(sockets[0]!, { root: fx.simRootPem, expectedNonce: nonce });
      assert.equal(hex(attestation.document.nonce!), hex(nonce));
    } finally {
      for (const s of sockets) s.destroy();
    }
  });

  it('concurrent store calls on one nonce share one promise result', async () => {
    const nonce = randomBytes(8);
    const before = fx.nsm.nonceCalls;
    const certs = await Promise.all(Array.from({ length: 50 }, () => fx.terminator.store.forNonce(nonce)));
    assert.equal(fx.nsm.nonceCalls - before, 1);
    assert.equal(new Set(certs).size, 1);
  });
});

describe('certificate store: bounded LRU', () => {
  const CAP = 500;
  let fx: TerminatorFixture;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  before(async () => {
    fx = await openTerminator({ terminator: { nonceCacheSize: CAP } });
    listener = await listenTls(fx.terminator, echo);
  });
  after(async () => {
    await listener.close();
    await fx.close();
  });

  it('5,000 TLS handshakes over distinct nonces keep the cache at its cap, and every one verifies', async () => {
    const store = fx.terminator.store;
    const callsBefore = fx.nsm.nonceCalls;
    const TOTAL = 5000;
    const PARALLEL = 16;
    let next = 0;
    let verified = 0;
    const recent: Buffer[] = [];
    // Each worker handshakes one new nonce at a time; the client checks what a real client checks.
    const worker = async () => {
      while (next < TOTAL) {
        next++;
        const nonce = randomBytes(16);
        const socket = await connectTls(listener, { servername: `${hex(nonce)}.attest.localhost`, ca: fx.caPem });
        try {
          assert.equal(socket.authorized, true, String(socket.authorizationError));
          const attestation = verifyPeerAttestation(socket, { root: fx.simRootPem, expectedNonce: nonce });
          assert.equal(hex(attestation.document.nonce!), hex(nonce));
          verified++;
          recent.push(nonce);
          if (recent.length > 20) recent.shift();
        } finally {
          socket.destroy();
        }
        assert.ok(store.size <= CAP, `cache holds ${store.size}`);
      }
    };
    await Promise.all(Array.from({ length: PARALLEL }, worker));
    assert.equal(verified, TOTAL);
    assert.equal(store.size, CAP);
    assert.equal(fx.nsm.nonceCalls - callsBefore, TOTAL);
    assert.equal(store.pending, 0);
    // The most recent nonces are still cached, and what the cache holds is still sound after all the evictions.
    for (const nonce of recent) {
      const cached = store.peek(nonce);
      assert.ok(cached, 'a recent nonce was evicted before older ones');
      assertAttested(cached, nonce, fx.simRootPem);
    }
  });

  it('real handshakes with distinct nonces each get their own attested certificate', async () => {
    for (let i = 0; i < 20; i++) {
      const nonce = randomBytes(12);
      const socket = await connectTls(listener, { servername: `${hex(nonce)}.attest.localhost`, ca: fx.caPem });
      try {
        assert.equal(socket.authorized, true);
        verifyPeerAttestation(socket, { root: fx.simRootPem, expectedNonce: nonce });
      } finally {
        socket.destroy();
      }
    }
    assert.ok(fx.terminator.store.size <= CAP);
  });

  it('evicts the least recently used nonce first', async () => {
    const store = fx.terminator.store;
    const kept = randomBytes(16);
    const dropped = randomBytes(16);
    await store.forNonce(kept);
    await store.forNonce(dropped);
    // Touch `kept`, then push CAP - 1 newer entries: only `dropped` is then the oldest.
    assert.ok(store.peek(kept));
    for (let batch = 0; batch < (CAP - 1) / 100; batch++) {
      await Promise.all(
        Array.from({ length: Math.min(100, CAP - 1 - batch * 100) }, () => store.forNonce(randomBytes(16))),
      );
    }
    assert.ok(store.peek(kept), 'recently used entry kept');
    assert.equal(store.peek(dropped), undefined, 'least recently used entry evicted');
    assert.equal(store.size, CAP);
  });
});

describe('certificate store: NSM failures', () => {
  let fx: TerminatorFixture;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  const logs = captureLogs('debug');
  before(async () => {
    fx = await openTerminator({ logger: logs.logger, terminator: { issueTimeoutMs: 200, maxPendingIssues: 4 } });
    listener = await listenTls(fx.terminator, echo);
  });
  after(async () => {
    await listener.close();
    await fx.close();
  });

  it('keeps serving the base certificate when the NSM fails, logs a warning, and does not cache the failure', async () => {
    const nonce = randomBytes(16);
    const baseFingerprint = new X509Certificate(fx.terminator.store.base.certPem).fingerprint256;
    fx.nsm.failWith = Object.assign(new Error('NSM is down'), { code: 'ERR_NSM_TEST' });
    try {
      const socket = await connectTls(listener, { servername: `${hex(nonce)}.attest.localhost` });
      assert.equal(socket.getPeerCertificate().fingerprint256, baseFingerprint);
      const verified = verifyPeerAttestation(socket, { root: fx.simRootPem });
      assert.equal(verified.document.nonce, null);
      assert.throws(() => verifyPeerAttestation(socket, { root: fx.simRootPem, expectedNonce: nonce }), {
        code: 'ERR_ATTESTATION_NONCE',
      });
      socket.destroy();
    } finally {
      fx.nsm.failWith = undefined;
    }
    assert.ok(
      logs.lines.some((l) => l['level'] === 40 && /nonce certificate/.test(String(l['msg']))),
      'a warning is logged',
    );
    assert.equal(fx.terminator.store.peek(nonce), undefined);
    // The NSM is back: the same nonce now gets its own certificate.
    const socket = await connectTls(listener, { servername: `${hex(nonce)}.attest.localhost` });
    try {
      verifyPeerAttestation(socket, { root: fx.simRootPem, expectedNonce: nonce });
    } finally {
      socket.destroy();
    }
  });

  it('serves the base certificate when the NSM stalls past the issue timeout', async () => {
    let release!: () => void;
    fx.nsm.gate = new Promise<void>((resolve) => (release = resolve));
    try {
      const socket = await connectTls(listener, { servername: `${hex(randomBytes(8))}.attest.localhost` });
      assert.equal(verifyPeerAttestation(socket, { root: fx.simRootPem }).document.nonce, null);
      socket.destroy();
    } finally {
      fx.nsm.gate = undefined;
      release();
    }
  });

  it('refuses new nonces beyond maxPendingIssues instead of queueing without bound', async () => {
    let release!: () => void;
    fx.nsm.gate = new Promise<void>((resolve) => (release = resolve));
    const store = fx.terminator.store;
    const waiting = Array.from({ length: 4 }, () => store.forNonce(randomBytes(8)).catch((e: unknown) => e));
    try {
      await assert.rejects(store.forNonce(randomBytes(8)), { code: 'ERR_TLS_BUSY' });
      assert.equal(store.pending, 4);
    } finally {
      fx.nsm.gate = undefined;
      release();
    }
    await Promise.all(waiting);
    // A caller may have been answered by the 200 ms issue timeout (a loaded machine) while its issuance
    // still runs: the issuances themselves must end and leave nothing pending.
    for (const deadline = Date.now() + 10_000; store.pending > 0 && Date.now() < deadline;)
      await new Promise((resolve) => setTimeout(resolve, 10));
    assert.equal(store.pending, 0);
  });

  it('keeps the old base certificate when a renewal fails, and replaces it (new key) when one succeeds', async () => {
    const store = fx.terminator.store;
    const old = store.base;
    fx.nsm.failWith = Object.assign(new Error('NSM is down'), { code: 'ERR_NSM_TEST' });
    try {
      await assert.rejects(store.renewBase());
    } finally {
      fx.nsm.failWith = undefined;
    }
    assert.equal(store.base, old);
    const renewed = await store.renewBase();
    assert.equal(store.base, renewed);
    assert.notEqual(hex(renewed.document), hex(old.document));
    assertAttested(renewed, null, fx.simRootPem);
    assert.notEqual(
      new X509Certificate(renewed.certPem).publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),
      new X509Certificate(old.certPem).publicKey.export({ type: 'spki', format: 'der' }).toString('hex'),
    );
    const socket = await connectTls(listener, { servername: 'localhost' });
    try {
      assert.equal(peerLeaf(socket).fingerprint256, new X509Certificate(renewed.certPem).fingerprint256);
    } finally {
      socket.destroy();
    }
  });
});

describe('certificate store: renewal timer', () => {
  it('renews the base certificate on its own once two thirds of its life are gone', async () => {
    const fx = await openTerminator();
    // A clock 4 h ahead: the simulated document (3 h) is already past its renewal point.
    const store = await CertificateStore.create({
      nsm: fx.nsm,
      source: fx.terminator.source,
      serverName: 'localhost',
      logger: captureLogs().logger,
      now: () => Date.now() + 4 * 3600_000,
    });
    const guard = setTimeout(() => {}, 30_000);
    try {
      const first = store.base;
      while (store.stats().baseRenewals === 0) await new Promise((resolve) => setTimeout(resolve, 50));
      assert.notEqual(store.base, first);
    } finally {
      clearTimeout(guard);
      store.close();
      await fx.close();
    }
  });
});
