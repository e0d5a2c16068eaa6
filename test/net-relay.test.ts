import assert from 'node:assert/strict';
import { setTimeout as sleep } from 'node:timers/promises';
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
