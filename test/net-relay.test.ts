import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
import { Duplex } from 'node:stream';
import { describe, it } from 'node:test';
import { relay, type RelayOutcome } from '../src/net/relay.js';
import { duplexPair } from './helpers/attested-tls.js';

const IDLE_MS = 400;

/** A relay between two duplex pairs; the test drives the far ends. */
function relayBetweenPairs() {
  const [client, a] = duplexPair();
  const [b, app] = duplexPair();
  let settled: RelayOutcome | undefined;
  const outcome = relay(a, b, { idleTimeoutMs: IDLE_MS }).then((result) => (settled = result));
  return { client, app, a, b, outcome, settled: () => settled };
}

describe('relay idle timeout (bytes counted per chunk, checked by the timer)', () => {
  it('stays open while bytes keep moving past several idle periods, then closes both sides once they stop', async () => {
    const { client, app, a, b, outcome, settled } = relayBetweenPairs();
    const received: Buffer[] = [];
    app.on('data', (chunk: Buffer) => received.push(chunk));
    // Each gap is a tenth of the idle period; the writes together span two and a half periods.
    for (let i = 0; i < 25; i++) {
      client.write(Buffer.alloc(100, i));
      await sleep(IDLE_MS / 10);
    }
    assert.equal(settled(), undefined, 'the relay ended while bytes were still moving');
    const result = await outcome;
    assert.equal(result.end, 'idle');
    assert.equal(result.aToB, 2500);
    assert.equal(result.bToA, 0);
    assert.equal(Buffer.concat(received).length, 2500);
    assert.ok(a.destroyed && b.destroyed, 'both sides are destroyed');
  });

  it('counts activity in either direction', async () => {
    const { app, outcome, settled } = relayBetweenPairs();
    for (let i = 0; i < 25; i++) {
      app.write(Buffer.alloc(10));
      await sleep(IDLE_MS / 10);
    }
    assert.equal(settled(), undefined, 'the relay ended while the app was still sending');
    const result = await outcome;
    assert.equal(result.end, 'idle');
    assert.equal(result.bToA, 250);
  });

  it('ends a relay on which nothing ever moves', async () => {
    const { outcome } = relayBetweenPairs();
    const result = await outcome;
    assert.deepEqual({ end: result.end, aToB: result.aToB, bToA: result.bToA }, { end: 'idle', aToB: 0, bToA: 0 });
  });
});

/** A writable end that holds every write's callback until release() is called: a peer that stopped reading. */
function stalledWritable(highWaterMark: number) {
  const held: (() => void)[] = [];
  const received: Buffer[] = [];
  const stream = new Duplex({
    allowHalfOpen: true,
    highWaterMark,
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      received.push(chunk);
      held.push(() => callback());
    },
  });
  const release = () => {
    for (const done of held.splice(0)) done();
  };
  return { stream, received, release, held };
}

describe('relay data path', () => {
  it('stops reading while the other side is over its high-water mark and resumes on drain, losing nothing', async () => {
    const [client, a] = duplexPair();
    const slow = stalledWritable(1024);
    const relayed = relay(a, slow.stream, { idleTimeoutMs: 60_000 });
    for (let i = 0; i < 8; i++) client.write(Buffer.alloc(512, i));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(a.readableFlowing, false, 'the source is paused while the writes are not done');
    const before = slow.received.length;
    assert.ok(before < 8, `only what fits was written (${before} of 8 chunks)`);
    while (slow.received.length < 8) {
      slow.release();
      await new Promise((resolve) => setImmediate(resolve));
    }
    slow.release();
    assert.equal(a.readableFlowing, true, 'reading resumed after drain');
    assert.deepEqual(
      Buffer.concat(slow.received),
      Buffer.concat(Array.from({ length: 8 }, (_, i) => Buffer.alloc(512, i))),
    );
    client.destroy();
    const result = await relayed;
    assert.equal(result.aToB, 4096);
  });

  it('forwards what a paused side already holds, then half-closes each way in turn', async () => {
    const [client, a] = duplexPair();
    const [b, app] = duplexPair();
    a.pause();
    client.write(Buffer.from('held before the relay'));
    await new Promise((resolve) => setImmediate(resolve));
    const relayed = relay(a, b, { idleTimeoutMs: 60_000 });
    const toApp: Buffer[] = [];
    app.on('data', (chunk: Buffer) => toApp.push(chunk));
    const appEnded = new Promise((resolve) => app.once('end', resolve));
    client.end();
    await appEnded;
    assert.equal(Buffer.concat(toApp).toString(), 'held before the relay');
    // The client's FIN reached the app; the app still answers on its half.
    const toClient: Buffer[] = [];
    client.on('data', (chunk: Buffer) => toClient.push(chunk));
    const clientEnded = new Promise((resolve) => client.once('end', resolve));
    app.end(Buffer.from('answer after FIN'));
    await clientEnded;
    assert.equal(Buffer.concat(toClient).toString(), 'answer after FIN');
    const result = await relayed;
    assert.deepEqual({ end: result.end, aToB: result.aToB, bToA: result.bToA }, { end: 'closed', aToB: 21, bToA: 16 });
  });

  it('ends the other side when one had already ended before the relay began', async () => {
    const [client, a] = duplexPair();
    const [b, app] = duplexPair();
    client.end();
    a.resume();
    await new Promise((resolve) => a.once('end', resolve));
    assert.ok(a.readableEnded);
    const relayed = relay(a, b, { idleTimeoutMs: 60_000 });
    app.resume();
    await new Promise((resolve) => app.once('end', resolve));
    app.end();
    const result = await relayed;
    assert.equal(result.end, 'closed');
  });

  it('ends at once, destroying the other side, when one side was destroyed before the relay began', async () => {
    const [, a] = duplexPair();
    const [b] = duplexPair();
    a.destroy();
    await new Promise((resolve) => setImmediate(resolve));
    const result = await relay(a, b, { idleTimeoutMs: 60_000 });
    assert.equal(result.end, 'closed');
    assert.ok(b.destroyed, 'the other side is destroyed');
  });
});
