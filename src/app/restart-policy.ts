/**
 * `[app] restart`: whether the customer's command is started again after it exits, and after
 * how long. The runtime stopping (SIGTERM/SIGINT) always wins over the policy.
 */
import { backoffDelay } from '../core/backoff.js';

export type RestartPolicy = 'never' | 'on-failure' | 'always';

/** The longest wait between two starts, however many restarts came before. */
export const MAX_RESTART_BACKOFF_MS = 60_000;

/** Whether a command that ended with `status` (0 = success) is started again. */
export function shouldRestart(
  policy: RestartPolicy,
  status: number,
  restartsSoFar: number,
  maxRestarts: number,
): boolean {
  if (restartsSoFar >= maxRestarts) return false;
  if (policy === 'always') return true;
  return policy === 'on-failure' && status !== 0;
}

/** The wait before restart number `attempt` (1-based): the base, doubled each time, capped at 60 s. */
export function restartDelayMs(baseMs: number, attempt: number): number {
  // A restart always follows at least one exit, so attempt 0 waits like attempt 1.
  return backoffDelay(Math.max(attempt, 1), baseMs, MAX_RESTART_BACKOFF_MS);
}
