/** Shared by the native-*.test files: temp socket paths, streaming hashes, fd counts. */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Duplex, Readable, Writable } from 'node:stream';
import { loadNative, nativeUnavailable } from '../src/native/native-binding.js';

export const MiB = 1024 * 1024;

/** The reason native tests cannot run here (addon not built), or undefined. */
export const NATIVE_SKIP = nativeUnavailable();

/** Why vsock tests cannot run (no addon, or a kernel without AF_VSOCK), or undefined. */
export function vsockUnavailable(): string | undefined {
  if (NATIVE_SKIP !== undefined) return NATIVE_SKIP;
  const native = loadNative();
  const fd = native.socket(native.AF_VSOCK);
  if (fd < 0) return `the kernel has no AF_VSOCK (socket() failed with errno ${-fd})`;
  native.closeFd(fd);
  return undefined;
}

/** A private directory for socket files, removed by the returned cleanup. */
export function socketDir(): { path(name: string): string; cleanup(): void } {
  const dir = mkdtempSync(join(tmpdir(), 'native-'));
  return {
    path: (name) => join(dir, name),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

export function openFdCount(): number {
  return readdirSync('/proc/self/fd').length;
}

/** Writes `total` random bytes honouring write()'s return value, then end()s; resolves to their SHA-256. */
export async function pumpRandom(stream: Writable, total: number, chunkSize = MiB): Promise<string> {
  const hash = createHash('sha256');
  let sent = 0;
  while (sent < total) {
    const chunk = randomBytes(Math.min(chunkSize, total - sent));
    hash.update(chunk);
    sent += chunk.length;
    if (!stream.write(chunk)) await once(stream, 'drain');
  }
  stream.end();
  return hash.digest('hex');
}

/** Reads a stream to its end; resolves to the byte count and SHA-256. */
export function drain(stream: Readable): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    stream.on('data', (chunk: Buffer) => {
      bytes += chunk.length;
      hash.update(chunk);
    });
    stream.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    stream.once('error', reject);
  });
}

/** Resolves once the stream emitted 'close', even if that already happened. */
export function whenClosed(stream: Readable | Writable): Promise<void> {
  return stream.closed ? Promise.resolve() : once(stream, 'close').then(() => undefined);
}

export function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

/**
 * Writes `chunk` until `total` bytes are queued, waiting for 'drain' whenever write() says so, then end()s.
 * `queued` and `drains` tell a backpressure test how far the writer got.
 */
export function writeRepeatedly(
  stream: Writable,
  chunk: Buffer,
  total: number,
): { done: Promise<void>; queued(): number; drains(): number } {
  let queued = 0;
  let drains = 0;
  const done = (async () => {
    while (queued < total) {
      queued += chunk.length;
      if (!stream.write(chunk)) {
        await once(stream, 'drain');
        drains++;
      }
    }
    stream.end();
  })();
  return { done, queued: () => queued, drains: () => drains };
}

/** Polls `value` every `intervalMs` until it stays the same for 5 polls (true) or `rounds` polls pass (false). */
export async function settles(value: () => number, intervalMs: number, rounds: number): Promise<boolean> {
  let last = -1;
  let stableRounds = 0;
  for (let round = 0; round < rounds && stableRounds < 5; round++) {
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
    stableRounds = value() === last ? stableRounds + 1 : 0;
    last = value();
  }
  return stableRounds === 5;
}

/** Sends `total` random bytes each way at once, then checks both directions arrived whole (counts and SHA-256). */
export async function exchangeBothWays(a: Duplex, b: Duplex, total: number, chunkSize = MiB): Promise<void> {
  const [aSent, bSent, bGot, aGot] = await Promise.all([
    pumpRandom(a, total, chunkSize),
    pumpRandom(b, total, chunkSize),
    drain(b),
    drain(a),
  ]);
  assert.equal(bGot.bytes, total);
  assert.equal(aGot.bytes, total);
  assert.equal(bGot.sha256, aSent);
  assert.equal(aGot.sha256, bSent);
}

/** Counts the server side's closed connections; hand `track` every accepted socket. */
export function closeCounter(): {
  track(socket: Readable | Writable): void;
  /** Waits (polling every `pollMs`) until `count` server sockets closed, and asserts it. */
  reached(count: number, pollMs: number): Promise<void>;
} {
  let closed = 0;
  return {
    track: (socket) => void socket.on('close', () => closed++),
    reached: async (count, pollMs) => {
      for (let i = 0; i < 2000 && closed < count; i++) await new Promise((resolve) => setTimeout(resolve, pollMs));
      assert.equal(closed, count);
    },
  };
}

/**
 * Opens and closes `batches` × `perBatch` connections, then `failures` connects that must fail,
 * and asserts the process's open fd count is back where it was after the first connection.
 * The listener must destroy each accepted socket after `counter.track(socket)`.
 */
export async function assertNoFdLeak(options: {
  connect(): Promise<Readable & Writable>;
  connectFailing(): Promise<unknown>;
  counter: ReturnType<typeof closeCounter>;
  batches: number;
  perBatch: number;
  failures: number;
  pollMs: number;
}): Promise<void> {
  const { counter, pollMs } = options;
  const roundTrip = async (): Promise<void> => {
    const socket = await options.connect();
    socket.destroy();
    await whenClosed(socket);
  };
  await roundTrip();
  await counter.reached(1, pollMs);
  const before = openFdCount();
  for (let batch = 1; batch <= options.batches; batch++) {
    await Promise.all(Array.from({ length: options.perBatch }, roundTrip));
    await counter.reached(1 + batch * options.perBatch, pollMs);
  }
  // Failed connects must release their fd too.
  const failed = await Promise.allSettled(Array.from({ length: options.failures }, options.connectFailing));
  assert.ok(failed.every((result) => result.status === 'rejected'));
  assert.equal(openFdCount(), before);
}

/**
 * Half-close with the server first: `peer` sends a request and ends; `client` must read it to its
 * end with its write side still open, then reply `replyBytes` random bytes that arrive whole.
 */
export async function assertReplyAfterPeerEnds(
  client: Duplex & { readableEnded: boolean },
  peer: Duplex,
  replyBytes: number,
): Promise<void> {
  const reply = randomBytes(replyBytes);
  const fromClient = drain(peer);
  peer.end('request');
  const request = await drain(client);
  assert.equal(request.bytes, 'request'.length);
  assert.equal(client.readableEnded, true);
  assert.equal(client.writable, true, 'the write side stays open after the peer FIN');
  client.end(reply);
  const got = await fromClient;
  assert.equal(got.bytes, reply.length);
  assert.equal(got.sha256, sha256(reply));
  await Promise.all([whenClosed(client), whenClosed(peer)]);
}
