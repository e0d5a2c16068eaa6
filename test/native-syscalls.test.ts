import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { hostname, tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  NativeError,
  closeFd,
  getOriginalDst,
  nsmRequest,
  openDevice,
  setHostname,
  setInterfaceUp,
} from '../src/native/native-binding.js';
import { commandMissing, netnsUnavailable } from './helpers/privilege.js';
import { NATIVE_SKIP } from './native-helpers.js';

const BINDING_URL = new URL('../src/native/native-binding.js', import.meta.url);

function utsUnavailable(): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (UTS namespaces)';
  const probe = spawnSync('unshare', ['-u', 'true'], { stdio: 'ignore' });
  return probe.status === 0 ? undefined : 'cannot create a UTS namespace (unshare -u failed)';
}

/** Runs an ESM snippet in a child node, optionally wrapped in `unshare FLAG`; returns its parsed JSON output. */
function runChild(script: string, unshareFlag?: string): unknown {
  const node = [process.execPath, '--input-type=module', '-e', script];
  const [command, ...args] = unshareFlag === undefined ? node : ['unshare', unshareFlag, ...node];
  // The timeout only bounds a hung child.
  const result = spawnSync(command!, args, { encoding: 'utf8', timeout: 20_000 });
  assert.equal(result.status, 0, `child failed: ${result.stderr}`);
  return JSON.parse(result.stdout);
}

/** Accepts one loopback TCP connection and hands the accepted socket to `inspect`. */
async function withAcceptedTcp<T>(host: string, inspect: (socket: net.Socket, port: number) => T): Promise<T> {
  const server = net.createServer();
  server.listen(0, host);
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  const accepted = once(server, 'connection');
  const client = net.connect(port, host);
  const [socket] = (await accepted) as [net.Socket];
  try {
    return inspect(socket, port);
  } finally {
    socket.destroy();
    client.destroy();
    await new Promise((resolve) => server.close(resolve));
  }
}

describe('native syscalls', { skip: NATIVE_SKIP, timeout: 60_000 }, () => {
  it('openDevice on a missing device fails with ENOENT', () => {
    assert.throws(
      () => openDevice('/dev/nsm-does-not-exist'),
      (error: NativeError) => {
        assert.ok(error instanceof NativeError);
        assert.equal(error.code, 'ENOENT');
        assert.equal(error.syscall, 'open');
        assert.equal(error.message, 'open ENOENT /dev/nsm-does-not-exist');
        return true;
      },
    );
  });

  it('openDevice and closeFd open and release an fd', () => {
    const fd = openDevice('/dev/null');
    assert.ok(Number.isInteger(fd) && fd > 2);
    closeFd(fd);
    assert.throws(() => closeFd(-1), { code: 'ERR_NATIVE_ARGUMENT' });
  });

  it('nsmRequest validates its arguments before any ioctl', () => {
    assert.throws(() => nsmRequest(-1, new Uint8Array([1])), { code: 'ERR_NATIVE_ARGUMENT' });
    assert.throws(() => nsmRequest(0, new Uint8Array([1]), 0), { code: 'ERR_NATIVE_ARGUMENT' });
  });

  it('getOriginalDst on a loopback connection nothing redirected reports ENOENT (no conntrack NAT entry)', async () => {
    await withAcceptedTcp('127.0.0.1', (socket, port) => {
      const fd = (socket as unknown as { _handle: { fd: number } })._handle.fd;
      try {
        // Kernels that track every connection answer with the (unchanged) original destination.
        assert.deepEqual(getOriginalDst(fd, 4), { address: '127.0.0.1', port });
      } catch (error) {
        assert.ok(error instanceof NativeError, String(error));
        assert.ok(['ENOENT', 'ENOPROTOOPT'].includes(error.code), `got ${error.code}`);
        assert.equal(error.syscall, 'getsockopt');
      }
    });
  });

  it(
    'getOriginalDst reports the pre-REDIRECT destination',
    { skip: netnsUnavailable() ?? commandMissing('iptables') ?? commandMissing('ip') },
    () => {
      const script = `
      import net from 'node:net';
      import { execFileSync } from 'node:child_process';
      import { getOriginalDst, setInterfaceUp } from ${JSON.stringify(BINDING_URL.href)};
      setInterfaceUp('lo');
      execFileSync('iptables', ['-t', 'nat', '-A', 'OUTPUT', '-p', 'tcp', '-d', '127.0.0.1', '--dport', '4321', '-j', 'REDIRECT', '--to-ports', '4444']);
      const server = net.createServer((socket) => {
        const original = getOriginalDst(socket._handle.fd, 4);
        console.log(JSON.stringify(original));
        socket.destroy();
        server.close();
      });
      server.listen(4444, '127.0.0.1', () => net.connect(4321, '127.0.0.1').on('error', () => {}));
    `;
      assert.deepEqual(runChild(script, '-n'), { address: '127.0.0.1', port: 4321 });
    },
  );

  it(
    'setInterfaceUp brings lo up in a fresh network namespace',
    { skip: netnsUnavailable() ?? commandMissing('ip') },
    () => {
      const script = `
      import { execFileSync } from 'node:child_process';
      import { setInterfaceUp } from ${JSON.stringify(BINDING_URL.href)};
      const flags = () => /<([^>]*)>/.exec(execFileSync('ip', ['-o', 'link', 'show', 'lo'], { encoding: 'utf8' }))[1].split(',');
      const before = flags();
      setInterfaceUp('lo');
      const after = flags();
      setInterfaceUp('lo'); // already up: a no-op
      console.log(JSON.stringify({ before, after }));
    `;
      const { before, after } = runChild(script, '-n') as { before: string[]; after: string[] };
      assert.ok(!before.includes('UP'), `lo starts down in a new netns: ${before.join(',')}`);
      assert.ok(after.includes('UP'), `lo is up afterwards: ${after.join(',')}`);
    },
  );

  it('setInterfaceUp on a missing interface fails with ENODEV', () => {
    assert.throws(
      () => setInterfaceUp('nosuchif0'),
      (error: NativeError) => {
        assert.equal(error.code, 'ENODEV');
        assert.equal(error.message, 'ioctl ENODEV nosuchif0');
        return true;
      },
    );
    assert.throws(() => setInterfaceUp('an-interface-name-too-long'), { code: 'EINVAL' });
  });

  it('setHostname changes the hostname of a fresh UTS namespace', { skip: utsUnavailable() }, () => {
    const script = `
      import { hostname } from 'node:os';
      import { setHostname } from ${JSON.stringify(BINDING_URL.href)};
      setHostname('enclave-native-test');
      console.log(JSON.stringify(hostname()));
    `;
    assert.equal(runChild(script, '-u'), 'enclave-native-test');
    assert.notEqual(hostname(), 'enclave-native-test', 'the test process keeps its own hostname');
  });

  it('setHostname rejects a name longer than 64 bytes without changing anything', () => {
    const before = hostname();
    assert.throws(() => setHostname('h'.repeat(65)), { code: 'EINVAL' });
    assert.equal(hostname(), before);
  });

  it('a missing addon build is reported as ERR_NATIVE_MISSING with what to run', () => {
    // A copy of the compiled module in a package without build/Release.
    const root = mkdtempSync(join(tmpdir(), 'native-missing-'));
    try {
      writeFileSync(join(root, 'package.json'), JSON.stringify({ type: 'module' }));
      // The module and what it imports, at the same places relative to dist/ as in this checkout.
      const dist = fileURLToPath(new URL('..', import.meta.url));
      const copyOf = (url: URL): string => {
        const to = join(root, 'dist', relative(dist, fileURLToPath(url)));
        mkdirSync(dirname(to), { recursive: true });
        copyFileSync(fileURLToPath(url), to);
        return to;
      };
      copyOf(new URL('../src/core/errors.js', import.meta.url));
      const copy = pathToFileURL(copyOf(BINDING_URL)).href;
      const script = `
        const { loadNative, nativeUnavailable, openDevice, NATIVE_ADDON_PATH } = await import(${JSON.stringify(copy)});
        const outcome = {};
        try { loadNative(); } catch (error) { outcome.code = error.code; outcome.message = error.message; }
        try { openDevice('/dev/nsm'); } catch (error) { outcome.openCode = error.code; }
        outcome.reason = nativeUnavailable();
        outcome.path = NATIVE_ADDON_PATH;
        console.log(JSON.stringify(outcome));
      `;
      const outcome = runChild(script) as {
        code: string;
        message: string;
        openCode: string;
        reason: string;
        path: string;
      };
      assert.equal(outcome.code, 'ERR_NATIVE_MISSING');
      assert.equal(outcome.openCode, 'ERR_NATIVE_MISSING');
      assert.equal(outcome.path, join(root, 'build', 'Release', 'enclave_native.node'));
      assert.match(outcome.message, /npm install/);
      assert.match(outcome.message, /node-gyp rebuild/);
      assert.equal(outcome.reason, outcome.message);
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});
