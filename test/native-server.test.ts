import assert from 'node:assert/strict';
import { once } from 'node:events';
import { existsSync, lstatSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { after, describe, it } from 'node:test';
import { NativeError, VMADDR_CID_ANY, VMADDR_PORT_ANY, closeHandle, loadNative } from '../src/native/native-binding.js';
import { NativeServer } from '../src/net/native-server.js';
import { NativeSocket, connectNative } from '../src/net/native-socket.js';
import { NATIVE_SKIP, drain, socketDir, vsockUnavailable, whenClosed } from './native-helpers.js';

function randomPort(): number {
  return 20_000 + Math.floor(Math.random() * 40_000);
}

/** A unix socket file that nobody listens on, as a crashed process leaves behind. */
async function staleSocketFile(path: string): Promise<void> {
  const native = loadNative();
  const handle = new native.Handle(native.socket(native.AF_UNIX), native.AF_UNIX);
  assert.equal(handle.bind({ family: 'unix', path }), 0);
  await closeHandle(handle);
  assert.ok(lstatSync(path).isSocket());
}

// The timeouts only turn a hang into a failure; no assertion depends on speed.
describe('NativeServer on AF_UNIX', { skip: NATIVE_SKIP, timeout: 30_000 }, () => {
  const dir = socketDir();
  after(() => dir.cleanup());

  it('listens, reports its address and removes its socket file on close', async () => {
    const path = dir.path('basic.sock');
    const server = new NativeServer();
    const listening = once(server, 'listening');
    await server.listen({ family: 'unix', path });
    await listening;
    assert.equal(server.listening, true);
    assert.deepEqual(server.address(), { family: 'unix', path });
    assert.ok(lstatSync(path).isSocket());

    const closed = once(server, 'close');
    await server.close();
    await closed;
    assert.equal(server.listening, false);
    assert.equal(server.address(), null);
    assert.equal(existsSync(path), false);
    await server.close(); // idempotent
  });

  it('listening twice on one path fails with EADDRINUSE and leaves the first server working', async () => {
    const path = dir.path('twice.sock');
    const first = new NativeServer();
    first.on('connection', (socket: NativeSocket) => socket.end('first'));
    await first.listen({ family: 'unix', path });
    const second = new NativeServer();
    await assert.rejects(second.listen({ family: 'unix', path }), (error: NativeError) => {
      assert.ok(error instanceof NativeError);
      assert.equal(error.code, 'EADDRINUSE');
      assert.equal(error.syscall, 'bind');
      assert.equal(error.message, `bind EADDRINUSE unix:${path}`);
      return true;
    });
    assert.equal(second.listening, false);

    const client = await connectNative({ family: 'unix', path });
    const reply = drain(client);
    client.end();
    assert.equal((await reply).bytes, 'first'.length);
    await whenClosed(client);
    await first.close();
  });

  it('refuses a second listen() on the same server', async () => {
    const server = new NativeServer();
    await server.listen({ family: 'unix', path: dir.path('again.sock') });
    assert.throws(() => server.listen({ family: 'unix', path: dir.path('again2.sock') }), {
      code: 'ERR_SERVER_ALREADY_LISTEN',
    });
    await server.close();
    // After close() the server may listen again.
    await server.listen({ family: 'unix', path: dir.path('again2.sock') });
    await server.close();
  });

  it('replaces a stale socket file nobody listens on', async () => {
    const path = dir.path('stale.sock');
    await staleSocketFile(path);
    await assert.rejects(connectNative({ family: 'unix', path }), { code: 'ECONNREFUSED' });
    const server = new NativeServer();
    server.on('connection', (socket: NativeSocket) => socket.end('fresh'));
    await server.listen({ family: 'unix', path });
    const client = await connectNative({ family: 'unix', path });
    const reply = drain(client);
    client.end();
    assert.equal((await reply).bytes, 'fresh'.length);
    await server.close();
  });

  it('does not replace a live node:net listener or a regular file', async () => {
    const live = dir.path('live.sock');
    const netServer = net.createServer((socket) => socket.end());
    netServer.listen(live);
    await once(netServer, 'listening');
    await assert.rejects(new NativeServer().listen({ family: 'unix', path: live }), { code: 'EADDRINUSE' });
    assert.ok(lstatSync(live).isSocket());
    await new Promise((resolve) => netServer.close(resolve));

    const file = dir.path('regular.sock');
    writeFileSync(file, 'keep me');
    await assert.rejects(new NativeServer().listen({ family: 'unix', path: file }), { code: 'EADDRINUSE' });
    assert.equal(readFileSync(file, 'utf8'), 'keep me');
  });

  it('does not remove a socket file another server took over', async () => {
    const path = dir.path('taken.sock');
    const first = new NativeServer();
    await first.listen({ family: 'unix', path });
    // Someone replaces the path while the first server still listens on the old inode.
    unlinkSync(path);
    const second = new NativeServer();
    await second.listen({ family: 'unix', path });
    await first.close();
    assert.ok(existsSync(path), "the second server's socket file must survive the first server's close");
    await second.close();
    assert.equal(existsSync(path), false);
  });

  it('destroys connections nobody listens for instead of leaking them', async () => {
    const path = dir.path('unowned.sock');
    const server = new NativeServer();
    await server.listen({ family: 'unix', path });
    const client = await connectNative({ family: 'unix', path });
    const result = await drain(client);
    assert.equal(result.bytes, 0, 'the server side closes without sending anything');
    client.end();
    await whenClosed(client);
    await server.close();
  });

  it('rejects invalid backlogs and addresses synchronously', () => {
    const server = new NativeServer();
    assert.throws(() => server.listen({ family: 'unix', path: dir.path('x.sock') }, 0), {
      code: 'ERR_NATIVE_ARGUMENT',
    });
    assert.throws(() => server.listen({ family: 'unix', path: 'bad\0path' }), { code: 'ERR_NATIVE_ADDRESS' });
    assert.throws(() => server.listen({ family: 'tcp' } as never), { code: 'ERR_NATIVE_ADDRESS' });
  });
});

describe('NativeServer on AF_VSOCK', { skip: vsockUnavailable(), timeout: 30_000 }, () => {
  // Binding and listening only: connect() on vsock here would reach the hypervisor.
  it('listens on vsock:any:PORT, refuses a second bind with EADDRINUSE, and frees the port on close', async () => {
    let port = randomPort();
    const server = new NativeServer();
    for (let attempt = 0; ; attempt++) {
      try {
        await server.listen({ family: 'vsock', cid: VMADDR_CID_ANY, port });
        break;
      } catch (error) {
        if ((error as NativeError).code !== 'EADDRINUSE' || attempt >= 10) throw error;
        port = randomPort();
      }
    }
    assert.deepEqual(server.address(), { family: 'vsock', cid: VMADDR_CID_ANY, port });

    const second = new NativeServer();
    await assert.rejects(second.listen({ family: 'vsock', cid: VMADDR_CID_ANY, port }), (error: NativeError) => {
      assert.equal(error.code, 'EADDRINUSE');
      assert.equal(error.message, `bind EADDRINUSE vsock:any:${port}`);
      return true;
    });

    await server.close();
    assert.equal(server.address(), null);
    await second.listen({ family: 'vsock', cid: VMADDR_CID_ANY, port });
    assert.equal(second.listening, true);
    await second.close();
  });

  it('reports the port the kernel chose for VMADDR_PORT_ANY', async () => {
    const server = new NativeServer();
    await server.listen({ family: 'vsock', cid: VMADDR_CID_ANY, port: VMADDR_PORT_ANY });
    const address = server.address();
    assert.equal(address?.family, 'vsock');
    assert.ok(address?.family === 'vsock' && address.port !== VMADDR_PORT_ANY && address.port > 0);
    await server.close();
  });
});
