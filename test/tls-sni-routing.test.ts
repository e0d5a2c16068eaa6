import assert from 'node:assert/strict';
import { createPublicKey, randomBytes } from 'node:crypto';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { crypto as acmeCrypto, type Authorization } from 'acme-client';
import { verifyAttestation } from '../src/verify/verifier.js';
import { silentLogger } from '../src/core/log.js';
import { AcmeCertificates } from '../src/tls/acme-certificates.js';
import type { AcmeIssued } from '../src/tls/acme-order.js';
import { TlsAlpnChallenges } from '../src/tls/tls-alpn-challenges.js';
import { captureLogs } from './helpers/log-capture.js';
import {
  connectTls,
  documentFromSan,
  listenTls,
  openTerminator,
  peerLeaf,
  type TerminatorFixture,
} from './helpers/attested-tls.js';
import { closesWithin } from './helpers/net.js';

const DOMAIN = 'acme.test';
const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString('hex');
const spkiOf = (cert: { publicKey: { export(o: { type: 'spki'; format: 'der' }): Buffer } }) =>
  cert.publicKey.export({ type: 'spki', format: 'der' });

/** Handshake with an explicit ALPN list; resolves with the socket, or rejects with the handshake error. */
function handshake(port: number, servername: string, alpn: string[]): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ALPNProtocols: alpn, rejectUnauthorized: false });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('SNI routing with ACME domains', () => {
  let fx: TerminatorFixture;
  let acme: AcmeCertificates;
  let listener: Awaited<ReturnType<typeof listenTls>>;
  /** Server-side sockets, in accept order. */
  const accepted: tls.TLSSocket[] = [];
  const logs = captureLogs('info');

  before(async () => {
    const challenges = new TlsAlpnChallenges();
    // A stand-in CA: the runtime's own, signing a leaf for the key the manager generated.
    const order = async (keyPem: string): Promise<AcmeIssued> => {
      const spki = new Uint8Array(createPublicKey(keyPem).export({ type: 'spki', format: 'der' }));
      const leaf = await fx.terminator.source.issue({
        serverName: DOMAIN,
        dnsNames: [DOMAIN],
        publicKeySpki: spki,
        attestationDocument: new Uint8Array(),
      });
      return {
        certPem: leaf.certPem,
        chainPem: leaf.chainPem,
        notBefore: new Date(Date.now() - 1000),
        notAfter: leaf.notAfter,
      };
    };
    const nsmHolder: { nsm?: TerminatorFixture['nsm'] } = {};
    acme = new AcmeCertificates({
      domains: [DOMAIN],
      order,
      challenges,
      renewAtFraction: 2 / 3,
      retryMinMs: 1000,
      retryMaxMs: 10_000,
      logger: silentLogger(),
      get nsm() {
        return nsmHolder.nsm;
      },
    });
    fx = await openTerminator({ terminator: { acme, logger: logs.logger } });
    nsmHolder.nsm = fx.nsm;
    listener = await listenTls(fx.terminator, (socket) => {
      accepted.push(socket);
      socket.resume();
    });
  });
  after(async () => {
    acme.close();
    await listener.close();
    await fx.close();
  });

  it('serves the attested base for an ACME domain until its certificate is issued', async () => {
    const socket = await connectTls(listener, { servername: DOMAIN, checkName: 'localhost' });
    const leaf = peerLeaf(socket);
    assert.match(leaf.subjectAltName ?? '', /^DNS:localhost, DNS:[0-9a-f]+\.localhost$/);
    assert.equal(await fx.terminator.established(accepted.at(-1)!), true, 'an ordinary handshake is passed on');
    socket.destroy();
  });

  it('after issuance: the ACME domain gets the ACME leaf; other names, nonce names included, keep the attested ones', async () => {
    await acme.renewNow();
    assert.ok(acme.current);

    for (const name of [DOMAIN, 'ACME.Test']) {
      const socket = await connectTls(listener, { servername: name, checkName: DOMAIN });
      const leaf = peerLeaf(socket);
      socket.destroy();
      assert.equal(leaf.subjectAltName, `DNS:${DOMAIN}`, `SNI ${name}`);
      // GET /.well-known/attestation on this connection: a document binding the ACME key.
      const document = await fx.terminator.attestationFor(accepted.at(-1)!);
      verifyAttestation(document, { root: fx.simRootPem, userData: spkiOf(leaf) });
    }

    const base = await connectTls(listener, { servername: 'localhost' });
    const baseLeaf = peerLeaf(base);
    base.destroy();
    assert.match(baseLeaf.subjectAltName ?? '', /^DNS:localhost, DNS:[0-9a-f]+\.localhost$/);
    assert.equal(hex(await fx.terminator.attestationFor(accepted.at(-1)!)), hex(documentFromSan(baseLeaf)));

    const nonce = randomBytes(12);
    const nonceSocket = await connectTls(listener, {
      servername: `${hex(nonce)}.attest.localhost`,
      checkName: `${hex(nonce)}.attest.localhost`,
    });
    const nonceLeaf = peerLeaf(nonceSocket);
    nonceSocket.destroy();
    const verified = verifyAttestation(documentFromSan(nonceLeaf), {
      root: fx.simRootPem,
      nonce,
      userData: spkiOf(nonceLeaf),
    });
    assert.equal(hex(verified.document.nonce!), hex(nonce));
    assert.equal(
      hex(await fx.terminator.attestationFor(accepted.at(-1)!)),
      hex(documentFromSan(nonceLeaf)),
      'the well-known document is that of the nonce certificate served',
    );

    const other = await connectTls(listener, { servername: 'elsewhere.example', checkName: 'localhost' });
    assert.match(peerLeaf(other).subjectAltName ?? '', /^DNS:localhost, /);
    other.destroy();
  });

  it('answers a TLS-ALPN-01 validation with the challenge certificate, then closes without passing the connection on', async () => {
    const keyAuthorization = `${randomBytes(16).toString('base64url')}.${randomBytes(32).toString('base64url')}`;
    const authz = { identifier: { type: 'dns', value: DOMAIN } } as Authorization;
    const [keyPem, certPem] = await acmeCrypto.createAlpnCertificate(
      authz,
      keyAuthorization,
      await acmeCrypto.createPrivateEcdsaKey(),
    );
    acme.challenges.add(DOMAIN, certPem.toString(), keyPem.toString());
    try {
      const validator = await handshake(listener.port, DOMAIN, ['acme-tls/1']);
      assert.equal(validator.alpnProtocol, 'acme-tls/1');
      const shown = validator.getPeerX509Certificate();
      assert.ok(
        shown && acmeCrypto.isAlpnCertificateAuthorizationValid(shown.toString(), keyAuthorization),
        'the acmeIdentifier extension carries the key authorization digest',
      );
      assert.equal(await closesWithin(validator, 5000), true, 'the server closes the validation connection');
      validator.destroy();
      assert.equal(
        await fx.terminator.established(accepted.at(-1)!),
        false,
        'the ingress would not connect it to the app',
      );
      assert.ok(logs.lines.some((line) => line.msg === 'answered an ACME TLS-ALPN-01 validation'));

      // While the challenge is pending, ordinary clients of the domain still get the ACME leaf.
      // ALPN comes from tls.alpn, by default http/1.1 only: a client that prefers h2 is not given it.
      const client = await handshake(listener.port, DOMAIN, ['h2', 'http/1.1']);
      assert.equal(client.alpnProtocol, 'http/1.1');
      assert.equal(peerLeaf(client).subjectAltName, `DNS:${DOMAIN}`);
      client.destroy();

      // acme-tls/1 is offered only for a domain with a pending challenge.
      await assert.rejects(handshake(listener.port, 'localhost', ['acme-tls/1']), /no application protocol/);
    } finally {
      acme.challenges.remove(DOMAIN);
    }
    await assert.rejects(handshake(listener.port, DOMAIN, ['acme-tls/1']), /no application protocol/);
  });
});
