import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcessWithoutNullStreams } from 'node:child_process';
import http from 'node:http';
import https from 'node:https';
import { once } from 'node:events';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { verifyAttestation } from '../src/verify/verifier.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';
import { freePort } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'dev-command-'));
after(() => rmSync(dir, { recursive: true, force: true }));

interface Started {
  child: ChildProcessWithoutNullStreams;
  logs: Array<Record<string, unknown>>;
  stdout: () => string;
  waitFor(message: string): Promise<Record<string, unknown>>;
}

/** Spawns the real CLI and collects its JSON log lines from stderr. */
function start(args: string[], env: NodeJS.ProcessEnv = {}): Started {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, env: { ...process.env, ...env } });
  const logs: Array<Record<string, unknown>> = [];
  const waiters: Array<{ message: string; resolve: (line: Record<string, unknown>) => void }> = [];
  let out = '';
  let pending = '';
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => {
    pending += chunk.toString();
    const lines = pending.split('\n');
    pending = lines.pop() ?? '';
    for (const text of lines) {
      if (!text.startsWith('{')) continue;
      const line = JSON.parse(text) as Record<string, unknown>;
      logs.push(line);
      for (const waiter of waiters.filter((w) => w.message === line.msg)) waiter.resolve(line);
    }
  });
  const waitFor = (message: string) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const seen = logs.find((line) => line.msg === message);
      if (seen) return resolve(seen);
      waiters.push({ message, resolve });
      child.once('exit', (code) =>
        reject(new Error(`exited with ${code} before logging "${message}":\n${JSON.stringify(logs, null, 1)}`)),
      );
    });
  return { child, logs, stdout: () => out, waitFor };
}

/** One GET on a fresh connection: the spawnSync calls below block this loop past the API's keep-alive, so a reused socket could be stale. */
function httpGet(
  port: number,
  path: string,
  headers: Record<string, string> = {},
): Promise<{ status: number; body: Buffer; type: string | null }> {
  return new Promise((resolve, reject) => {
    const request = http.get({ host: '127.0.0.1', port, path, headers, agent: false }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () =>
        resolve({
          status: response.statusCode ?? 0,
          body: Buffer.concat(chunks),
          type: response.headers['content-type'] ?? null,
        }),
      );
    });
    request.on('error', reject);
  });
}

/** GET over the TLS ingress, trusting only the runtime's own CA from the state dir. */
function httpsGet(port: number, path: string, ca: string): Promise<{ status: number; body: Buffer }> {
  return new Promise((resolve, reject) => {
    const request = https.get(
      { host: '127.0.0.1', port, path, ca, servername: 'localhost', agent: false },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks) }));
      },
    );
    request.on('error', reject);
  });
}

describe('enclave-runtime dev', () => {
  it('serves the demo app through TLS ingress and the attestation API, attests nonces over SNI, then exits 0 on SIGINT', async () => {
    const [appPort, ingressPort, apiPort] = [await freePort(), await freePort(), await freePort()];
    const config = join(dir, 'dev.toml');
    const example = readFileSync(join(REPO_ROOT, 'enclave.toml.example'), 'utf8');
    writeFileSync(
      config,
      example
        .replace('listen = "tcp:127.0.0.1:8443"', `listen = "tcp:127.0.0.1:${ingressPort}"`)
        .replace('app = "tcp:127.0.0.1:8008"', `app = "tcp:127.0.0.1:${appPort}"`)
        .replace('api_listen = "tcp:127.0.0.1:9999"', `api_listen = "tcp:127.0.0.1:${apiPort}"`),
    );
    const stateDir = join(dir, 'state');
    const run = start(
      ['dev', '--config', config, '--state-dir', stateDir, '--', process.execPath, 'examples/demo-app.js'],
      {
        PORT: String(appPort),
        ATTESTATION_API: `http://127.0.0.1:${apiPort}`,
      },
    );
    try {
      const listening = await run.waitFor('ingress listening');
      assert.equal(listening.listen, `tcp:127.0.0.1:${ingressPort}`);
      assert.equal(listening.app, `tcp:127.0.0.1:${appPort}`);
      await run.waitFor('customer command started');
      await run.waitFor('app is up').catch(() => undefined);

      const ca = readFileSync(join(stateDir, 'ca.pem'), 'utf8');
      let answer = await httpsGet(ingressPort, '/hello', ca).catch(() => undefined);
      for (let i = 0; i < 50 && answer?.status !== 200; i++) {
        await new Promise((resolve) => setTimeout(resolve, 100));
        answer = await httpsGet(ingressPort, '/hello', ca).catch(() => undefined);
      }
      assert.equal(answer?.status, 200);
      assert.equal(answer?.body.toString(), 'hello from the demo app inside the enclave (GET /hello)\n');

      const doc = await httpGet(apiPort, '/attestation-doc?nonce=00ff');
      assert.equal(doc.status, 200);
      assert.equal(doc.type, 'application/cbor');
      const verified = verifyAttestation(doc.body, {
        root: readFileSync(join(stateDir, 'sim-nsm-root.pem'), 'utf8'),
        nonce: Buffer.from('00ff', 'hex'),
      });
      assert.deepEqual(Buffer.from(verified.document.nonce ?? []), Buffer.from('00ff', 'hex'));

      const viaApp = await httpsGet(ingressPort, '/attestation', ca);
      assert.equal(viaApp.status, 200);
      assert.ok(
        JSON.parse(viaApp.body.toString()).attestation_doc.length > 1000,
        'the demo app could not fetch its document',
      );

      const root = join(stateDir, 'sim-nsm-root.pem');
      const connect = spawnSync(
        process.execPath,
        [
          CLI,
          'attest',
          'connect',
          `127.0.0.1:${ingressPort}`,
          '--servername',
          'localhost',
          '--fresh-nonce',
          '--root',
          root,
        ],
        {
          encoding: 'utf8',
          timeout: 20_000,
        },
      );
      assert.equal(connect.status, 0, `attest connect: ${connect.stdout}${connect.stderr}`);

      const nonce = 'c0ffee0123456789abcdef0123456789';
      const sClient = spawnSync(
        'openssl',
        ['s_client', '-connect', `127.0.0.1:${ingressPort}`, '-servername', `${nonce}.attest.localhost`, '-showcerts'],
        {
          input: '',
          encoding: 'utf8',
          timeout: 20_000,
        },
      );
      const leafPem = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/.exec(sClient.stdout)?.[0];
      assert.ok(leafPem, `openssl s_client printed no certificate: ${sClient.stderr}`);
      const leaf = new X509Certificate(leafPem);
      const longest =
        (leaf.subjectAltName ?? '')
          .split(', ')
          .map((name) => name.replace(/^DNS:/, ''))
          .sort((a, b) => b.length - a.length)[0] ?? '';
      const fromSan = verifyAttestation(Buffer.from(longest.split('.')[0] ?? '', 'hex'), {
        root: readFileSync(root, 'utf8'),
        nonce: Buffer.from(nonce, 'hex'),
      });
      assert.deepEqual(
        Buffer.from(fromSan.document.userData ?? []),
        leaf.publicKey.export({ type: 'spki', format: 'der' }),
      );

      // The spawnSync calls above block the event loop; on a loaded machine for longer than the API's 5 s keep-alive.
      // One turn of the loop lets fetch see the server's close of its idle connection instead of reusing it.
      await new Promise((resolve) => setTimeout(resolve, 50));
      const health = await httpGet(apiPort, '/health');
      assert.equal(health.status, 200, health.body.toString());
      assert.equal(JSON.parse(health.body.toString()).parts.app.ok, true);
    } finally {
      run.child.kill('SIGINT');
    }
    const [code] = await once(run.child, 'exit');
    assert.equal(code, 0, JSON.stringify(run.logs.slice(-5)));
    assert.ok(run.logs.some((line) => line.msg === 'runtime stopped'));
  });

  it('reports a bad config file with exit code 2 and the key named', async () => {
    const config = join(dir, 'bad.toml');
    writeFileSync(config, '[ingress]\nmax_conections = 5\n');
    const run = start(['dev', '--config', config]);
    let stderr = '';
    run.child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const [code] = await once(run.child, 'exit');
    assert.equal(code, 2);
    assert.match(stderr, /ingress\.max_conections: unknown key; did you mean "ingress\.max_connections"\?/);
  });

  it('prints its version and usage', async () => {
    const run = start(['--version']);
    const [code] = await once(run.child, 'exit');
    assert.equal(code, 0);
    const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(run.stdout(), `enclave-runtime ${manifest.version}\n`);
    const unknown = start(['frobnicate']);
    const [unknownCode] = await once(unknown.child, 'exit');
    assert.equal(unknownCode, 2);
  });
});
