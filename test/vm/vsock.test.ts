/**
 * The addon's AF_VSOCK code in a real kernel: vsock_loopback in the QEMU guest of `npm run test:vm`, where a
 * connect to CID 1 reaches a listener on CID_ANY of the same guest. On the host these paths run over AF_UNIX only.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { describe, it } from 'node:test';
import { parseAddress } from '../../src/net/address.js';
import type { NativeError } from '../../src/native/native-binding.js';
import type { NativeSocket } from '../../src/net/native-socket.js';
import { connect, listen, type Listener, type TransportSocket } from '../../src/net/transport.js';
import {
  MiB,
  drain,
  exchangeBothWays,
  assertNoFdLeak,
  assertReplyAfterPeerEnds,
  closeCounter,
  settles,
  sha256,
  whenClosed,
  writeRepeatedly,
} from '../native-helpers.js';
import { GUEST_SKIP, LOCAL_CID } from './guest.js';

let nextPort = 20_000;

/** A listener on vsock:any:PORT (a fresh port each time) whose connections go to `onConnection`. */
async function vsockListener(
  onConnection: (socket: TransportSocket) => void,
): Promise<{ listener: Listener; port: number }> {
  const port = nextPort++;
  return { listener: await listen(parseAddress(`vsock:any:${port}`), onConnection), port };
}

function dial(port: number): Promise<TransportSocket> {
  return connect(parseAddress(`vsock:${LOCAL_CID}:${port}`), { timeoutMs: 10_000 });
}

/** Both ends of one vsock connection through the loopback. */
async function vsockPair(): Promise<{ listener: Listener; port: number; client: NativeSocket; peer: NativeSocket }> {
  let accept!: (socket: TransportSocket) => void;
  const accepted = new Promise<TransportSocket>((resolve) => (accept = resolve));
  const { listener, port } = await vsockListener(accept);
  const client = (await dial(port)) as NativeSocket;
  return { listener, port, client, peer: (await accepted) as NativeSocket };
}

// The timeouts only turn a hang into a failure; no assertion depends on speed (TCG is slow).
describe('the addon over real AF_VSOCK (vsock_loopback, CID 1)', { skip: GUEST_SKIP, timeout: 300_000 }, () => {
  it('vsock: listens on vsock:any:PORT, connects to vsock:1:PORT, both ends see CID 1', async () => {
    const { listener, port, client, peer } = await vsockPair();
    assert.deepEqual(client.remoteAddress, { family: 'vsock', cid: LOCAL_CID, port });
    assert.equal(peer.remoteAddress?.family, 'vsock');
    assert.equal(peer.remoteAddress?.family === 'vsock' && peer.remoteAddress.cid, LOCAL_CID);
    assert.deepEqual(peer.localAddress, { family: 'vsock', cid: LOCAL_CID, port });
    client.destroy();
    peer.destroy();
    await Promise.all([whenClosed(client), whenClosed(peer)]);
    await listener.close();
  });

  it('vsock: bulk both ways at once, 16 MiB each, with matching SHA-256', async () => {
    const { listener, client, peer } = await vsockPair();
    await exchangeBothWays(client, peer, 16 * MiB, 256 * 1024);
    assert.equal(client.bytesWritten, 16 * MiB);
    assert.equal(peer.bytesRead, 16 * MiB);
    await Promise.all([whenClosed(client), whenClosed(peer)]);
    await listener.close();
  });

  it('vsock: half-close, the client ends first and the server still replies in full', async () => {
    const reply = randomBytes(2 * MiB);
    const { listener, client, peer } = await vsockPair();
    const fromClient = drain(peer);
    const toClient = drain(client);
    client.end(Buffer.alloc(1000, 7));
    await once(client, 'finish');
    assert.equal((await fromClient).bytes, 1000, 'the server saw the client FIN after its 1000 bytes');
    assert.equal(peer.writable, true, 'the server can still write after the FIN');
    peer.end(reply);
    const got = await toClient;
    assert.equal(got.bytes, reply.length);
    assert.equal(got.sha256, sha256(reply));
    await Promise.all([whenClosed(client), whenClosed(peer)]);
    await listener.close();
  });

  it('vsock: half-close, the server ends first and the client still replies in full', async () => {
    const { listener, client, peer } = await vsockPair();
    await assertReplyAfterPeerEnds(client, peer, 2 * MiB);
    await listener.close();
  });

  it('vsock: backpressure, a paused reader stalls the writer in kernel buffers, then every byte arrives', async () => {
    const { listener, client: reader, peer: writer } = await vsockPair();
    const total = 32 * MiB;
    const chunk = randomBytes(MiB);
    const writing = writeRepeatedly(writer, chunk, total);
    // Nobody reads: wait until the writer makes no more progress.
    assert.ok(await settles(() => writer.bytesWritten, 50, 400), 'the writer must stall while the reader is paused');
    assert.equal(writing.drains(), 0);
    assert.ok(
      writer.bytesWritten < 8 * MiB,
      `only kernel buffers may take bytes, but ${writer.bytesWritten} were written`,
    );
    assert.ok(
      writing.queued() <= 2 * MiB,
      `the writer must be held at write() === false, but queued ${writing.queued()}`,
    );

    const received = await drain(reader);
    await writing.done;
    assert.equal(received.bytes, total);
    assert.equal(received.sha256, sha256(Buffer.concat(Array.from({ length: total / MiB }, () => chunk))));
    assert.ok(writing.drains() > 0);
    // The writer's read side must see the reader's FIN too, or it never closes.
    writer.resume();
    reader.end();
    await Promise.all([whenClosed(reader), whenClosed(writer)]);
    await listener.close();
  });

  it('vsock: a connect to an unbound port fails with ECONNRESET and a message saying nothing listens there', async () => {
    const port = nextPort++;
    await assert.rejects(dial(port), (error: NativeError) => {
      assert.equal(error.code, 'ECONNRESET', 'real vsock resets a connect to an unbound port (TCP would refuse it)');
      assert.equal(error.syscall, 'connect');
      assert.match(error.message, new RegExp(`nothing listens on vsock:${LOCAL_CID}:${port}`));
      return true;
    });
  });

  it('vsock: fd counts return to the baseline after 500 connections and 100 failed connects', async () => {
    const counter = closeCounter();
    const { listener, port } = await vsockListener((socket) => {
      counter.track(socket);
      socket.destroy();
    });
    const unbound = nextPort++;
    await assertNoFdLeak({
      connect: () => dial(port),
      connectFailing: () => dial(unbound),
      counter,
      batches: 10,
      perBatch: 50,
      failures: 100,
      pollMs: 5,
    });
    await listener.close();
  });
});
