/**
 * Reaps orphans as PID 1 does: every process re-parented to the runtime is waited for when it
 * exits, so none stays a zombie holding a pid. The addon does the waiting without touching
 * libuv's own children; this side decides when to sweep.
 */
import type { Logger } from '../core/log.js';
import { reapOrphans } from '../native/native-reaper.js';

/** Sweep this often even without SIGCHLD: a sweep can stop at one of libuv's children, which libuv reaps later. */
const SAFETY_SWEEP_MS = 5_000;
/** When a sweep stopped at a libuv child, look again this soon (libuv reaps it on the same SIGCHLD). */
const RETRY_MS = 20;

export class ZombieReaper {
  readonly #logger: Logger;
  readonly #interval: NodeJS.Timeout;
  readonly #onSigchld = () => this.#schedule(0);
  #pending: NodeJS.Timeout | undefined;
  #reaped = 0;
  #stopped = false;

  private constructor(logger: Logger) {
    this.#logger = logger;
    process.on('SIGCHLD', this.#onSigchld);
    this.#interval = setInterval(() => this.sweep(), SAFETY_SWEEP_MS);
    this.#interval.unref();
  }

  /** Starts reaping on every SIGCHLD, with a periodic safety sweep. */
  static start(logger: Logger): ZombieReaper {
    const reaper = new ZombieReaper(logger);
    reaper.sweep();
    return reaper;
  }

  /** Orphans reaped so far. */
  get reaped(): number {
    return this.#reaped;
  }

  /** Reaps every orphan that has exited; returns how many. */
  sweep(): number {
    if (this.#stopped) return 0;
    let round;
    try {
      round = reapOrphans();
    } catch (error) {
      this.#logger.error({ err: { message: (error as Error).message } }, 'reaping orphans failed');
      return 0;
    }
    for (const child of round.reaped)
      this.#logger.debug({ pid: child.pid, code: child.code, signal: child.signal }, 'reaped an orphaned process');
    this.#reaped += round.reaped.length;
    if (round.waitingOn !== 0) this.#schedule(RETRY_MS);
    return round.reaped.length;
  }

  /** Stops listening for SIGCHLD; exited orphans are left to whoever is PID 1 next. */
  stop(): void {
    this.#stopped = true;
    process.off('SIGCHLD', this.#onSigchld);
    clearInterval(this.#interval);
    clearTimeout(this.#pending);
  }

  // After SIGCHLD, libuv's own handler may still have to reap its child: sweeping on a timer
  // (not in the signal's own tick) lets it go first, so the peek sees past it.
  #schedule(ms: number): void {
    if (this.#pending !== undefined || this.#stopped) return;
    this.#pending = setTimeout(() => {
      this.#pending = undefined;
      this.sweep();
    }, ms);
    this.#pending.unref();
  }
}
