import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { verifyAttestation } from '../src/verify/verifier.js';
import { runCli } from './helpers/cli-run.js';
import { freePort } from './helpers/net.js';
import { REPO_ROOT } from './helpers/paths.js';
import { commandMissing } from './helpers/privilege.js';

const BUNDLE = join(REPO_ROOT, 'dist', 'browser', 'enclave-runtime-browser.js');
const CHROMIUM = ['chromium', 'chromium-browser'].find((name) => commandMissing(name) === undefined);
const PAGE_TIMEOUT_MS = 90_000;

/** Why the real-browser test cannot run here (CI installs chromium and libnss3-tools), or undefined. */
function chromiumUnavailable(): string | undefined {
  if (CHROMIUM === undefined) return 'chromium is not installed (Debian package chromium)';
  const certutil = commandMissing('certutil');
  if (certutil) return `${certutil} (Debian package libnss3-tools), needed to trust the dev CA in Chromium`;
  const probe = spawnSync(CHROMIUM, ['--headless=new', '--no-sandbox', '--version'], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  if (probe.status !== 0)
    return `chromium does not run here: ${(probe.stderr || probe.error?.message || '').trim().slice(0, 200)}`;
  return undefined;
}

const dir = mkdtempSync(join(tmpdir(), 'browser-chromium-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The page: imports the one-file build, fetches a fresh document cross-origin, checks it, and reports back. */
function page(origin: string, rootPem: string): string {
  return `<!doctype html><meta charset="utf-8"><title>attest</title><pre id="out">running</pre>
<script type="module">
import { fetchAttestation, verifyAttestationDocument } from '/enclave-runtime-browser.js';
const root = ${JSON.stringify(rootPem)};
const out = { userAgent: navigator.userAgent, secure: isSecureContext };
const hex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
try {
  const got = await fetchAttestation(${JSON.stringify(origin)}, { root });
  out.valid = true;
  out.nonce = hex(got.nonce);
  out.documentNonce = hex(got.document.nonce);
  out.moduleId = got.document.moduleId;
  out.raw = btoa(String.fromCharCode(...got.raw));
  const tampered = got.raw.slice();
  tampered[tampered.length - 1] ^= 1;
  out.tampered = await verifyAttestationDocument(tampered, { root }).then(() => 'accepted', (e) => e.code);
  out.replayed = await verifyAttestationDocument(got.raw, { root, nonce: 'ff' }).then(() => 'accepted', (e) => e.code);
  out.otherRoot = await verifyAttestationDocument(got.raw, {}).then(() => 'accepted', (e) => e.code);
  out.pcrMismatch = await verifyAttestationDocument(got.raw, { root, pcrs: [{ 0: '00'.repeat(48) }] }).then(() => 'accepted', (e) => e.code);
} catch (e) {
  out.error = String(e && e.code) + ': ' + String(e && e.message);
}
document.getElementById('out').textContent = JSON.stringify(out);
await fetch('/result', { method: 'POST', body: JSON.stringify(out) });
</script>`;
}

describe('enclave-runtime/browser in headless Chromium against `enclave-runtime dev`', () => {
  it(
    'a page on another origin verifies a fresh document from the ingress and rejects a tampered one',
    { skip: chromiumUnavailable() },
    async () => {
      const [ingressPort, appPort, apiPort, healthPort] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const stateDir = join(dir, 'state');
      const config = join(dir, 'enclave.toml');
      writeFileSync(
        config,
        [
          `[runtime]\nstate_dir = ${JSON.stringify(stateDir)}\nhealth_listen = "tcp:127.0.0.1:${healthPort}"`,
          `[ingress]\nlisten = "tcp:127.0.0.1:${ingressPort}"\napp = "tcp:127.0.0.1:${appPort}"\nhttp_aware = true`,
          // The well-known route is HTTP/1.x; a browser offered h2 would take it.
          `[tls]\nserver_name = "localhost"\nalpn = ["http/1.1"]`,
          `[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"`,
          `[metrics]\nenabled = false`,
          '',
        ].join('\n'),
      );
      const runtime = runCli(['dev', '--config', config]);
      let browser: ChildProcess | undefined;
      let site: http.Server | undefined;
      try {
        await runtime.waitFor('ingress listening');
        const rootPem = readFileSync(join(stateDir, 'sim-nsm-root.pem'), 'utf8');
        // Chromium on Linux takes user trust from the NSS database in $HOME/.pki/nssdb.
        const home = join(dir, 'home');
        const nssdb = `sql:${join(home, '.pki', 'nssdb')}`;
        spawnSync('mkdir', ['-p', join(home, '.pki', 'nssdb')]);
        for (const args of [
          ['-N', '--empty-password'],
          ['-A', '-n', 'enclave-runtime dev CA', '-t', 'C,,', '-i', join(stateDir, 'ca.pem')],
        ]) {
          const done = spawnSync('certutil', ['-d', nssdb, ...args], { encoding: 'utf8' });
          assert.equal(done.status, 0, `certutil ${args[0]}: ${done.stderr}`);
        }

        let report!: (value: Record<string, string | boolean>) => void;
        const reported = new Promise<Record<string, string | boolean>>((resolve) => (report = resolve));
        const ingressOrigin = `https://localhost:${ingressPort}`;
        site = http.createServer((request, response) => {
          if (request.method === 'POST' && request.url === '/result') {
            let body = '';
            request.on('data', (chunk: Buffer) => (body += chunk.toString()));
            request.on('end', () => {
              response.end('ok');
              report(JSON.parse(body) as Record<string, string | boolean>);
            });
            return;
          }
          if (request.url === '/enclave-runtime-browser.js') {
            response.writeHead(200, { 'content-type': 'text/javascript' });
            response.end(readFileSync(BUNDLE));
            return;
          }
          response.writeHead(200, { 'content-type': 'text/html' });
          response.end(page(ingressOrigin, rootPem));
        });
        site.listen(0, '127.0.0.1');
        await once(site, 'listening');
        // 127.0.0.1 is a secure context (WebCrypto works) and a different origin from the ingress (CORS is needed).
        const pageUrl = `http://127.0.0.1:${(site.address() as AddressInfo).port}/`;
        const profile = join(dir, 'profile');
        browser = spawn(
          CHROMIUM!,
          [
            '--headless=new',
            '--no-sandbox',
            '--disable-gpu',
            '--disable-dev-shm-usage',
            '--no-first-run',
            '--no-default-browser-check',
            `--user-data-dir=${profile}`,
            pageUrl,
          ],
          { env: { ...process.env, HOME: home }, stdio: ['ignore', 'ignore', 'pipe'], detached: true },
        );
        let stderr = '';
        browser.stderr?.on('data', (chunk: Buffer) => (stderr = (stderr + chunk.toString()).slice(-4000)));
        const timeout = new Promise<never>((_, reject) => {
          const timer = setTimeout(
            () => reject(new Error(`no report from the page within ${PAGE_TIMEOUT_MS} ms; chromium said:\n${stderr}`)),
            PAGE_TIMEOUT_MS,
          );
          timer.unref();
        });
        const out = await Promise.race([reported, timeout]);

        assert.match(String(out.userAgent), /Chrome\//);
        assert.equal(out.secure, true);
        assert.equal(out.error, undefined, String(out.error));
        assert.equal(out.valid, true);
        assert.equal(out.documentNonce, out.nonce);
        assert.equal(String(out.nonce).length, 64);
        assert.equal(out.tampered, 'ERR_ATTESTATION_SIGNATURE');
        assert.equal(out.replayed, 'ERR_ATTESTATION_NONCE');
        assert.equal(out.otherRoot, 'ERR_ATTESTATION_ROOT', 'the default root is AWS, not the simulated NSM');
        assert.equal(out.pcrMismatch, 'ERR_ATTESTATION_PCR');
        // What the page accepted, checked again by the Node verifier.
        const raw = Buffer.from(String(out.raw), 'base64');
        assert.equal(
          Buffer.from(
            verifyAttestation(raw, { root: rootPem, nonce: Buffer.from(String(out.nonce), 'hex') }).document.nonce!,
          ).toString('hex'),
          out.nonce,
        );
      } finally {
        if (browser?.pid !== undefined && browser.exitCode === null) {
          const exited = once(browser, 'exit');
          // Our own process group (detached): Chromium's helper processes go with it.
          process.kill(-browser.pid, 'SIGKILL');
          await exited;
        }
        site?.close();
        runtime.child.kill('SIGINT');
        await runtime.exited;
      }
    },
  );
});
