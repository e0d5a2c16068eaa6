import assert from 'node:assert/strict';
import { createPublicKey } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setImmediate as tick } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { silentLogger } from '../src/core/log.js';
import { AcmeCertificates } from '../src/tls/acme-certificates.js';
import type { AcmeIssued } from '../src/tls/acme-order.js';
import { openSelfCertificateSource, type SelfCertificateSource } from '../src/tls/certificate-source.js';
import { RENEW_JITTER_FRACTION, renewalTime, RetryBackoff, WakeUp, type Clock } from '../src/tls/renewal-schedule.js';
import { TlsAlpnChallenges } from '../src/tls/tls-alpn-challenges.js';
import { TlsError } from '../src/tls/tls-error.js';

const DAY = 24 * 3600_000;
const T0 = Date.parse('2030-01-01T00:00:00Z');

/** A clock that moves only when told, firing due timers in time order. */
class ManualClock implements Clock {
  #now: number;
  /** Resolves once the work a fired timer started is done (the manager's order settled). */
  quiet: () => Promise<void> = settle;
  #timers = new Map<number, { at: number; fn: () => void }>();
  #nextId = 1;
  /** Every delay asked of setTimeout, to see that long waits are split. */
  readonly delays: number[] = [];

  constructor(now: number) {
    this.#now = now;
  }

  now(): number {
    return this.#now;
  }

  setTimeout(fn: () => void, ms: number): unknown {
    const id = this.#nextId++;
    this.delays.push(ms);
    this.#timers.set(id, { at: this.#now + ms, fn });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.#timers.delete(handle as number);
  }

  get pending(): number {
    return this.#timers.size;
  }

  /** Move to `to`, firing every timer due by then (and those they set), letting promises settle between. */
  async advanceTo(to: number): Promise<void> {
    for (;;) {
      const due = [...this.#timers.entries()].filter(([, t]) => t.at <= to).sort((a, b) => a[1].at - b[1].at)[0];
      if (!due) break;
      this.#timers.delete(due[0]);
      this.#now = Math.max(this.#now, due[1].at);
      due[1].fn();
      await this.quiet();
    }
    this.#now = Math.max(this.#now, to);
    await this.quiet();
  }
}

// A function, not the getter itself: TypeScript would narrow `acme.current` across assertions as if it could not change.
const servedBy = (acme: AcmeCertificates) => acme.current;

/** Let pending promise callbacks run. */
async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await tick();
}

/**
 * Wait until `acme` has no order in flight. Key generation and signing run on the libuv pool, so
 * this polls; the bound only stops a broken test from hanging.
 */
async function idle(acme: AcmeCertificates): Promise<void> {
  for (let i = 0; i < 100_000 && acme.status().ordering; i++) await tick();
  assert.equal(acme.status().ordering, false, 'the order settled');
}

describe('renewal schedule', () => {
  it('renews at two thirds of the lifetime, moved by at most the jitter either way', () => {
    const notAfter = T0 + 90 * DAY;
    assert.equal(
      renewalTime(T0, notAfter, 2 / 3, () => 0.5),
      T0 + 60 * DAY,
    );
    assert.equal(
      renewalTime(T0, notAfter, 2 / 3, () => 0),
      T0 + 60 * DAY - RENEW_JITTER_FRACTION * 90 * DAY,
    );
    const latest = renewalTime(T0, notAfter, 2 / 3, () => 0.999999);
    assert.ok(latest <= T0 + 60 * DAY + RENEW_JITTER_FRACTION * 90 * DAY && latest > T0 + 64 * DAY);
    for (let i = 0; i < 1000; i++) {
      const at = renewalTime(T0, notAfter, 2 / 3);
      assert.ok(at >= T0 + 55.5 * DAY && at <= T0 + 64.5 * DAY, `renewal at day ${(at - T0) / DAY}`);
    }
    // Clamped inside the lifetime whatever fraction and jitter say.
    assert.equal(
      renewalTime(T0, T0 + DAY, 0.99, () => 0.999999),
      T0 + DAY,
    );
  });

  it('backs off exponentially from min to max, half fixed and half random, and resets after a success', () => {
    const upper = new RetryBackoff(1000, 8000, () => 1);
    assert.deepEqual(
      [1, 2, 3, 4, 5].map(() => upper.next()),
      [1000, 2000, 4000, 8000, 8000],
    );
    assert.equal(upper.failures, 5);
    upper.reset();
    assert.equal(upper.next(), 1000);
    const lower = new RetryBackoff(1000, 8000, () => 0);
    assert.deepEqual(
      [1, 2, 3, 4].map(() => lower.next()),
      [500, 1000, 2000, 4000],
    );
    const many = new RetryBackoff(1, 60_000, () => 0.5);
    for (let i = 0; i < 2000; i++) assert.ok(Number.isFinite(many.next()));
    assert.throws(() => new RetryBackoff(0, 10), RangeError);
    assert.throws(() => new RetryBackoff(10, 5), RangeError);
  });

  it('waits beyond the 2^31 ms setTimeout limit in steps, firing once at the right time', async () => {
    const clock = new ManualClock(T0);
    const wake = new WakeUp(clock);
    let fired = 0;
    wake.set(T0 + 60 * DAY, () => fired++);
    assert.ok(clock.delays.every((ms) => ms <= 2 ** 31 - 1));
    await clock.advanceTo(T0 + 60 * DAY - 1);
    assert.equal(fired, 0);
    assert.ok(clock.delays.length > 1, 'the wait was re-armed');
    await clock.advanceTo(T0 + 60 * DAY);
    assert.equal(fired, 1);
    assert.equal(wake.at, undefined);
  });
});

describe('ACME certificates: renewal against an injected clock', () => {
  let stateDir: string;
  let ca: SelfCertificateSource;

  before(async () => {
    stateDir = await mkdtemp(join(tmpdir(), 'acme-renewal-'));
    ca = await openSelfCertificateSource(stateDir, { logger: silentLogger() });
  });
  after(async () => {
    await ca.close();
    await rm(stateDir, { recursive: true, force: true });
  });

  /** A fake CA: each call takes the next scripted outcome; a success is a real leaf for the key, with the given dates. */
  function scriptedOrder(clock: ManualClock, script: Array<'ok' | 'fail'>, lifetimeMs: number) {
    const calls: number[] = [];
    const order = async (keyPem: string): Promise<AcmeIssued> => {
      calls.push(clock.now());
      const outcome = script.shift() ?? 'fail';
      if (outcome === 'fail') throw new TlsError('ERR_TLS_ACME', 'scripted CA failure');
      const spki = new Uint8Array(createPublicKey(keyPem).export({ type: 'spki', format: 'der' }));
      const leaf = await ca.issue({
        serverName: 'acme.test',
        dnsNames: ['acme.test'],
        publicKeySpki: spki,
        attestationDocument: new Uint8Array(),
      });
      return {
        certPem: leaf.certPem,
        chainPem: leaf.chainPem,
        notBefore: new Date(clock.now()),
        notAfter: new Date(clock.now() + lifetimeMs),
      };
    };
    return { order, calls };
  }

  function manager(clock: ManualClock, order: (keyPem: string) => Promise<AcmeIssued>) {
    const acme = new AcmeCertificates({
      domains: ['ACME.test'],
      order,
      challenges: new TlsAlpnChallenges(),
      renewAtFraction: 2 / 3,
      retryMinMs: 60_000,
      retryMaxMs: 3600_000,
      logger: silentLogger(),
      clock,
      random: () => 0.5,
    });
    clock.quiet = () => idle(acme);
    return acme;
  }

  it('orders at start, renews at 2/3 of the lifetime, keeps the old certificate through failed renewals with backoff', async () => {
    const clock = new ManualClock(T0);
    const { order, calls } = scriptedOrder(clock, ['ok', 'fail', 'fail', 'ok'], 90 * DAY);
    const acme = manager(clock, order);
    assert.equal(servedBy(acme), undefined, 'nothing is served before the first issuance');
    assert.equal(acme.covers('acme.test.'), true);
    assert.equal(acme.covers('other.test'), false);

    acme.start();
    await idle(acme);
    assert.deepEqual(calls, [T0]);
    const first = servedBy(acme);
    assert.ok(first);
    assert.equal(acme.status().state, 'valid');
    assert.equal(acme.nextAttemptAt, T0 + 60 * DAY, 'random 0.5 is the middle of the jitter: exactly 2/3');

    await clock.advanceTo(T0 + 60 * DAY - 1);
    assert.equal(calls.length, 1, 'no renewal before its time');

    await clock.advanceTo(T0 + 60 * DAY);
    assert.deepEqual(calls.slice(1), [T0 + 60 * DAY], 'renewal attempted at 2/3');
    assert.equal(servedBy(acme), first, 'the failed renewal leaves the current certificate served');
    assert.equal(acme.status().state, 'failing');
    assert.equal(acme.health().ok, true, 'a failing renewal with a valid certificate is healthy');
    // random 0.5 with equal jitter: 3/4 of min * 2^(n-1).
    assert.equal(acme.nextAttemptAt, T0 + 60 * DAY + 45_000);

    await clock.advanceTo(T0 + 60 * DAY + 45_000);
    assert.equal(calls.length, 3);
    assert.equal(servedBy(acme), first);
    assert.equal(acme.status().consecutiveFailures, 2);
    assert.equal(acme.nextAttemptAt, T0 + 60 * DAY + 45_000 + 90_000, 'the second retry waits twice as long');

    await clock.advanceTo(T0 + 60 * DAY + 135_000);
    assert.equal(calls.length, 4);
    const second = servedBy(acme);
    assert.ok(second, 'a certificate is served after the successful renewal');
    assert.notEqual(second.certPem, first.certPem, 'the renewed certificate replaces the old one');
    const status = acme.status();
    assert.equal(status.state, 'valid');
    assert.equal(status.consecutiveFailures, 0);
    assert.equal(status.failures, 2);
    assert.equal(status.issued, 2);
    assert.equal(
      acme.nextAttemptAt,
      T0 + 60 * DAY + 135_000 + 60 * DAY,
      'the next renewal is 2/3 into the new lifetime',
    );
    acme.close();
    assert.equal(clock.pending, 0, 'close cancels the schedule');
  });

  it('stops serving a certificate that expired while renewals kept failing, and keeps retrying at the cap', async () => {
    const clock = new ManualClock(T0);
    const { order, calls } = scriptedOrder(clock, ['ok'], 3 * 3600_000);
    const acme = manager(clock, order);
    acme.start();
    await idle(acme);
    const first = servedBy(acme);
    assert.ok(first);
    await clock.advanceTo(T0 + 3 * 3600_000 - 1);
    assert.equal(servedBy(acme), first, 'served until its notAfter');
    assert.ok(calls.length > 2, 'renewal started at 2/3 and kept retrying');
    await clock.advanceTo(T0 + 3 * 3600_000);
    assert.equal(servedBy(acme), undefined, 'after notAfter the domain falls back to the attested base');
    assert.equal(acme.status().state, 'expired');
    assert.equal(acme.health().ok, false);
    const before = calls.length;
    await clock.advanceTo(T0 + 3 * 3600_000 + 10 * 3600_000);
    const retries = calls.length - before;
    assert.ok(retries >= 10 && retries <= 14, `retries are capped near retry_max_ms (1 h): ${retries} in 10 h`);
    acme.close();
  });

  it('a first order that fails leaves the domains on the attested base and is retried with backoff', async () => {
    const clock = new ManualClock(T0);
    const { order, calls } = scriptedOrder(clock, ['fail', 'ok'], 90 * DAY);
    const acme = manager(clock, order);
    acme.start();
    await idle(acme);
    assert.equal(servedBy(acme), undefined);
    assert.equal(acme.status().state, 'failing');
    assert.equal(acme.health().ok, false, 'no ACME certificate and a failed order: not healthy');
    assert.match(acme.status().lastError ?? '', /scripted CA failure/);
    await clock.advanceTo(T0 + 45_000);
    assert.deepEqual(calls, [T0, T0 + 45_000]);
    assert.ok(servedBy(acme));
    assert.equal(acme.health().ok, true);
    acme.close();
  });
});
