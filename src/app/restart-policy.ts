/**
 * `[app] restart`: whether the customer's command is started again after it exits, and after
 * how long. The runtime stopping (SIGTERM/SIGINT) always wins over the policy.
 */

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
  if (baseMs <= 0) return 0;
  const exponent = Math.min(Math.max(attempt - 1, 0), 30);
  return Math.min(baseMs * 2 ** exponent, MAX_RESTART_BACKOFF_MS);
}
