import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import net from 'node:net';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { after, describe, it } from 'node:test';
import { NativeError, loadNative } from '../src/native/native-binding.js';
import { NativeServer } from '../src/net/native-server.js';
import { NativeSocket, connectNative } from '../src/net/native-socket.js';
import {
  MiB,
  NATIVE_SKIP,
  drain,
  exchangeBothWays,
  assertNoFdLeak,
  assertReplyAfterPeerEnds,
  closeCounter,
  pumpRandom,
  settles,
  sha256,
  socketDir,
  whenClosed,
  writeRepeatedly,
} from './native-helpers.js';

const skip = NATIVE_SKIP;

/** A NativeServer on a fresh unix path whose connections are handed to `onConnection`. */
async function unixServer(
  path: string,
  onConnection: (socket: NativeSocket) => void,
  options = {},
): Promise<NativeServer> {
  const server = new NativeServer(options);
  server.on('connection', onConnection);
  await server.listen({ family: 'unix', path });
  return server;
}

function nextConnection(server: NativeServer): Promise<NativeSocket> {
  return once(server, 'connection').then(([socket]) => socket as NativeSocket);
}

/** A listening server plus both ends of one connection to it. */
async function connectedPair(
  path: string,
): Promise<{ server: NativeServer; client: NativeSocket; peer: NativeSocket }> {
  const server = new NativeServer();
  await server.listen({ family: 'unix', path });
  const accepted = nextConnection(server);
  const client = await connectNative({ family: 'unix', path });
  return { server, client, peer: await accepted };
}

// The timeouts only turn a hang into a failure; no assertion depends on speed.
describe('NativeSocket over AF_UNIX', { skip, timeout: 60_000 }, () => {
  const dir = socketDir();
  after(() => dir.cleanup());

  it('carries 64 MiB each way at once with matching SHA-256', async () => {
    const { server, client, peer } = await connectedPair(dir.path('bulk.sock'));

    await exchangeBothWays(client, peer, 64 * MiB);
    assert.equal(client.bytesWritten, 64 * MiB);
    assert.equal(client.bytesRead, 64 * MiB);
    assert.equal(peer.bytesWritten, 64 * MiB);
    assert.equal(peer.bytesRead, 64 * MiB);
    await Promise.all([whenClosed(client), whenClosed(peer)]);
    await server.close();
  });

  it('interoperates with a node:net unix server, 64 MiB each way', async () => {
    const path = dir.path('net-server.sock');
    const server = net.createServer({ allowHalfOpen: true });
    server.listen(path);
    await once(server, 'listening');
    const accepted = once(server, 'connection').then(([socket]) => socket as net.Socket);
    const client = await connectNative({ family: 'unix', path });
    const peer = await accepted;

    await exchangeBothWays(client, peer, 64 * MiB);
    await whenClosed(client);
    await new Promise((resolve) => server.close(resolve));
  });

  it('accepts a node:net client on a NativeServer', async () => {
    const path = dir.path('net-client.sock');
    const server = await unixServer(path, (socket) => {
      drain(socket).then(
        ({ sha256: digest }) => socket.end(digest),
        () => socket.destroy(),
      );
    });
    const client = net.connect({ path, allowHalfOpen: true });
    const reply = drain(client);
    const sent = await pumpRandom(client, 8 * MiB);
    const got: Buffer[] = [];
    client.on('data', (chunk: Buffer) => got.push(chunk));
    await reply;
    assert.equal(Buffer.concat(got).toString(), sent);
    await server.close();
  });

  it('half-close: the client ends, the server still replies in full', async () => {
    const path = dir.path('half-client.sock');
    const reply = randomBytes(4 * MiB);
    const server = await unixServer(path, (socket) => {
      drain(socket).then(
        ({ bytes }) => {
          assert.equal(bytes, 1000);
          socket.end(reply);
        },
        () => socket.destroy(),
      );
    });
    const client = await connectNative({ family: 'unix', path });
    const received = drain(client);
    client.end(Buffer.alloc(1000, 7));
    await once(client, 'finish');
    assert.equal(client.writableFinished, true);
    const { bytes, sha256: digest } = await received;
    assert.equal(bytes, reply.length);
    assert.equal(digest, sha256(reply));
    await whenClosed(client);
    await server.close();
  });

  it('half-close: the server ends first, the client still replies in full', async () => {
    const { server, client, peer } = await connectedPair(dir.path('half-server.sock'));
    await assertReplyAfterPeerEnds(client, peer, 4 * MiB);
    await server.close();
  });

  it('allowHalfOpen: false ends the write side when the peer ends', async () => {
    const path = dir.path('no-half.sock');
    const server = await unixServer(path, (socket) => socket.end('bye'));
    const client = await connectNative({ family: 'unix', path }, { allowHalfOpen: false });
    client.resume();
    await once(client, 'finish');
    await whenClosed(client);
    assert.equal(client.bytesRead, 3);
    await server.close();
  });

  it('a slow reader bounds memory: the writer blocks, then every byte arrives', async () => {
    const { server, client: reader, peer: writer } = await connectedPair(dir.path('slow.sock'));

    const total = 256 * MiB;
    const chunk = randomBytes(MiB);
    const expected = createHash('sha256');
    for (let i = 0; i < total / chunk.length; i++) expected.update(chunk);

    const rssBefore = process.memoryUsage().rss;
    const writing = writeRepeatedly(writer, chunk, total);

    // The reader is paused (nobody consumes it): wait until the writer makes no more progress.
    assert.ok(await settles(() => writer.bytesWritten, 20, 200), 'the writer must stall while the reader is paused');
    assert.equal(writing.drains(), 0);
    assert.ok(writer.bytesWritten < 16 * MiB, `kernel buffers only, but ${writer.bytesWritten} bytes were written`);
    assert.ok(
      writing.queued() <= 2 * MiB,
      `the writer must be held at write() === false, but queued ${writing.queued()}`,
    );
    assert.ok(writer.writableLength <= writer.writableHighWaterMark + chunk.length);
    assert.ok(reader.readableLength <= reader.readableHighWaterMark + 64 * 1024);
    const growth = process.memoryUsage().rss - rssBefore;
    assert.ok(growth < 64 * MiB, `RSS grew by ${growth} bytes while the writer was blocked`);

    const received = await drain(reader);
    await writing.done;
    assert.equal(received.bytes, total);
    assert.equal(received.sha256, expected.digest('hex'));
    assert.ok(writing.drains() > 0);
    writer.resume();
    reader.end();
    await Promise.all([whenClosed(reader), whenClosed(writer)]);
    await server.close();
  });

  it('a peer closing with unread data resets the connection: ECONNRESET on read', async () => {
    const { server, client, peer } = await connectedPair(dir.path('reset.sock'));
    // The peer never reads, so these bytes are still queued at it when it goes away.
    await new Promise<void>((resolve, reject) =>
      client.write(Buffer.alloc(16 * 1024), (error) => (error ? reject(error) : resolve())),
    );
    const failed = once(client, 'error');
    client.resume();
    peer.destroy();
    const [error] = (await failed) as [NativeError];
    assert.ok(error instanceof NativeError);
    assert.equal(error.code, 'ECONNRESET');
    assert.equal(error.syscall, 'read');
    assert.equal(error.message, 'read ECONNRESET');
    assert.ok(error.errno < 0);
    await whenClosed(client);
    await server.close();
  });

  it('a node:net peer destroying with unread data gives ECONNRESET', async () => {
    const path = dir.path('reset-net.sock');
    const server = net.createServer({ pauseOnConnect: true });
    server.listen(path);
    await once(server, 'listening');
    const accepted = once(server, 'connection').then(([socket]) => socket as net.Socket);
    const client = await connectNative({ family: 'unix', path });
    const peer = await accepted;
    await new Promise<void>((resolve, reject) =>
      client.write(Buffer.alloc(16 * 1024), (error) => (error ? reject(error) : resolve())),
    );
    const failed = once(client, 'error');
    client.resume();
    peer.destroy();
    const [error] = (await failed) as [NativeError];
    assert.ok(['ECONNRESET', 'EPIPE'].includes(error.code), `got ${error.code}`);
    await new Promise((resolve) => server.close(resolve));
  });

  it('writing to a peer that went away fails with EPIPE', async () => {
    const path = dir.path('epipe.sock');
    const server = await unixServer(path, (socket) => socket.destroy());
    const client = await connectNative({ family: 'unix', path });
    const failed = once(client, 'error');
    const writing = (async () => {
      for (let i = 0; i < 1024 && !client.destroyed; i++) {
        // once() rejects on 'error', which is the outcome this test waits for.
        if (!client.write(Buffer.alloc(64 * 1024)))
          await Promise.race([once(client, 'drain'), whenClosed(client)]).catch(() => undefined);
      }
    })();
    const [error] = (await failed) as [NativeError];
    assert.ok(['EPIPE', 'ECONNRESET'].includes(error.code), `got ${error.code}`);
    assert.equal(error.syscall, 'write');
    await writing;
    await server.close();
  });

  it('a write pending at destroy() gets ECANCELED instead of hanging', async () => {
    const { server, client, peer } = await connectedPair(dir.path('cancel.sock'));
    // Larger than the socket buffers and never read: stays pending in the addon.
    const result = new Promise<Error | null | undefined>((resolve) => client.write(Buffer.alloc(8 * MiB), resolve));
    client.on('error', () => undefined);
    await new Promise((resolve) => setTimeout(resolve, 20));
    client.destroy();
    const error = (await result) as NativeError;
    assert.equal(error?.code, 'ECANCELED');
    peer.destroy();
    await server.close();
  });

  it('opens and closes 2,000 connections without leaking fds', async () => {
    const path = dir.path('many.sock');
    const counter = closeCounter();
    const server = await unixServer(path, (socket) => {
      counter.track(socket);
      socket.destroy();
    });
    await assertNoFdLeak({
      connect: () => connectNative({ family: 'unix', path }),
      connectFailing: () => connectNative({ family: 'unix', path: dir.path('nobody.sock') }),
      counter,
      batches: 20,
      perBatch: 100,
      failures: 200,
      pollMs: 1,
    });
    await server.close();
  });

  it('connecting to a path without a listener fails with ENOENT or ECONNREFUSED', async () => {
    const missing = dir.path('missing.sock');
    await assert.rejects(connectNative({ family: 'unix', path: missing }), (error: NativeError) => {
      assert.ok(error instanceof NativeError);
      assert.equal(error.code, 'ENOENT');
      assert.equal(error.syscall, 'connect');
      assert.equal(error.message, `connect ENOENT unix:${missing}`);
      return true;
    });

    // A socket file that nobody listens on: bound, never listened.
    const stale = dir.path('stale.sock');
    const native = loadNative();
    const fd = native.socket(native.AF_UNIX);
    const handle = new native.Handle(fd, native.AF_UNIX);
    assert.equal(handle.bind({ family: 'unix', path: stale }), 0);
    await assert.rejects(connectNative({ family: 'unix', path: stale }), { code: 'ECONNREFUSED' });
    await new Promise<void>((resolve) => {
      handle.setCallback((type) => type === 8 && resolve());
      handle.close();
    });
  });

  it('rejects malformed addresses and timeouts before touching the kernel', async () => {
    assert.throws(() => connectNative({ family: 'unix', path: '' }), { code: 'ERR_NATIVE_ADDRESS' });
    assert.throws(() => connectNative({ family: 'unix', path: `/tmp/${'x'.repeat(120)}` }), {
      code: 'ERR_NATIVE_ADDRESS',
    });
    assert.throws(() => connectNative({ family: 'vsock', cid: -1, port: 1 }), { code: 'ERR_NATIVE_ADDRESS' });
    assert.throws(() => connectNative({ family: 'unix', path: '/tmp/x.sock' }, { timeoutMs: 0 }), {
      code: 'ERR_NATIVE_ARGUMENT',
    });
  });

  it('exposes addresses and counters', async () => {
    const path = dir.path('info.sock');
    const { server, client, peer } = await connectedPair(path);
    assert.deepEqual(client.remoteAddress, { family: 'unix', path });
    assert.deepEqual(client.localAddress, { family: 'unix', path: '' });
    assert.deepEqual(peer.localAddress, { family: 'unix', path });
    assert.ok(client.fd >= 0);
    client.end('12345');
    const got = await drain(peer);
    assert.equal(got.bytes, 5);
    assert.equal(peer.bytesRead, 5);
    assert.equal(client.bytesWritten, 5);
    peer.end();
    client.resume();
    await whenClosed(client);
    assert.equal(client.fd, -1);
    await server.close();
  });
});

describe('native sockets and process lifetime', { skip, timeout: 60_000 }, () => {
  it('an idle, closed server and socket let the process exit; a listening one keeps it alive unless unref()ed', async () => {
    const serverModule = new URL('../src/net/native-server.js', import.meta.url).href;
    const socketModule = new URL('../src/net/native-socket.js', import.meta.url).href;
    const dir = socketDir();
    after(() => dir.cleanup());
    const run = (body: string): { status: number | null; stdout: string; stderr: string } => {
      const script = `
        import { NativeServer } from ${JSON.stringify(serverModule)};
        import { connectNative } from ${JSON.stringify(socketModule)};
        const path = ${JSON.stringify(dir.path('life.sock'))};
        ${body}
      `;
      // The timeout only bounds a hung child; the assertions are on its output and exit status.
      const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
        encoding: 'utf8',
        timeout: 20_000,
      });
      return { status: result.status, stdout: result.stdout, stderr: result.stderr };
    };

    const closed = run(`
      const server = new NativeServer();
      server.on('connection', (s) => { s.resume(); s.on('end', () => s.end('bye')); });
      await server.listen({ family: 'unix', path });
      const c = await connectNative({ family: 'unix', path });
      c.resume();
      c.end('hi');
      await new Promise((r) => c.on('close', r));
      await server.close();
      setTimeout(() => console.log('loop still alive'), 2000).unref();
      console.log('done');
    `);
    assert.equal(closed.status, 0, closed.stderr);
    assert.equal(closed.stdout.trim(), 'done');

    const listening = run(`
      const server = new NativeServer();
      await server.listen({ family: 'unix', path });
      setTimeout(() => { console.log('kept alive'); process.exit(0); }, 200).unref();
    `);
    assert.equal(listening.status, 0, listening.stderr);
    assert.equal(listening.stdout.trim(), 'kept alive');

    const unrefed = run(`
      const server = new NativeServer();
      await server.listen({ family: 'unix', path });
      server.unref();
      setTimeout(() => console.log('kept alive'), 2000).unref();
      console.log('exiting');
    `);
    assert.equal(unrefed.status, 0, unrefed.stderr);
    assert.equal(unrefed.stdout.trim(), 'exiting');

    const throwing = run(`
      process.on('uncaughtException', (error) => { console.log('uncaught ' + error.message); process.exit(0); });
      const server = new NativeServer();
      server.on('connection', (s) => s.on('data', () => { throw new Error('boom'); }));
      await server.listen({ family: 'unix', path });
      const c = await connectNative({ family: 'unix', path });
      c.write('x');
    `);
    assert.equal(throwing.status, 0, throwing.stderr);
    assert.equal(throwing.stdout.trim(), 'uncaught boom');
  });

  it('terminating a worker with busy native sockets neither crashes nor leaks sockets', () => {
    const dir = socketDir();
    after(() => dir.cleanup());
    const workerBody = `
      import { NativeServer } from ${JSON.stringify(new URL('../src/net/native-server.js', import.meta.url).href)};
      import { connectNative } from ${JSON.stringify(new URL('../src/net/native-socket.js', import.meta.url).href)};
      import { parentPort, threadId } from 'node:worker_threads';
      const path = ${JSON.stringify(dir.path('w'))} + threadId + '.sock';
      const server = new NativeServer();
      server.on('connection', (s) => { s.on('error', () => {}); s.resume(); s.write(Buffer.alloc(1 << 20)); });
      await server.listen({ family: 'unix', path });
      for (let i = 0; i < 40; i++) {
        const c = await connectNative({ family: 'unix', path });
        c.on('error', () => {});
        c.resume();
        c.write(Buffer.alloc(1 << 20));
        if (i % 3 === 0) c.destroy();
        if (i === 0) parentPort.postMessage('streaming');
      }
    `;
    const workerFile = dir.path('worker.mjs');
    writeFileSync(workerFile, workerBody);
    const script = `
      import { Worker } from 'node:worker_threads';
      import { readdirSync, readlinkSync } from 'node:fs';
      const sockets = () => readdirSync('/proc/self/fd').filter((fd) => { try { return readlinkSync('/proc/self/fd/' + fd).startsWith('socket:'); } catch { return false; } }).length;
      const before = sockets();
      let streaming = 0;
      for (let i = 0; i < 12; i++) {
        const worker = new Worker(${JSON.stringify(workerFile)}, { execArgv: [] });
        const streamingNow = new Promise((resolve) => worker.once('message', () => { streaming++; resolve(); }));
        // Terminate at varying points: every other worker once it says it streams (a slow machine must not turn
        // this into "terminated while loading" only), the others after i*10 ms, while modules load or connect.
        if (i % 2 === 0) await Promise.race([streamingNow, new Promise((resolve) => setTimeout(resolve, 20_000))]);
        else await new Promise((resolve) => setTimeout(resolve, i * 10));
        await worker.terminate();
      }
      console.log(JSON.stringify({ before, after: sockets(), streaming }));
    `;
    const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    assert.equal(result.status, 0, `the process must survive worker termination: ${result.stderr}`);
    const {
      before,
      after: remaining,
      streaming,
    } = JSON.parse(result.stdout) as { before: number; after: number; streaming: number };
    assert.equal(remaining, before);
    assert.ok(streaming > 0, 'some workers must have been terminated mid-stream');
  });
});
