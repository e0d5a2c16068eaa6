import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo, LookupFunction } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent, fetch } from 'undici';
import type { Ingress } from '../src/ingress/ingress.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import { attestedFetch } from '../src/client/index.js';
import { nonceSentInSni } from '../src/tls/attested-client.js';
import { generateSniNonce, isCaseStableNonce, parseNonceLabel } from '../src/tls/nonce-label.js';
import { openTerminator, startTlsIngress, type TerminatorFixture } from './helpers/attested-tls.js';
import { CLI } from './helpers/paths.js';
import { commandMissing } from './helpers/privilege.js';

/** Runs a command without blocking this process, which serves the ingress it talks to. */
function run(command: string, args: string[]): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(command, args, { encoding: 'utf8', timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ status: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr });
    });
  });
}

const hex = (bytes: Uint8Array | null) => (bytes === null ? 'null' : Buffer.from(bytes).toString('hex'));
const label = (nonce: Uint8Array) => Buffer.from(nonce).toString('base64url');
/** 24 base64 digits with capitals: a nonce an evervault-style client could pick. Lowercased, it is 18 other bytes. */
const CAPITALS_NONCE = new Uint8Array(Buffer.from('Hello0World1Nonce2Caps3X', 'base64url'));

// Every *.attest.localhost name goes to the loopback ingress, as curl --resolve does; no resolver is asked.
const loopback: LookupFunction = (_host, options, callback) => {
  if ((options as { all?: boolean }).all)
    (callback as (e: null, a: Array<{ address: string; family: number }>) => void)(null, [
      { address: '127.0.0.1', family: 4 },
    ]);
  else callback(null, '127.0.0.1', 4);
};

describe('base64 SNI nonces and clients that lowercase the server name', () => {
  let fx: TerminatorFixture;
  let app: http.Server;
  let ingress: Ingress;
  let port: number;
  const url = (nonce: Uint8Array) => `https://${label(nonce)}.attest.localhost:${port}/.well-known/attestation`;
  const documentIn = (body: string) =>
    new Uint8Array(Buffer.from((JSON.parse(body) as { attestation_doc: string }).attestation_doc, 'base64'));

  before(async () => {
    fx = await openTerminator({ terminator: { sniNonceEncoding: 'base64' } });
    app = http.createServer((_request, response) => response.end('app'));
    app.listen(0, '127.0.0.1');
    await once(app, 'listening');
    ingress = await startTlsIngress(fx.terminator, (app.address() as AddressInfo).port, { httpAware: true });
    port = (ingress.address as { port: number }).port;
  });
  after(async () => {
    await ingress.stop(0);
    app.close();
    await fx.close();
  });

  /** GET through Node's https with a URL: the URL parser lowercases the host, and Node sends that as SNI. */
  function nodeHttpsGet(target: string): Promise<{ body: string; san: string }> {
    return new Promise((resolve, reject) => {
      const request = https.get(new URL(target), { ca: fx.caPem, lookup: loopback, agent: false }, (response) => {
        const san = (response.socket as import('node:tls').TLSSocket).getPeerCertificate().subjectaltname ?? '';
        let body = '';
        response.on('data', (chunk: Buffer) => (body += chunk.toString()));
        response.on('end', () => resolve({ body, san }));
      });
      request.on('error', reject);
    });
  }

  it('generates only base64 nonces whose label is lowercase letters and digits, canonical, of every size', () => {
    const seen = new Set<string>();
    const digits = new Set<string>();
    for (let i = 0; i < 500; i++) {
      const nonce = generateSniNonce('base64', 18);
      const text = label(nonce);
      assert.equal(nonce.byteLength, 18);
      assert.match(text, /^[a-z0-9]{24}$/);
      assert.ok(isCaseStableNonce(nonce, 'base64'));
      assert.equal(hex(parseNonceLabel(`${text.toUpperCase()}.attest.x`.toLowerCase(), 'base64') ?? null), hex(nonce));
      seen.add(text);
      for (const c of text) digits.add(c);
    }
    assert.equal(seen.size, 500, 'no repeats');
    assert.equal(digits.size, 36, 'every lowercase letter and digit is drawn');
    for (let bytes = 1; bytes <= 47; bytes++) {
      const nonce = generateSniNonce('base64', bytes);
      assert.equal(nonce.byteLength, bytes);
      assert.ok(isCaseStableNonce(nonce, 'base64'), `${bytes} bytes: ${label(nonce)}`);
      assert.equal(
        hex(parseNonceLabel(`${label(nonce)}.attest.x`, 'base64') ?? null),
        hex(nonce),
        `${bytes} bytes decode back`,
      );
    }
    assert.equal(isCaseStableNonce(CAPITALS_NONCE, 'base64'), false);
    assert.equal(
      isCaseStableNonce(new Uint8Array(Buffer.from('ab_c', 'base64url')), 'base64'),
      false,
      '"_" is not a host name character',
    );
    assert.equal(isCaseStableNonce(CAPITALS_NONCE, 'hex'), true);
  });

  it('shows the hazard: a nonce with capitals, sent through Node https with a URL, comes back as other bytes', async () => {
    const answer = await nodeHttpsGet(url(CAPITALS_NONCE));
    const document = documentIn(answer.body);
    const lowered = new Uint8Array(Buffer.from(label(CAPITALS_NONCE).toLowerCase(), 'base64url'));
    const verified = verifyAttestation(document, { root: fx.simRootPem });
    assert.equal(hex(verified.document.nonce), hex(lowered), 'the server attested the lowercased label');
    assert.notEqual(hex(verified.document.nonce), hex(CAPITALS_NONCE));
    assert.throws(() => verifyAttestation(document, { root: fx.simRootPem, nonce: CAPITALS_NONCE }), {
      code: 'ERR_ATTESTATION_NONCE',
    });
    // Our clients refuse to send such a label at all.
    assert.throws(() => nonceSentInSni(`${label(CAPITALS_NONCE)}.attest.localhost`, CAPITALS_NONCE, 'base64'), {
      code: 'ERR_TLS_NONCE_LABEL',
    });
  });

  it('Node https with a URL: our base64 nonce survives lowercasing, and the plain name stays the first SAN', async () => {
    const nonce = generateSniNonce('base64', 18);
    const answer = await nodeHttpsGet(url(nonce));
    const verified = verifyAttestation(documentIn(answer.body), { root: fx.simRootPem, nonce });
    assert.equal(hex(verified.document.nonce), hex(nonce));
    // rustls/webpki 0.22 stops at the first SAN it cannot parse (the 8,600-character label), so the plain name leads.
    assert.match(answer.san, /^DNS:[a-z0-9]+\.attest\.localhost, DNS:[0-9a-f]{2000,}\./);
  });

  it('undici fetch with a URL: our base64 nonce survives lowercasing', async () => {
    const nonce = generateSniNonce('base64', 18);
    const dispatcher = new Agent({ connect: { ca: fx.caPem, lookup: loopback } });
    try {
      const response = await fetch(url(nonce), { dispatcher });
      assert.equal(response.status, 200);
      assert.equal(response.headers.get('access-control-allow-origin'), '*');
      const verified = verifyAttestation(documentIn(await response.text()), { root: fx.simRootPem, nonce });
      assert.equal(hex(verified.document.nonce), hex(nonce));
    } finally {
      await dispatcher.close();
    }
  });

  it(
    'curl: our base64 nonce survives lowercasing; one with capitals does not',
    { skip: commandMissing('curl') },
    async () => {
      const ca = join(fx.stateDir, 'ca.pem');
      writeFileSync(ca, fx.caPem);
      const curl = async (nonce: Uint8Array) => {
        const host = `${label(nonce)}.attest.localhost`;
        const done = await run('curl', [
          '-sS',
          '--http1.1',
          '--max-time',
          '20',
          '--cacert',
          ca,
          '--resolve',
          `${host}:${port}:127.0.0.1`,
          url(nonce),
        ]);
        assert.equal(done.status, 0, done.stderr);
        return verifyAttestation(documentIn(done.stdout), { root: fx.simRootPem }).document.nonce;
      };
      const nonce = generateSniNonce('base64', 18);
      assert.equal(hex(await curl(nonce)), hex(nonce));
      assert.notEqual(hex(await curl(CAPITALS_NONCE)), hex(CAPITALS_NONCE), 'curl lowercased the capitals');
    },
  );

  it('attestedFetch in base64 mode sends a fresh case-stable nonce per connection and requires it', async () => {
    const nonces: string[] = [];
    const response = await attestedFetch(`https://127.0.0.1:${port}/.well-known/attestation`, {
      root: fx.simRootPem,
      servername: 'localhost',
      sniNonceEncoding: 'base64',
      onAttested: ({ servername, attestation }) => {
        assert.match(servername, /^[a-z0-9]{24}\.attest\.localhost$/);
        nonces.push(hex(attestation.document.nonce));
      },
    });
    const document = verifyAttestation(documentIn(await response.text()), { root: fx.simRootPem });
    assert.equal(nonces.length, 1);
    assert.equal(
      hex(document.document.nonce),
      nonces[0],
      'the well-known answer on that connection carries the same nonce',
    );
  });

  it('attest connect --sni-nonce-encoding base64: a fresh nonce verifies; a --nonce with capitals is refused before connecting', async () => {
    const root = join(fx.stateDir, 'sim-nsm-root.pem');
    const attestConnect = (...args: string[]) =>
      run(process.execPath, [CLI, 'attest', 'connect', `127.0.0.1:${port}`, ...args]);
    const base64Sni = ['--servername', 'localhost', '--sni-nonce-encoding', 'base64'];
    const ok = await attestConnect(...base64Sni, '--fresh-nonce', '--root', root, '--json');
    assert.equal(ok.status, 0, ok.stderr);
    const out = JSON.parse(ok.stdout) as {
      connection: { servername: string; nonce: string };
      document: { nonce: string };
    };
    assert.match(out.connection.servername, /^[a-z0-9]{24}\.attest\.localhost$/);
    assert.equal(out.document.nonce, out.connection.nonce);
    assert.equal(hex(parseNonceLabel(out.connection.servername, 'base64') ?? null), out.document.nonce);

    const refused = await attestConnect(...base64Sni, '--nonce', hex(CAPITALS_NONCE), '--root', root);
    assert.equal(refused.status, 2, refused.stderr);
    assert.match(refused.stderr, /--nonce: its base64 label "Hello0World1Nonce2Caps3X" has capitals/);
    const badEncoding = await attestConnect('--sni-nonce-encoding', 'b64');
    assert.equal(badEncoding.status, 2);
    assert.match(badEncoding.stderr, /--sni-nonce-encoding "b64": expected hex or base64/);
  });
});
