/**
 * Typed wrappers for the addon's child reaper (src/native/child_reaper.cc): reaping
 * orphans re-parented to us without taking the exit status of any child libuv is waiting for.
 */
import { errnoError, loadNative, negErrno } from './native-binding.js';

/** One orphan reaped: its exit code, or the number of the signal that killed it. */
export interface ReapedChild {
  pid: number;
  code: number | null;
  signal: number | null;
}

export interface ReapRound {
  reaped: ReapedChild[];
  /** A libuv child whose exit stopped the round (libuv reaps it itself); 0 when nothing is left. */
  waitingOn: number;
}

interface ReaperAddon {
  reapOrphans(): ReapRound | number;
  setChildSubreaper(): number;
}

function reaperAddon(): ReaperAddon {
  const native = loadNative() as unknown as Partial<ReaperAddon>;
  if (typeof native.reapOrphans !== 'function' || typeof native.setChildSubreaper !== 'function') {
    throw errnoError(negErrno('ENOSYS'), 'reapOrphans', '(the addon predates child_reaper.cc: rebuild it)');
  }
  return native as ReaperAddon;
}

/** Reaps every exited child that is not one of this thread's libuv children (at most 4096 per call). */
export function reapOrphans(): ReapRound {
  const result = reaperAddon().reapOrphans();
  if (typeof result === 'number') throw errnoError(result, 'waitid');
  return result;
}

/** prctl(PR_SET_CHILD_SUBREAPER): orphaned descendants are re-parented to this process. */
export function setChildSubreaper(): void {
  const status = reaperAddon().setChildSubreaper();
  if (status < 0) throw errnoError(status, 'prctl', 'PR_SET_CHILD_SUBREAPER');
}
