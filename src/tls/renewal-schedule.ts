/**
 * When to renew a certificate and how long to wait after a failed attempt, kept apart from the
 * ACME protocol so the schedule can be tested against an injected clock.
 */
import { backoffDelay, timerDelay } from '../core/backoff.js';

/** Renewal moves by up to this share of the lifetime either way, so a fleet started together does not renew together. */
export const RENEW_JITTER_FRACTION = 0.05;
// setTimeout fires at once for delays beyond a signed 32-bit ms count; longer waits are re-armed.

/** The clock and timers a schedule runs on; tests pass a manual one. */
export interface Clock {
  now(): number;
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

/** The process clock; its timers never keep the process alive on their own. */
export const systemClock: Clock = {
  now: () => Date.now(),
  setTimeout(fn, ms) {
    const timer = setTimeout(fn, ms);
    timer.unref();
    return timer;
  },
  clearTimeout: (handle) => clearTimeout(handle as NodeJS.Timeout),
};

/**
 * The time (ms since the epoch) to renew a certificate valid from `notBefore` to `notAfter`: at
 * `fraction` of its lifetime, plus or minus RENEW_JITTER_FRACTION of it, clamped inside the lifetime.
 * `random` returns a number in [0, 1).
 */
export function renewalTime(
  notBefore: number,
  notAfter: number,
  fraction: number,
  random: () => number = Math.random,
): number {
  const lifetime = Math.max(0, notAfter - notBefore);
  const jitter = (random() * 2 - 1) * RENEW_JITTER_FRACTION * lifetime;
  const at = notBefore + fraction * lifetime + jitter;
  return Math.min(Math.max(at, notBefore), notAfter);
}

/**
 * Exponential backoff for failed renewals: the n-th consecutive failure waits about min * 2^(n-1),
 * capped at max. Half the delay is fixed and half random ("equal jitter"), so retries stay spread
 * out without ever collapsing to zero.
 */
export class RetryBackoff {
  readonly minMs: number;
  readonly maxMs: number;
  readonly #random: () => number;
  #failures = 0;

  constructor(minMs: number, maxMs: number, random: () => number = Math.random) {
    if (!(minMs > 0) || !(maxMs >= minMs)) throw new RangeError('backoff needs 0 < minMs <= maxMs');
    this.minMs = minMs;
    this.maxMs = maxMs;
    this.#random = random;
  }

  /** Consecutive failures counted so far. */
  get failures(): number {
    return this.#failures;
  }

  /** Count one more failure and return how long to wait before the next attempt. */
  next(): number {
    const ceiling = backoffDelay(this.#failures + 1, this.minMs, this.maxMs);
    this.#failures += 1;
    return Math.round(ceiling / 2 + (this.#random() * ceiling) / 2);
  }

  /** Forget the failures after a success. */
  reset(): void {
    this.#failures = 0;
  }
}

/** One pending wake-up at an absolute time, re-armed in steps when that is beyond what setTimeout can wait. */
export class WakeUp {
  readonly #clock: Clock;
  #handle: unknown;
  #at: number | undefined;

  constructor(clock: Clock) {
    this.#clock = clock;
  }

  /** When the pending wake-up is due, if one is. */
  get at(): number | undefined {
    return this.#at;
  }

  /** Call `fn` at `at` (ms since the epoch), replacing any earlier wake-up. */
  set(at: number, fn: () => void): void {
    this.cancel();
    this.#at = at;
    // Always through a timer, even when already due, so `fn` never runs inside the caller's stack.
    const arm = () => {
      this.#handle = this.#clock.setTimeout(fire, timerDelay(at - this.#clock.now()));
    };
    const fire = () => {
      if (at > this.#clock.now()) return arm();
      this.#handle = undefined;
      this.#at = undefined;
      fn();
    };
    arm();
  }

  /** Drop the pending wake-up, if any. */
  cancel(): void {
    if (this.#handle !== undefined) this.#clock.clearTimeout(this.#handle);
    this.#handle = undefined;
    this.#at = undefined;
  }
}
