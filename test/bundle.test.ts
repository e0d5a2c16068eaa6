import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { once } from 'node:events';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';
import { commandMissing } from './helpers/privilege.js';
import { freePort } from './helpers/net.js';

// The bundle must run in an image with nothing else in it: the test copies it into an empty
// directory and chroots there, so no libc, Node, shell, /proc or /dev of the machine can help.
const BUNDLE = join(REPO_ROOT, 'dist', 'enclave-runtime');
const IN_ROOT = '/opt/enclave-runtime';
const skip =
  process.getuid?.() !== 0
    ? 'needs root (chroot)'
    : (commandMissing('chroot') ?? commandMissing('gcc') ?? commandMissing('ldd'));
const root = mkdtempSync(join(tmpdir(), 'bundle-chroot-'));
after(() => rmSync(root, { recursive: true, force: true }));

const CHROOT = spawnSync('sh', ['-c', 'command -v chroot'], { encoding: 'utf8' }).stdout.trim();

function chroot(args: string[]) {
  // An empty environment: nothing of this machine's (PATH, NODE_OPTIONS, NODE_EXTRA_CA_CERTS, ...) leaks in.
  return spawn(CHROOT, [root, `${IN_ROOT}/bin/enclave-runtime`, ...args], {
    env: {},
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

describe('the self-contained bundle', { skip }, () => {
  let bundleMiB = 0;
  before(() => {
    const built = spawnSync('npm', ['run', 'bundle', '--silent'], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      timeout: 300_000,
    });
    assert.equal(built.status, 0, `npm run bundle failed:\n${built.stdout}${built.stderr}`);
    mkdirSync(join(root, 'opt'));
    cpSync(BUNDLE, join(root, 'opt', 'enclave-runtime'), { recursive: true });
    assert.deepEqual(readdirSync(root), ['opt'], 'the chroot holds nothing but the bundle');
    const sizes = (dir: string): number =>
      readdirSync(dir, { withFileTypes: true }).reduce(
        (sum, e) => sum + (e.isDirectory() ? sizes(join(dir, e.name)) : statSync(join(dir, e.name)).size),
        0,
      );
    bundleMiB = sizes(BUNDLE) / 1024 / 1024;
  });

  it('has the launcher, Node, the loader, the addon, the app sandbox helper, the scripts and the AWS root', () => {
    for (const file of [
      'bin/enclave-runtime',
      'bin/node',
      'lib/ld-linux-x86-64.so.2',
      'lib/libc.so.6',
      'lib/enclave-runtime.mjs',
      'lib/ingress-worker.mjs',
      'lib/enclave_native.node',
      'lib/app-sandbox',
      'lib/roots/aws-nitro-root-g1.pem',
    ]) {
      if (file.includes('x86-64') && process.arch !== 'x64') continue;
      assert.ok(existsSync(join(BUNDLE, file)), `${file} is missing from the bundle`);
    }
    for (const binary of [join(BUNDLE, 'bin', 'enclave-runtime'), join(BUNDLE, 'lib', 'app-sandbox')]) {
      const described = spawnSync('file', [binary], { encoding: 'utf8' });
      if (described.status === 0) assert.match(described.stdout, /statically linked/, binary);
    }
  });

  it('prints its version in an empty chroot', async () => {
    const child = chroot(['--version']);
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const [code] = await once(child, 'exit');
    assert.equal(code, 0, err);
    const manifest = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as { version: string };
    assert.equal(out, `enclave-runtime ${manifest.version}\n`);
    assert.equal(err, '');
  });

  it(
    'verifies a real Nitro document against the bundled AWS root',
    { skip: existsSync(NITRO_FIXTURES) ? undefined : `no fixtures at ${NITRO_FIXTURES}` },
    async () => {
      cpSync(join(NITRO_FIXTURES, 'blindai-nitro_attestation_document_valid.cbor'), join(root, 'doc.cbor'));
      const child = chroot(['attest', 'verify', '/doc.cbor', '--at', '2023-03-22T14:28:27.405Z', '--allow-debug']);
      let output = '';
      child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
      child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
      const [code] = await once(child, 'exit');
      assert.equal(code, 0, output);
    },
  );

  it('starts `dev` in the empty chroot (addon loaded for a unix ingress), answers /health, and stops on SIGTERM', async (t) => {
    const [apiPort, healthPort, metricsPort] = [await freePort(), await freePort(), await freePort()];
    writeFileSync(
      join(root, 'enclave.toml'),
      `[runtime]\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\n[ingress]\nlisten = "unix:/ingress.sock"\n` +
        `[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nlisten = "tcp:127.0.0.1:${metricsPort}"\n`,
    );
    const started = process.hrtime.bigint();
    const child = chroot(['dev', '--config', '/enclave.toml', '--state-dir', '/state']);
    const lines: Array<Record<string, unknown>> = [];
    let pending = '';
    const ready = new Promise<void>((resolve, reject) => {
      child.stderr.on('data', (chunk: Buffer) => {
        pending += chunk.toString();
        const parts = pending.split('\n');
        pending = parts.pop() ?? '';
        for (const text of parts) {
          const line = JSON.parse(text) as Record<string, unknown>;
          lines.push(line);
          if (line.msg === 'runtime ready') resolve();
        }
      });
      child.once('exit', (code) => reject(new Error(`exited with ${code} before ready: ${JSON.stringify(lines)}`)));
    });
    try {
      await ready;
      const readyMs = Number(process.hrtime.bigint() - started) / 1e6;
      t.diagnostic(`bundle ${bundleMiB.toFixed(1)} MiB; dev ready in the chroot after ${readyMs.toFixed(0)} ms`);
      assert.ok(
        lines.some((line) => line.msg === 'ingress listening' && line.listen === 'unix:/ingress.sock'),
        'the unix ingress (our addon) is listening',
      );
      assert.ok(existsSync(join(root, 'ingress.sock')), 'the socket exists inside the chroot');
      assert.ok(existsSync(join(root, 'state', 'sim-nsm-root.pem')), 'the state dir was written');

      const health = await fetch(`http://127.0.0.1:${healthPort}/health`);
      const report = (await health.json()) as { parts: Record<string, { ok: boolean }> };
      assert.equal(report.parts.attestation?.ok, true);
      assert.equal(report.parts.ingress?.ok, true);
      const doc = await fetch(`http://127.0.0.1:${apiPort}/attestation-doc?nonce=00ff`);
      assert.equal(doc.status, 200);
      assert.ok((await doc.arrayBuffer()).byteLength > 1000);
    } finally {
      child.kill('SIGTERM');
    }
    const [code] = await once(child, 'exit');
    assert.equal(code, 0, JSON.stringify(lines.slice(-3)));
    assert.ok(lines.some((line) => line.msg === 'runtime stopped'));
  });

  it('starts a command in the empty chroot through the static app-sandbox helper', async () => {
    const [apiPort, healthPort] = [await freePort(), await freePort()];
    writeFileSync(
      join(root, 'sandboxed.toml'),
      `[runtime]\nhealth_listen = "tcp:127.0.0.1:${healthPort}"\n[ingress]\nenabled = false\n[attestation]\napi_listen = "tcp:127.0.0.1:${apiPort}"\n[metrics]\nenabled = false\n`,
    );
    // The launcher itself is the command: static, so it runs in the chroot; through the helper, or not at all.
    const child = chroot([
      'dev',
      '--config',
      '/sandboxed.toml',
      '--state-dir',
      '/state-sandboxed',
      '--',
      '/opt/enclave-runtime/bin/enclave-runtime',
      '--version',
    ]);
    let out = '';
    let err = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
    const [code] = await once(child, 'exit');
    assert.equal(code, 0, err.slice(-2000));
    assert.match(out, /^enclave-runtime \d+\.\d+\.\d+/);
    assert.doesNotMatch(err, /ERR_APP_SANDBOX|app-sandbox:/);
  });
});
