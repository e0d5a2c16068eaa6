import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';

function run(
  command: string,
  args: string[],
  cwd: string,
): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(
      command,
      args,
      { cwd, encoding: 'utf8', timeout: 120_000, maxBuffer: 16 * 1024 * 1024 },
      (error, stdout, stderr) => {
        resolve({ status: error ? (typeof error.code === 'number' ? error.code : 1) : 0, stdout, stderr });
      },
    );
  });
}

const dir = mkdtempSync(join(tmpdir(), 'package-exports-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const CONSUMER = `
import { readFileSync } from 'node:fs';
import * as main from 'enclave-runtime';
import * as client from 'enclave-runtime/client';
import * as browser from 'enclave-runtime/browser';
const fixture = readFileSync(process.argv[2], 'utf8').trim();
const bytes = new Uint8Array(Buffer.from(fixture, 'base64'));
const at = new Date(1758628609 * 1000);
const out = {};
out.mainIsClient = main.verifyAttestationDocument === client.verifyAttestationDocument;
out.client = client.verifyAttestationDocument(bytes, { at }).document.moduleId;
out.browser = (await browser.verifyAttestationDocument(bytes, { at })).document.moduleId;
out.functions = ['verifyAttestationDocument', 'verifyAttestedCertificate', 'attestedAgent', 'attestedFetch'].filter((n) => typeof client[n] === 'function');
out.fetchAttestation = typeof browser.fetchAttestation;
try { client.verifyAttestationDocument(bytes); } catch (e) { out.expiredCode = e.code; out.isAttestationError = e instanceof client.AttestationError; }
try { await import('enclave-runtime/dist/src/cli.js'); out.deep = 'importable'; } catch (e) { out.deep = e.code; }
console.log(JSON.stringify(out));
`;

const TYPED_CONSUMER = `
import { attestedAgent, attestedFetch, verifyAttestationDocument, type ClientVerifyOptions, type AttestationDocument } from 'enclave-runtime/client';
import { fetchAttestation, verifyAttestationDocument as verifyInBrowser, type FetchedAttestation } from 'enclave-runtime/browser';
const options: ClientVerifyOptions = { pcrs: [{ 0: 'ab'.repeat(48) }], allowDebug: false, at: new Date() };
const doc: AttestationDocument = verifyAttestationDocument(new Uint8Array(), options).document;
const agent = attestedAgent({ ...options, freshNonce: true, sniNonceEncoding: 'base64' });
void attestedFetch('https://example.invalid/', { dispatcher: agent });
const pending: Promise<FetchedAttestation> = fetchAttestation('https://example.invalid', { nonce: 'c0ffee', pcrs: { 0: 'ab' } });
void verifyInBrowser(new Uint8Array(), { root: '' }).then((v) => v.document.moduleId.length + doc.moduleId.length);
void pending;
// @ts-expect-error pcrs values are hex text or bytes
verifyAttestationDocument(new Uint8Array(), { pcrs: { 0: 42 } });
`;

describe('the npm package', () => {
  it('npm pack gives a tarball whose client, browser and CLI entry points work from another project', async () => {
    const packed = await run(
      'npm',
      ['pack', '--ignore-scripts', '--offline', '--json', '--pack-destination', dir],
      REPO_ROOT,
    );
    assert.equal(packed.status, 0, packed.stderr);
    const [{ filename, files }] = JSON.parse(packed.stdout) as [{ filename: string; files: Array<{ path: string }> }];
    const paths = new Set(files.map((f) => f.path));
    for (const expected of [
      'package.json',
      'bin/enclave-runtime.js',
      'binding.gyp',
      'src/verify/roots/aws-nitro-root-g1.pem',
      'dist/src/client/index.js',
      'dist/src/client/index.d.ts',
      'dist/src/browser/index.d.ts',
      'dist/browser/enclave-runtime-browser.js',
    ]) {
      assert.ok(paths.has(expected), `the tarball has ${expected}`);
    }
    assert.ok(![...paths].some((p) => p.startsWith('dist/test/') || p.startsWith('test/')), 'no tests in the tarball');

    // Offline, and without rebuilding the addon: the package is unpacked where `npm install` would put
    // it, and its dependencies are this checkout's own (symlinked node_modules entries, the same
    // versions package-lock.json pins). ESM ignores NODE_PATH, so links are the way to share them.
    const project = join(dir, 'consumer');
    const modules = join(project, 'node_modules');
    mkdirSync(modules, { recursive: true });
    writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'consumer', private: true, type: 'module' }));
    const untar = await run('tar', ['-xzf', join(dir, filename), '-C', modules], project);
    assert.equal(untar.status, 0, untar.stderr);
    renameSync(join(modules, 'package'), join(modules, 'enclave-runtime'));
    for (const entry of readdirSync(join(REPO_ROOT, 'node_modules'))) {
      if (entry.startsWith('.') || entry === 'enclave-runtime') continue;
      symlinkSync(join(REPO_ROOT, 'node_modules', entry), join(modules, entry));
    }

    writeFileSync(join(project, 'consumer.mjs'), CONSUMER);
    const used = await run(
      process.execPath,
      ['consumer.mjs', join(NITRO_FIXTURES, 'worldcoin-pontifex-real-attestation-doc.b64')],
      project,
    );
    assert.equal(used.status, 0, used.stderr);
    const out = JSON.parse(used.stdout) as Record<string, unknown>;
    assert.equal(out.mainIsClient, true, '"." is the client library');
    assert.equal(
      out.client,
      'i-01b324f0b8b6c25ea-enc01997668bda38b2a',
      'the client verifies with the AWS root shipped in the tarball',
    );
    assert.equal(out.browser, out.client, 'the browser build verifies the same document');
    assert.deepEqual(out.functions, [
      'verifyAttestationDocument',
      'verifyAttestedCertificate',
      'attestedAgent',
      'attestedFetch',
    ]);
    assert.equal(out.fetchAttestation, 'function');
    assert.equal(out.expiredCode, 'ERR_ATTESTATION_EXPIRED');
    assert.equal(out.isAttestationError, true);
    assert.equal(out.deep, 'ERR_PACKAGE_PATH_NOT_EXPORTED', 'only the exported subpaths are public');

    writeFileSync(join(project, 'typed.ts'), TYPED_CONSUMER);
    writeFileSync(
      join(project, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          noEmit: true,
          skipLibCheck: true,
          types: ['node'],
        },
        files: ['typed.ts'],
      }),
    );
    const typed = await run(
      process.execPath,
      [join(REPO_ROOT, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'],
      project,
    );
    assert.equal(typed.status, 0, `tsc over the installed .d.ts: ${typed.stdout}${typed.stderr}`);

    const cli = await run(
      process.execPath,
      [join(modules, 'enclave-runtime', 'bin', 'enclave-runtime.js'), '--version'],
      project,
    );
    assert.equal(cli.status, 0, cli.stderr);
    assert.match(cli.stdout, /\d+\.\d+\.\d+/);
  });
});
