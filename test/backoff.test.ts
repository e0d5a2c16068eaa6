import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { backoffDelay, MAX_TIMER_MS, timerDelay } from '../src/core/backoff.js';

describe('backoff', () => {
  it('doubles from the base with each failure, up to the cap, and waits nothing before a failure', () => {
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5].map((n) => backoffDelay(n, 100, 1_000)),
      [0, 100, 200, 400, 800, 1_000],
    );
    assert.equal(backoffDelay(3, 0, 1_000), 0);
  });

  it('stays at the cap, finite, after any number of failures', () => {
    for (const failures of [41, 1_000, 1e9, Number.MAX_SAFE_INTEGER])
      assert.equal(backoffDelay(failures, 1, 60_000), 60_000);
  });

  it('clamps timer delays into what setTimeout honours', () => {
    assert.equal(timerDelay(-5), 0);
    assert.equal(timerDelay(5, 10), 10);
    assert.equal(timerDelay(2 ** 40), MAX_TIMER_MS);
    assert.equal(timerDelay(1234), 1234);
  });
});
