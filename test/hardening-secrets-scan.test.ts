/**
 * A full run of the real CLI at log_level "trace" (TLS ingress, the app's traffic with a body,
 * the attestation API both ways, a nonce handshake, the well-known route and a [[secrets]] entry
 * through the fake KMS), then every byte it wrote is searched for what must never be logged: key
 * material, attestation document bytes, the request body, the configured secret and credentials.
 */
import assert from 'node:assert/strict';
import { createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { verifyAttestation } from '../src/verify/verifier.js';
import { CA_KEY_FILE } from '../src/tls/certificate-authority.js';
import { connectTls, documentFromSan, peerLeaf } from './helpers/attested-tls.js';
import { eventually, portOf, runCli, type CliRun } from './helpers/cli-run.js';
import { startFakeKmsForStateDir, type FakeKms } from './helpers/fake-kms.js';
import { freePort } from './helpers/net.js';

const credentials = {
  accessKeyId: 'AKIAFAKEKMSSCAN00001',
  secretAccessKey: `scan/${randomBytes(18).toString('base64url')}`,
};
const dir = mkdtempSync(join(tmpdir(), 'secrets-scan-'));
const stateDir = join(dir, 'state');
let kms: FakeKms;

before(async () => {
  kms = await startFakeKmsForStateDir(() => stateDir, credentials);
});
after(async () => {
  await kms.close();
  rmSync(dir, { recursive: true, force: true });
});

// The customer app: answers with hashes only (of the body, of its secret), so nothing it prints or
// sends back carries a value the scan looks for. It writes nothing to stdout or stderr.
const APP = `
import { createHash } from 'node:crypto';
import http from 'node:http';
const hash = (value) => createHash('sha256').update(value).digest('hex');
http.createServer((request, response) => {
  const chunks = [];
  request.on('data', (chunk) => chunks.push(chunk));
  request.on('end', () => {
    const body = request.url === '/secret' ? hash(process.env.APP_SECRET ?? '') : hash(Buffer.concat(chunks)) + ' ' + process.env.RESPONSE_MARKER;
    response.end(body);
  });
}).listen(Number(process.env.APP_PORT), '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
`;

const sha256 = (value: string | Buffer) => createHash('sha256').update(value).digest('hex');

/** A request over the TLS ingress, trusting only the runtime's CA. */
function viaIngress(
  port: number,
  ca: string,
  method: string,
  path: string,
  body?: string,
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const request = https.request(
      { host: '127.0.0.1', port, method, path, ca, servername: 'localhost', agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
        );
      },
    );
    request.on('error', reject);
    request.end(body);
  });
}

/**
 * The text forms a leaked byte string could take in a JSON log: hex (either case), and base64 and
 * base64url of the bytes from each of the three alignments they could have inside a longer encoded
 * value (whole 3-byte groups only), so a leak is found even as part of something bigger.
 */
function encodedForms(bytes: Buffer): string[] {
  const forms = new Set([bytes.toString('hex'), bytes.toString('hex').toUpperCase()]);
  for (let shift = 0; shift < 3; shift++) {
    const part = bytes.subarray(shift);
    const whole = part.subarray(0, part.length - (part.length % 3));
    forms.add(whole.toString('base64'));
    forms.add(whole.toString('base64url'));
  }
  return [...forms];
}

/** Windows of `bytes` (start, middle, end), so a truncated or partial copy is found too. */
function windows(bytes: Uint8Array, size = 24): Buffer[] {
  const all = Buffer.from(bytes);
  if (all.length <= size * 3) return [all];
  const middle = Math.floor(all.length / 2);
  return [all.subarray(0, size), all.subarray(middle, middle + size), all.subarray(all.length - size)];
}

/** The private scalar of a PEM key: what key material is, whatever its encoding. */
function privateScalar(pem: string): Buffer {
  return Buffer.from(createPrivateKey(pem).export({ format: 'jwk' }).d!, 'base64url');
}

describe('nothing secret reaches the logs (real CLI, log_level = "trace")', () => {
  it('key material, document bytes, request bodies and the configured secret appear in no output', async () => {
    const appPort = await freePort();
    const secret = `scan-secret-${randomBytes(16).toString('hex')}`;
    const bodyMarker = `request-body-${randomBytes(16).toString('hex')}`;
    const responseMarker = `response-body-${randomBytes(16).toString('hex')}`;
    const appFile = join(dir, 'app.mjs');
    writeFileSync(appFile, APP);
    const config = join(dir, 'scan.toml');
    writeFileSync(
      config,
      [
        '[runtime]',
        'log_level = "trace"',
        'health_listen = "tcp:127.0.0.1:0"',
        '[ingress]',
        'listen = "tcp:127.0.0.1:0"',
        `app = "tcp:127.0.0.1:${appPort}"`,
        'http_aware = true',
        '[tls]',
        'server_name = "localhost"',
        'alpn = ["http/1.1"]',
        '[attestation]',
        'api_listen = "tcp:127.0.0.1:0"',
        '[metrics]',
        'enabled = false',
        '[app]',
        'healthcheck_interval_ms = 100',
        '[kms]',
        `region = "${kms.region}"`,
        `endpoint = "${kms.url}"`,
        'via = "direct"',
        'max_attempts = 1',
        '[[secrets]]',
        'name = "APP_SECRET"',
        `ciphertext = "${kms.encrypt(Buffer.from(secret)).toString('base64')}"`,
        `key_id = "${kms.alias}"`,
      ].join('\n'),
    );
    const run: CliRun = runCli(['dev', '--config', config, '--state-dir', stateDir, '--', process.execPath, appFile], {
      env: {
        APP_PORT: String(appPort),
        RESPONSE_MARKER: responseMarker,
        AWS_ACCESS_KEY_ID: credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      },
    });
    const documents: Uint8Array[] = [];
    try {
      const ingressPort = portOf((await run.waitFor('ingress listening')).listen);
      const apiPort = portOf((await run.waitFor('internal API listening')).listen);
      await run.waitFor('app is up');
      const ca = readFileSync(join(stateDir, 'ca.pem'), 'utf8');
      const simRoot = readFileSync(join(stateDir, 'sim-nsm-root.pem'), 'utf8');

      // The app's traffic through the TLS ingress: a body in, a body out, and the secret's hash.
      const posted = await eventually(
        () => viaIngress(ingressPort, ca, 'POST', '/upload', bodyMarker),
        'the app answering through the ingress',
      );
      assert.equal(posted.body, `${sha256(bodyMarker)} ${responseMarker}`);
      assert.equal(
        (await viaIngress(ingressPort, ca, 'GET', '/secret')).body,
        sha256(secret),
        'the app did not get the secret',
      );
      const wellKnown = await viaIngress(ingressPort, ca, 'GET', '/.well-known/attestation');
      documents.push(
        Buffer.from((JSON.parse(wellKnown.body) as { attestation_doc: string }).attestation_doc, 'base64'),
      );

      // The attestation API: GET raw and JSON, POST evervault-style.
      const api = `http://127.0.0.1:${apiPort}/attestation-doc`;
      const raw = await fetch(
        `${api}?nonce=${randomBytes(8).toString('hex')}&user_data=${randomBytes(32).toString('hex')}`,
      );
      assert.equal(raw.status, 200);
      documents.push(new Uint8Array(await raw.arrayBuffer()));
      const json = await fetch(`${api}?nonce=00ff`, { headers: { accept: 'application/json' } });
      documents.push(Buffer.from(((await json.json()) as { attestation_doc: string }).attestation_doc, 'base64'));
      const evervault = await fetch(api, {
        method: 'POST',
        body: JSON.stringify({ nonce: 'scan-nonce', challenge: `challenge-${randomBytes(8).toString('hex')}` }),
      });
      assert.equal(evervault.status, 200);
      documents.push(new Uint8Array(await evervault.arrayBuffer()));
      assert.equal((await fetch(`${api}?nonce=zz`)).status, 400);

      // A nonce handshake and a base one: their documents ride in the certificates.
      const nonce = randomBytes(16);
      for (const servername of [`${nonce.toString('hex')}.attest.localhost`, 'localhost']) {
        const socket = await connectTls({ port: ingressPort }, { servername, checkName: 'localhost' });
        documents.push(documentFromSan(peerLeaf(socket)));
        socket.destroy();
      }
      for (const document of documents) verifyAttestation(document, { root: simRoot });
      assert.equal(documents.length, 6);
    } finally {
      run.child.kill('SIGTERM');
    }
    assert.equal(await run.exited, 0, run.output().toString('utf8').slice(-3000));

    // The log is not empty of what the scan is about: trace and debug lines, and lines for the very
    // requests whose bytes are searched for.
    const logs = run.logs;
    assert.ok(
      logs.some((line) => line.level === 10),
      'no trace line',
    );
    assert.ok(logs.filter((line) => line.level === 20).length >= 5, 'few debug lines');
    assert.ok(
      logs.filter((line) => line.msg === 'internal API request' && line.path === '/attestation-doc').length >= 4,
      'API requests were not logged',
    );
    assert.ok(
      logs.some((line) => line.msg === 'ingress connection closed' && (line.toApp as number) > bodyMarker.length),
      'the upload was not logged',
    );
    assert.ok(logs.some((line) => line.msg === 'secret loaded' && line.secret === 'APP_SECRET'));
    assert.deepEqual(run.otherLines(), []);

    const output = run.output();
    const text = output.toString('utf8');
    assert.doesNotMatch(text, /PRIVATE KEY/, 'a PEM private key block');

    // Key material the test can read: the TLS CA's key, the simulated NSM's root and intermediate keys.
    // (The TLS leaf keys and the KMS recipient key live only in the runtime's memory; the PEM check above covers them.)
    const secrets: Array<[string, Buffer[]]> = [];
    secrets.push(['the TLS CA key', [privateScalar(readFileSync(join(stateDir, CA_KEY_FILE), 'utf8'))]]);
    const chain = JSON.parse(readFileSync(join(stateDir, 'sim-nsm-chain.json'), 'utf8')) as {
      root: { cert: string; key: string };
      intermediates: Array<{ cert: string; key: string }>;
    };
    for (const ca of [chain.root, ...chain.intermediates]) {
      secrets.push(['a simulated NSM CA key', [privateScalar(ca.key)]]);
      // Every document carries these certificates in its cabundle: they find a logged document
      // whose bytes the test never saw, such as the one sent to KMS.
      const der = Buffer.from(ca.cert.replace(/-----[^-]+-----|\s/g, ''), 'base64');
      secrets.push(['document bytes (cabundle)', windows(der)]);
    }
    for (const document of documents) secrets.push(['document bytes', windows(document)]);
    for (const [what, value] of [
      ['the request body', bodyMarker],
      ['the response body', responseMarker],
      ['the configured secret', secret],
      ['the AWS secret access key', credentials.secretAccessKey],
    ] as const) {
      secrets.push([what, [Buffer.from(value)]]);
      assert.equal(output.indexOf(Buffer.from(value, 'utf16le')), -1, `${what} (UTF-16) is in the output`);
    }
    /** What of `secrets` is in `bytes`, in any of the forms. */
    const leaks = (bytes: Buffer): string[] => {
      const found = new Set<string>();
      const asText = bytes.toString('utf8');
      for (const [what, needles] of secrets) {
        for (const needle of needles) {
          if (bytes.includes(needle)) found.add(`${what} (raw)`);
          for (const form of encodedForms(needle)) {
            assert.ok(form.length >= 16, `a needle for ${what} is too short to mean anything`);
            if (asText.includes(form)) found.add(what);
          }
        }
      }
      return [...found];
    };
    // The scan finds what it looks for: a document, base64 inside a longer value at an odd offset; a key in hex; the secret.
    const planted = Buffer.from(
      [
        JSON.stringify({
          msg: 'x',
          doc: Buffer.concat([randomBytes(7), Buffer.from(documents[1]!)]).toString('base64'),
        }),
        JSON.stringify({ msg: 'y', key: secrets[0]![1][0]!.toString('hex') }),
        JSON.stringify({ msg: 'z', value: `...${secret}...` }),
      ].join('\n'),
    );
    assert.deepEqual(
      leaks(planted).sort(),
      ['document bytes', 'document bytes (cabundle)', 'the TLS CA key', 'the configured secret (raw)'].sort(),
    );

    assert.deepEqual(leaks(output), [], 'secret material in the runtime output');
    assert.ok(logs.length >= 20 && output.length > 2000, `only ${logs.length} lines, ${output.length} bytes of output`);
  });
});
