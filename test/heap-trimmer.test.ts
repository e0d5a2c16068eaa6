import assert from 'node:assert/strict';
import { describe, it, type TestContext } from 'node:test';
import { HeapTrimmer } from '../src/native/heap-trimmer.js';
import { nativeUnavailable, trimHeap } from '../src/native/native-binding.js';

/**
 * A trimmer over a fake count and trim, on mocked timers, recording what each trim saw. Its clock is
 * `clock.ms`, which tests move with the mocked timers (`advance`); a trim moves it by `trimMs`.
 */
function harness(afterDrop = 10, delayMs = 1000, afterRise?: number, minIntervalMs = 0, trimMs = 0) {
  let open = 0;
  const clock = { ms: 0 };
  const trims: number[] = [];
  const trimmer = new HeapTrimmer({
    trim: () => {
      trims.push(open);
      clock.ms += trimMs;
      return true;
    },
    open: () => open,
    afterDrop,
    afterRise,
    delayMs,
    minIntervalMs,
    now: () => clock.ms,
  });
  const set = (count: number) => {
    open = count;
    trimmer.changed(count);
  };
  return { trimmer, trims, set, clock };
}

/** Moves the trimmer's clock and the mocked timers together, in half-second steps. */
function advanceBoth(t: TestContext, clock: { ms: number }, ms: number): void {
  for (let step = 0; step < ms; step += 500) {
    clock.ms += 500;
    t.mock.timers.tick(500);
  }
}

/**
 * A trimmer (drops of 10, rises of 20, 10 s apart at least, each trim taking 200 ms) that has just run
 * its rise's trim with 40 open.
 */
function afterRiseTrim(t: TestContext) {
  t.mock.timers.enable({ apis: ['setTimeout'] });
  const { trims, set, clock } = harness(10, 1000, 20, 10_000, 200);
  const advance = (ms: number) => advanceBoth(t, clock, ms);
  for (let n = 1; n <= 40; n++) set(n);
  advance(1000);
  assert.deepEqual(trims, [40], "the rise's trim, once the opens pause");
  return { trims, set, advance };
}

describe('HeapTrimmer', () => {
  it('trims once after the count falls by the threshold from its high-water mark, after the delay', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { trimmer, trims, set } = harness();
    for (let n = 1; n <= 30; n++) set(n);
    for (let n = 29; n >= 21; n--) set(n);
    t.mock.timers.tick(5000);
    assert.deepEqual(trims, [], 'a drop of 9 from 30 is under the threshold');
    set(20);
    t.mock.timers.tick(999);
    assert.deepEqual(trims, [], 'not before the delay');
    for (let n = 19; n >= 5; n--) set(n);
    t.mock.timers.tick(1);
    assert.deepEqual(trims, [5], 'one trim for the whole burst of closes, reading the count when it runs');
    assert.equal(trimmer.trims, 1);
  });

  it('needs a new drop from what was open at the last trim before trimming again', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { trims, set } = harness();
    for (let n = 1; n <= 40; n++) set(n);
    set(20);
    t.mock.timers.tick(1000);
    assert.deepEqual(trims, [20]);
    set(15);
    t.mock.timers.tick(5000);
    assert.deepEqual(trims, [20], 'down 5 from 20: no trim');
    for (let n = 16; n <= 50; n++) set(n);
    set(40);
    t.mock.timers.tick(1000);
    assert.deepEqual(trims, [20, 40], 'down 10 from the new high-water mark of 50');
  });

  it('with afterRise, trims once the count has risen by it and then held still for the delay, never without', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const off = harness();
    for (let n = 1; n <= 100; n++) off.set(n);
    t.mock.timers.tick(5000);
    assert.deepEqual(off.trims, [], 'rises alone trim nothing by default');
    const { trims, set } = harness(10, 1000, 20);
    for (let n = 1; n <= 19; n++) set(n);
    t.mock.timers.tick(5000);
    assert.deepEqual(trims, [], 'up 19 is under the threshold');
    for (let n = 20; n <= 30; n++) {
      set(n);
      t.mock.timers.tick(999);
    }
    assert.deepEqual(trims, [], 'not while connections keep opening');
    t.mock.timers.tick(1);
    assert.deepEqual(trims, [30], 'one trim once the opens pause');
    for (let n = 31; n <= 49; n++) set(n);
    t.mock.timers.tick(5000);
    assert.deepEqual(trims, [30], 'up 19 from the last trim: no trim');
    set(50);
    t.mock.timers.tick(1000);
    assert.deepEqual(trims, [30, 50]);
  });

  it('spaces trims by the minimum interval, and by 100 times what the last one took, postponing rather than dropping', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { trims, set, clock } = harness(10, 1000, undefined, 10_000, 200);
    const advance = (ms: number) => advanceBoth(t, clock, ms);
    // The attack: bursts of opens and closes, each earning a trim a second later.
    for (let n = 1; n <= 20; n++) set(n);
    set(0);
    advance(1000);
    assert.deepEqual(trims, [0], 'the first trim is not held back');
    for (let burst = 0; burst < 5; burst++) {
      for (let n = 1; n <= 20; n++) set(n);
      set(0);
      advance(1000);
    }
    assert.deepEqual(trims, [0], 'no second trim within 100 × 200 ms of the first');
    advance(14_000);
    assert.deepEqual(trims, [0], 'still inside the 20 s spacing');
    advance(1500);
    assert.deepEqual(trims, [0, 0], 'the postponed trim runs once the spacing (1.2 s + 20 s) is over');
  });

  it("lets the drop's trim after a rise's wait only the minimum interval, and makes the next trim pay for both", (t) => {
    const { trims, set, advance } = afterRiseTrim(t);
    set(0);
    advance(8000);
    assert.deepEqual(trims, [40], 'the closes wait for the minimum interval');
    advance(2500);
    assert.deepEqual(
      trims,
      [40, 0],
      "10 s after the rise's trim, not 100 × 200 ms: the memory of the closed goes back",
    );
    for (let n = 1; n <= 40; n++) set(n);
    advance(35_000);
    assert.deepEqual(
      trims,
      [40, 0],
      "the next trim waits 100 × (200 + 200) ms: the rise's time is paid after the drop",
    );
    advance(5000);
    assert.deepEqual(trims, [40, 0, 40]);
  });

  it("turns a rise's trim postponed by the spacing into a drop's when the connections close meanwhile", (t) => {
    const { trims, set, advance } = afterRiseTrim(t);
    for (let n = 41; n <= 80; n++) set(n);
    advance(1500);
    assert.deepEqual(trims, [40], "a second rise's trim is postponed to 100 × 200 ms after the first");
    set(0);
    advance(7500);
    assert.deepEqual(trims, [40], 'the closes wait for the minimum interval');
    advance(1500);
    assert.deepEqual(trims, [40, 0], "and no longer: the postponed trim became the drop's");
  });

  it('does not trim after close()', (t) => {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    const { trimmer, trims, set } = harness();
    for (let n = 1; n <= 20; n++) set(n);
    set(0);
    trimmer.close();
    t.mock.timers.tick(5000);
    assert.deepEqual(trims, []);
  });
});

describe('trimHeap (addon)', () => {
  const why = nativeUnavailable();
  it('is exported by the addon and answers whether memory went back', { skip: why }, () => {
    assert.equal(typeof trimHeap(), 'boolean');
  });
});
