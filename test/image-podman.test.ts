import assert from 'node:assert/strict';
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import {
  chmodSync,
  copyFileSync,
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import tls from 'node:tls';
import { verifyPeerAttestation } from '../src/tls/attested-client.js';
import { runCli } from './helpers/cli-run.js';
import { NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';
import { commandMissing } from './helpers/privilege.js';

// The runtime image and a customer image built and run by a real container engine: `npm run image`
// (Dockerfile.local, nothing pulled), then a customer Containerfile made of a busybox app and the
// two lines README gives, run under podman with runc. Every image is built from local files; the
// containers have no network but loopback.

const MiB = 1024 * 1024;
/**
 * README "Ship it into a customer image": the runtime image measured 104.6 MiB here (Node alone is
 * 94 MiB); the bound leaves room for a newer Node and small helper executables, not for a second copy.
 */
const MAX_RUNTIME_IMAGE_BYTES = 125 * MiB;
/** What one layer of tar headers and padding may add to the app's own bytes in the customer image. */
const LAYER_SLACK_BYTES = MiB;

const { name, version } = JSON.parse(readFileSync(join(REPO_ROOT, 'package.json'), 'utf8')) as {
  name: string;
  version: string;
};
const RUNTIME_TAG = `${name}:${version}`;
const CUSTOMER_TAG = `localhost/${name}-test-customer:${process.pid}`;
const CONTAINER = `${name}-test-${process.pid}`;
/** The config path README suggests adding to the ENTRYPOINT; the test mounts a local-trial config there. */
const CONFIG_IN_IMAGE = '/etc/enclave.toml';
const SHARED_IN_IMAGE = '/run/enclave';
// test/fixtures/nitro/SOURCES.md: yawn/nitro-attest verifies it at from_unix_timestamp(1736179625).
const FIXTURE = { file: join(NITRO_FIXTURES, 'yawn-nitro-attest-attestation.cose'), at: '1736179625' };
/**
 * podman on a restricted host: runc (crun refuses cgroups v1 hybrid mode), explicit rlimits (the
 * defaults need CAP_SYS_RESOURCE), no network but loopback, and never a pull.
 */
const RUN_FLAGS = [
  '--runtime',
  'runc',
  '--ulimit',
  'nofile=1024:1024',
  '--ulimit',
  'nproc=1024:1024',
  '--network',
  'none',
  '--pull',
  'never',
];

const BUSYBOX = spawnSync('sh', ['-c', 'command -v busybox'], { encoding: 'utf8' }).stdout.trim();
const skip = unavailable();

function unavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (podman with runc, and `podman image mount`)';
  const missing =
    commandMissing('podman') ??
    commandMissing('runc') ??
    commandMissing('busybox') ??
    commandMissing('gcc') ??
    commandMissing('ldd');
  if (missing !== undefined) return `${missing} (CI installs podman, runc and busybox-static)`;
  const ldd = spawnSync('ldd', [BUSYBOX], { encoding: 'utf8' });
  if (!/not a dynamic executable|statically linked/.test(`${ldd.stdout}${ldd.stderr}`))
    return `${BUSYBOX} is dynamically linked (install busybox-static)`;
  return undefined;
}

/** The two lines of README's customer Dockerfile: the COPY and the ENTRYPOINT's argv. */
function readmeCustomerLines(): { copy: string; entrypoint: string[] } {
  const readme = readFileSync(join(REPO_ROOT, 'README.md'), 'utf8');
  const section = readme.split(/^## /m).find((s) => s.startsWith('Ship it into a customer image'));
  assert.ok(section !== undefined, 'README has "Ship it into a customer image"');
  const block = /```dockerfile\n([\s\S]*?)```/.exec(section)?.[1];
  assert.ok(block !== undefined, 'that section has a dockerfile block');
  const lines = block.split('\n').filter((line) => line.trim() !== '');
  assert.equal(lines.length, 2, `the two lines, and only them: ${block}`);
  const [copy = '', entry = ''] = lines;
  assert.equal(
    copy,
    `COPY --from=${RUNTIME_TAG} /opt/enclave-runtime /opt/enclave-runtime`,
    'README names the image `npm run image` tags',
  );
  assert.match(entry, /^ENTRYPOINT \[/);
  return { copy, entrypoint: JSON.parse(entry.slice('ENTRYPOINT '.length)) as string[] };
}

/** Every path under `dir` with its type, mode, mtime, size and SHA-256: equal trees give equal maps. */
function tree(dir: string, prefix = '', out = new Map<string, string>()): Map<string, string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    const rel = prefix === '' ? entry.name : `${prefix}/${entry.name}`;
    const stat = lstatSync(path);
    const mode = (stat.mode & 0o7777).toString(8);
    if (entry.isDirectory()) {
      out.set(rel, `dir ${mode}`);
      tree(path, rel, out);
    } else {
      assert.ok(entry.isFile(), `${rel} is a regular file`);
      out.set(
        rel,
        `file ${mode} ${stat.mtimeMs} ${stat.size} ${createHash('sha256').update(readFileSync(path)).digest('hex')}`,
      );
    }
  }
  return out;
}

/** The distinct `uid:gid` owners of everything under `dir`. */
function owners(dir: string, out = new Set<string>()): Set<string> {
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const stat = lstatSync(join(dir, entry.name));
    out.add(`${stat.uid}:${stat.gid}`);
    if (entry.isDirectory()) owners(join(dir, entry.name), out);
  }
  return out;
}

describe('the runtime image and a customer image under podman', { skip }, () => {
  const work = mkdtempSync(join(tmpdir(), 'image-podman-'));
  const bundle = join(work, 'bundle');
  const shared = join(work, 'shared');
  const configFile = join(work, 'enclave.toml');
  // podman's whole store (images, layers, containers) lives here, away from the repo and from the
  // machine's own images; CONTAINERS_STORAGE_CONF reaches `npm run image` too.
  const storageConf = join(work, 'storage.conf');
  const env = { ...process.env, CONTAINERS_STORAGE_CONF: storageConf };
  const body = `served by my-app in ${CONTAINER}\n`;
  let appBytes = 0;

  const podman = (args: string[], input?: Buffer): SpawnSyncReturns<string> =>
    spawnSync('podman', args, { env, input, encoding: 'utf8', timeout: 300_000 });
  const podmanOk = (args: string[]): string => {
    const result = podman(args);
    assert.equal(result.status, 0, `podman ${args.join(' ')}: ${result.error?.message ?? ''}${result.stderr}`);
    return result.stdout;
  };
  const inspect = (image: string) =>
    (
      JSON.parse(podmanOk(['image', 'inspect', image])) as Array<{
        Size: number;
        RootFS: { Layers: string[] };
        Config: { Entrypoint?: string[]; Cmd?: string[] };
      }>
    )[0]!;

  const inMountedImage = (image: string, check: (root: string) => void): void => {
    const root = podmanOk(['image', 'mount', image]).trim();
    try {
      check(root);
    } finally {
      podmanOk(['image', 'unmount', image]);
    }
  };

  before(() => {
    // overlay where the kernel has it (no copy per container), else vfs, which works everywhere.
    const driver = readFileSync('/proc/filesystems', 'utf8').includes('\toverlay\n') ? 'overlay' : 'vfs';
    writeFileSync(
      storageConf,
      `[storage]\ndriver = "${driver}"\ngraphroot = "${join(work, 'storage')}"\nrunroot = "${join(work, 'run')}"\n`,
    );
    const built = spawnSync('npm', ['run', 'image', '--silent', '--', '--engine', 'podman', '--out', bundle], {
      cwd: REPO_ROOT,
      env,
      encoding: 'utf8',
      timeout: 600_000,
    });
    assert.equal(built.status, 0, `npm run image failed:\n${built.stdout}${built.stderr}`);

    // The customer: a static busybox serving a page on the README's app command, then the two lines.
    const { copy, entrypoint } = readmeCustomerLines();
    const separator = entrypoint.indexOf('--');
    const app = entrypoint.slice(separator + 1);
    assert.ok(
      separator > 0 && app[0]?.startsWith('/'),
      `README's ENTRYPOINT runs an absolute command after --: ${JSON.stringify(entrypoint)}`,
    );
    const rootfs = join(work, 'context', 'rootfs');
    for (const dir of ['bin', 'www', dirname(app[0]!.slice(1))]) mkdirSync(join(rootfs, dir), { recursive: true });
    copyFileSync(BUSYBOX, join(rootfs, 'bin', 'busybox'));
    chmodSync(join(rootfs, 'bin', 'busybox'), 0o755);
    writeFileSync(
      join(rootfs, app[0]!),
      '#!/bin/busybox sh\n[ "$1" = --port ] || exit 64\nexec /bin/busybox httpd -f -p "127.0.0.1:$2" -h /www\n',
      { mode: 0o755 },
    );
    writeFileSync(join(rootfs, 'www', 'index.html'), body);
    appBytes = [...tree(rootfs).values()].reduce(
      (sum, line) => sum + (line.startsWith('file') ? Number(line.split(' ')[3]) : 0),
      0,
    );
    // README: the config is read from --config PATH, added before `--`.
    const withConfig = [...entrypoint.slice(0, separator), '--config', CONFIG_IN_IMAGE, ...entrypoint.slice(separator)];
    writeFileSync(
      join(work, 'context', 'Containerfile'),
      `FROM scratch\nCOPY rootfs/ /\n${copy}\nENTRYPOINT ${JSON.stringify(withConfig)}\n`,
    );
    podmanOk(['build', '--pull=never', '--tag', CUSTOMER_TAG, join(work, 'context')]);

    // README "Trying the image outside an enclave": the same `run`, with a simulated NSM and the
    // ingress on a unix socket in a mounted directory instead of vsock.
    mkdirSync(shared);
    writeFileSync(
      configFile,
      `[runtime]\nhealth_listen = "tcp:127.0.0.1:7779"\nstate_dir = "${SHARED_IN_IMAGE}/state"\nshutdown_grace_ms = 2000\n` +
        `[ingress]\nlisten = "unix:${SHARED_IN_IMAGE}/ingress.sock"\n[attestation]\nmode = "simulated"\n`,
    );
  });

  after(() => {
    podman(['rm', '--force', '--time', '0', CONTAINER]);
    podman(['rmi', '--force', CUSTOMER_TAG, RUNTIME_TAG]);
    rmSync(work, { recursive: true, force: true });
  });

  it('has one layer holding exactly the bundle, and the size README gives', (t) => {
    const runtime = inspect(RUNTIME_TAG);
    assert.equal(runtime.RootFS.Layers.length, 1, 'one layer');
    assert.deepEqual(runtime.Config.Entrypoint, ['/opt/enclave-runtime/bin/enclave-runtime']);
    const history = JSON.parse(podmanOk(['history', '--no-trunc', '--format', 'json', RUNTIME_TAG])) as Array<{
      size: number;
      CreatedBy: string;
    }>;
    const filled = history.filter((step) => step.size > 0);
    assert.equal(filled.length, 1, JSON.stringify(history));
    assert.match(filled[0]!.CreatedBy, /COPY .* in \/opt\/enclave-runtime/);

    const expected = tree(bundle);
    inMountedImage(RUNTIME_TAG, (root) => {
      assert.deepEqual(readdirSync(root), ['opt']);
      assert.deepEqual(readdirSync(join(root, 'opt')), ['enclave-runtime']);
      assert.deepEqual(
        tree(join(root, 'opt', 'enclave-runtime')),
        expected,
        'the image holds the bundle file for file: modes, mtimes, sizes and bytes',
      );
      // Owned by root, writable by root alone (the modes above): an app run as another user cannot swap the launcher.
      assert.deepEqual([...owners(root)], ['0:0']);
    });

    const customer = inspect(CUSTOMER_TAG);
    t.diagnostic(
      `runtime image ${(runtime.Size / MiB).toFixed(1)} MiB; customer image ${(customer.Size / MiB).toFixed(1)} MiB (app ${(appBytes / MiB).toFixed(1)} MiB)`,
    );
    assert.ok(
      runtime.Size <= MAX_RUNTIME_IMAGE_BYTES,
      `runtime image ${runtime.Size} bytes > ${MAX_RUNTIME_IMAGE_BYTES}`,
    );
    assert.equal(customer.RootFS.Layers.length, 2, 'the app layer and the runtime layer');
    inMountedImage(CUSTOMER_TAG, (root) => {
      assert.deepEqual(
        tree(join(root, 'opt', 'enclave-runtime')),
        expected,
        'COPY --from brings the whole bundle, modes and mtimes kept',
      );
    });
    assert.ok(
      customer.Size - runtime.Size <= appBytes + LAYER_SLACK_BYTES,
      `the customer image adds ${customer.Size - runtime.Size} bytes to the runtime for an app of ${appBytes}`,
    );
  });

  it('runs --version in both images', () => {
    const runtime = podman(['run', '--rm', ...RUN_FLAGS, RUNTIME_TAG]);
    assert.equal(runtime.status, 0, runtime.stderr);
    assert.equal(runtime.stdout, `enclave-runtime ${version}\n`);
    const customer = podman([
      'run',
      '--rm',
      ...RUN_FLAGS,
      '--entrypoint',
      '/opt/enclave-runtime/bin/enclave-runtime',
      CUSTOMER_TAG,
      '--version',
    ]);
    assert.equal(customer.status, 0, customer.stderr);
    assert.equal(customer.stdout, `enclave-runtime ${version}\n`);
  });

  it('verifies a real Nitro document inside the customer image, and refuses it at the present time', () => {
    const document = readFileSync(FIXTURE.file);
    const verify = (args: string[]) =>
      podman(
        [
          'run',
          '--rm',
          '-i',
          ...RUN_FLAGS,
          '--entrypoint',
          '/opt/enclave-runtime/bin/enclave-runtime',
          CUSTOMER_TAG,
          'attest',
          'verify',
          '-',
          ...args,
        ],
        document,
      );
    const valid = verify(['--at', FIXTURE.at]);
    assert.equal(valid.status, 0, `${valid.stdout}${valid.stderr}`);
    const expired = verify([]);
    assert.equal(expired.status, 1, `${expired.stdout}${expired.stderr}`);
    assert.match(`${expired.stdout}${expired.stderr}`, /ERR_ATTESTATION_EXPIRED/);
  });

  it('supervises the app as the ENTRYPOINT, serves it through the unix-socket ingress with an attested certificate, and stops cleanly on podman stop', async () => {
    const run = runCli([], {
      env,
      command: [
        'podman',
        'run',
        '--name',
        CONTAINER,
        ...RUN_FLAGS,
        '--volume',
        `${configFile}:${CONFIG_IN_IMAGE}:ro`,
        '--volume',
        `${shared}:${SHARED_IN_IMAGE}`,
        CUSTOMER_TAG,
      ],
    });
    try {
      await run.waitFor('config loaded', (line) => line.mode === 'run' && line.config === CONFIG_IN_IMAGE);
      await run.waitFor('customer command started');
      await run.waitFor('app is up');

      const raw = net.connect(join(shared, 'ingress.sock'));
      const socket = tls.connect({
        socket: raw,
        servername: 'localhost',
        ca: readFileSync(join(shared, 'state', 'ca.pem')),
      });
      await once(socket, 'secureConnect');
      // The certificate carries a document of the container's simulated NSM, bound to its key.
      verifyPeerAttestation(socket, { root: readFileSync(join(shared, 'state', 'sim-nsm-root.pem'), 'utf8') });
      const chunks: Buffer[] = [];
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.end('GET / HTTP/1.0\r\nHost: localhost\r\n\r\n');
      await once(socket, 'end');
      const response = Buffer.concat(chunks).toString('utf8');
      assert.match(response, /^HTTP\/1\.[01] 200 /);
      assert.ok(response.endsWith(`\r\n\r\n${body}`), response);
    } catch (error) {
      podman(['rm', '--force', '--time', '0', CONTAINER]);
      throw error;
    }

    // podman stop sends SIGTERM and waits 30 s (more than shutdown_grace_ms) before SIGKILL (137).
    podmanOk(['stop', '--time', '30', CONTAINER]);
    const code = await run.exited;
    const state = JSON.parse(podmanOk(['inspect', '--format', '{{json .State}}', CONTAINER])) as { ExitCode: number };
    const app = run.logs.find((line) => line.msg === 'customer command exited');
    // README: the runtime exits with the command's code, 128+N for signal N: httpd died of the SIGTERM passed on.
    assert.equal(app?.signal, 'SIGTERM', JSON.stringify(run.logs.slice(-5)));
    assert.equal(code, 128 + 15);
    assert.equal(state.ExitCode, 128 + 15);
    assert.ok(
      run.logs.some((line) => line.msg === 'runtime stopped'),
      'the runtime shut down by itself, not by SIGKILL',
    );
    assert.deepEqual(run.otherLines(), [], 'nothing but JSON log lines on stderr');
  });
});
