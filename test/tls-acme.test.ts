import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import tls from 'node:tls';
import { after, before, describe, it } from 'node:test';
import { verifyAttestation } from '../src/verify/verifier.js';
import { parseConfig } from '../src/config/load.js';
import { Runtime } from '../src/runtime.js';
import { ACME_ACCOUNT_KEY_FILE } from '../src/tls/acme-account-key.js';
import { documentFromSan, peerLeaf } from './helpers/attested-tls.js';
import { captureLogs } from './helpers/log-capture.js';
import { readAll } from './helpers/net.js';
import { freePort, startPebble, type Pebble } from './helpers/pebble.js';
import { commandMissing } from './helpers/privilege.js';
import { startTinyDns } from './helpers/tiny-dns.js';

const DOMAIN = 'acme.test';
/** Issuance against pebble takes well under a second here; this only bounds a hung test. */
const ISSUE_WAIT_MS = 60_000;

/** A TLS client that trusts only `ca` and checks the name: the handshake itself proves the chain. */
function connectVerified(port: number, servername: string, ca: string): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: '127.0.0.1', port, servername, ca, ALPNProtocols: ['http/1.1'] });
    socket.once('secureConnect', () => resolve(socket));
    socket.once('error', reject);
  });
}

/** One HTTP/1.1 request with `connection: close` over an open TLS socket; the raw answer. */
async function rawRequest(socket: tls.TLSSocket, path: string, host: string): Promise<string> {
  const answer = readAll(socket);
  socket.write(`GET ${path} HTTP/1.1\r\nhost: ${host}\r\nconnection: close\r\n\r\n`);
  return (await answer).toString('utf8');
}

function bodyOf(response: string): string {
  return response.slice(response.indexOf('\r\n\r\n') + 4);
}

describe('ACME certificates from pebble on the TLS ingress', { skip: commandMissing('pebble') }, () => {
  let pebble: Pebble;
  let dns: Awaited<ReturnType<typeof startTinyDns>>;
  let app: http.Server;
  let runtime: Runtime;
  let stateDir: string;
  let ingressPort: number;
  const logs = captureLogs('info');

  before(async () => {
    dns = await startTinyDns([DOMAIN]);
    ingressPort = await freePort();
    pebble = await startPebble({ tlsPort: ingressPort, dnsPort: dns.port });
    app = http.createServer((request, response) => response.end(`app saw ${request.url}`));
    app.listen(0, '127.0.0.1');
    await once(app, 'listening');
    stateDir = await mkdtemp(join(tmpdir(), 'acme-runtime-'));
    const [apiPort, healthPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
    const config = parseConfig(
      `
[runtime]
state_dir = "${stateDir}"
health_listen = "tcp:127.0.0.1:${healthPort}"
[ingress]
listen = "tcp:127.0.0.1:${ingressPort}"
app = "tcp:127.0.0.1:${(app.address() as AddressInfo).port}"
http_aware = true
[metrics]
enabled = false
listen = "tcp:127.0.0.1:${metricsPort}"
[attestation]
api_listen = "tcp:127.0.0.1:${apiPort}"
[tls]
server_name = "localhost"
alpn = ["http/1.1"]
[tls.acme]
enabled = true
directory_url = "${pebble.directoryUrl}"
email = "ops@acme.test"
domains = ["${DOMAIN}"]
ca_file = "${pebble.httpsCaFile}"
retry_min_ms = 200
retry_max_ms = 2000
`,
      'dev',
    );
    runtime = await Runtime.start(config, 'dev', logs.logger);
  });

  after(async () => {
    await runtime?.stop();
    await pebble?.close();
    await dns?.close();
    app?.close();
    if (stateDir) await rm(stateDir, { recursive: true, force: true });
  });

  it('issues a certificate over TLS-ALPN-01 and serves it for the ACME domain, the attested base for other names', async () => {
    const deadline = Date.now() + ISSUE_WAIT_MS;
    while (!logs.lines.some((line) => line.msg === 'ACME certificate now served')) {
      if (Date.now() > deadline)
        assert.fail(
          `no ACME certificate within ${ISSUE_WAIT_MS} ms\nlogs:\n${logs.text()}\npebble:\n${pebble.output()}`,
        );
      await sleep(50);
    }
    assert.ok(
      dns.queries.some((q) => q === `${DOMAIN}/1`),
      'pebble resolved the domain through the test DNS',
    );
    assert.ok(
      logs.lines.some((line) => line.msg === 'answered an ACME TLS-ALPN-01 validation'),
      'the ingress answered the validation',
    );

    // SNI = the ACME domain: a client trusting only pebble's root completes a verified handshake.
    const root = await pebble.issuingRootPem();
    const acmeSocket = await connectVerified(ingressPort, DOMAIN, root);
    assert.equal(acmeSocket.authorized, true);
    const leaf = peerLeaf(acmeSocket);
    assert.equal(leaf.subjectAltName, `DNS:${DOMAIN}`, 'the ACME leaf names only the domain (no attested SAN)');
    const rootCert = new X509Certificate(root);
    const intermediate = new X509Certificate(acmeSocket.getPeerCertificate(true).issuerCertificate.raw);
    assert.ok(
      leaf.verify(intermediate.publicKey) && leaf.checkIssued(intermediate),
      'the leaf is signed by the intermediate sent with it',
    );
    assert.ok(
      intermediate.verify(rootCert.publicKey) && intermediate.checkIssued(rootCert),
      "the intermediate is signed by pebble's root",
    );
    assert.equal(leaf.publicKey.asymmetricKeyType, 'ec', 'the certificate key is the ECDSA key made in the runtime');

    // The decrypted stream goes to the app unchanged.
    const response = await rawRequest(acmeSocket, '/hello', DOMAIN);
    assert.match(response, /^HTTP\/1\.1 200 /);
    assert.equal(bodyOf(response), 'app saw /hello');

    // The well-known document on an ACME connection binds the ACME key.
    const wellKnown = await rawRequest(
      await connectVerified(ingressPort, DOMAIN, root),
      '/.well-known/attestation',
      DOMAIN,
    );
    assert.match(wellKnown, /^HTTP\/1\.1 200 /);
    const document = Buffer.from(
      (JSON.parse(bodyOf(wellKnown)) as { attestation_doc: string }).attestation_doc,
      'base64',
    );
    const simRoot = await readFile(join(stateDir, 'sim-nsm-root.pem'), 'utf8');
    verifyAttestation(document, { root: simRoot, userData: leaf.publicKey.export({ type: 'spki', format: 'der' }) });

    // SNI = anything else: the attested base certificate from the runtime's own CA, not pebble's.
    const runtimeCa = await readFile(join(stateDir, 'ca.pem'), 'utf8');
    const baseSocket = await connectVerified(ingressPort, 'localhost', runtimeCa);
    const baseLeaf = peerLeaf(baseSocket);
    baseSocket.destroy();
    assert.match(baseLeaf.subjectAltName ?? '', /^DNS:localhost, DNS:[0-9a-f]+\.localhost$/);
    verifyAttestation(documentFromSan(baseLeaf), {
      root: simRoot,
      userData: baseLeaf.publicKey.export({ type: 'spki', format: 'der' }),
    });
    await assert.rejects(
      connectVerified(ingressPort, 'localhost', root),
      'the base certificate does not chain to pebble',
    );

    // The account key persists in the state dir, private to the runtime's user.
    assert.equal((await stat(join(stateDir, ACME_ACCOUNT_KEY_FILE))).mode & 0o777, 0o600);
    const health = runtime.health.report();
    assert.equal(health.parts.acme?.ok, true, JSON.stringify(health.parts.acme));
  });
});
