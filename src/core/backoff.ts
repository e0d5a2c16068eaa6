/**
 * Exponential backoff, one way for every retry loop (KMS calls, certificate renewals, the
 * provisioned CA): the wait doubles with each failure up to a cap, and the exponent is capped so
 * it never overflows to Infinity however long the failures go on.
 */

/** setTimeout's largest delay; a larger one fires at once (Node clamps it to 1 ms). */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The wait after `failures` failures in a row (1 = after the first): `baseMs`, doubled each time, at most `capMs`. */
export function backoffDelay(failures: number, baseMs: number, capMs: number): number {
  if (failures <= 0 || baseMs <= 0) return 0;
  return Math.min(capMs, baseMs * 2 ** Math.min(failures - 1, 40));
}

/** Clamps a timer delay to [minMs, MAX_TIMER_MS]. */
export function timerDelay(delayMs: number, minMs = 0): number {
  return Math.min(Math.max(delayMs, minMs), MAX_TIMER_MS);
}
