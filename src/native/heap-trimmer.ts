/**
 * Gives the C heap back to the kernel once many connections have closed. Each TLS connection's
 * OpenSSL and libuv state lives in glibc's heap; when thousands close, the freed chunks sit between
 * allocations that are still live, and glibc only ever trims the top of its main heap, so the
 * process keeps hundreds of MiB it no longer uses. An enclave's memory is fixed: that is memory the
 * app cannot have.
 */

import type { Logger } from '../core/log.js';
import { trimHeap } from './native-binding.js';

/** A drop of this many open connections since the last trim (or the high-water mark since) is worth one. */
export const TRIM_AFTER_DROP = 256;
/** With afterRise: a rise of this many connections since the last trim earns one once opens pause (their handshakes' garbage). */
export const TRIM_AFTER_RISE = 256;
/** Wait this long after the drop is seen: a burst of closes ends in one trim, not many. */
export const TRIM_DELAY_MS = 1000;
/**
 * Trims run at least this far apart. The count moves on plain TCP connects and closes, before any
 * handshake, so without a floor anyone could stop the thread for a full collection every second
 * with bursts of 256 throwaway connections. A trim due sooner waits for it.
 */
export const TRIM_MIN_INTERVAL_MS = 10_000;
/**
 * And a trim that held the thread for `ms` waits ms × this before the next: trims take at most 1 % of
 * its time. One trim may go first and pay later: the drop's trim after a rise's waits only
 * TRIM_MIN_INTERVAL_MS, and the trim after it waits for both (R + D) × this. The rise's trim (handshake
 * garbage, with thousands of connections live: a long one) would otherwise hold back, by minutes on a
 * large heap, the trim that gives their memory back once they close.
 */
export const TRIM_SPACING_FACTOR = 100;
/** A trim that long is logged at info: an operator should see what stops the event loop. */
const TRIM_LOGGED_MS = 100;

export interface HeapTrimmerOptions {
  /** Returns true when memory went back to the kernel (malloc_trim). */
  trim: () => boolean;
  /** Connections open right now (read when the trim runs). */
  open: () => number;
  afterDrop?: number;
  /**
   * Also trim once the count has risen by this much from the last trim (or the low-water mark
   * since) and then not changed for the delay: each handshake leaves garbage behind, which a
   * thread's heap (large initial old generation) would keep until it fills. Waiting for a quiet
   * moment keeps the collection's pause (seconds, with thousands of connections open on a loaded
   * machine) out of a burst of opens. Off when undefined.
   */
  afterRise?: number | undefined;
  delayMs?: number;
  /** Default TRIM_MIN_INTERVAL_MS. */
  minIntervalMs?: number;
  /** The clock, in ms; tests move it. Default performance.now. */
  now?: () => number;
  /** Told what each trim did, for a debug line. */
  onTrim?: (result: { released: boolean; open: number; ms: number; kind: TrimKind }) => void;
}

/** Why a trim ran: the count fell by afterDrop (connections closed), or rose by afterRise and held still. */
export type TrimKind = 'drop' | 'rise';

/** Watches the open-connection count; after it falls by `afterDrop` from its high-water mark (or rises by `afterRise` and holds), trims once. */
export class HeapTrimmer {
  readonly #options: HeapTrimmerOptions;
  readonly #afterDrop: number;
  readonly #delayMs: number;
  readonly #minIntervalMs: number;
  readonly #now: () => number;
  /** The last trim: why it ran, when it ended, and the thread time the spacing after it pays for. */
  #last: { kind: TrimKind; ended: number; owedMs: number } | undefined;
  /** Why the trim in #timer is due. */
  #timerKind: TrimKind = 'drop';
  #high = 0;
  #low = 0;
  #timer: NodeJS.Timeout | undefined;
  /** The rise's trim, pushed back by every change until the count holds still for the delay. */
  #quiet: NodeJS.Timeout | undefined;
  #trims = 0;

  constructor(options: HeapTrimmerOptions) {
    this.#options = options;
    this.#afterDrop = options.afterDrop ?? TRIM_AFTER_DROP;
    this.#delayMs = options.delayMs ?? TRIM_DELAY_MS;
    this.#minIntervalMs = options.minIntervalMs ?? TRIM_MIN_INTERVAL_MS;
    this.#now = options.now ?? (() => performance.now());
  }

  /** How many trims have run. */
  get trims(): number {
    return this.#trims;
  }

  /** Call whenever a connection opens or closes, with the count now open. */
  changed(open: number): void {
    if (open > this.#high) this.#high = open;
    if (open < this.#low) this.#low = open;
    const dropped = this.#high - open >= this.#afterDrop;
    // A rise's trim postponed by the spacing becomes a drop's once the connections close meanwhile, so
    // the memory they held is not kept the whole rise spacing.
    if (this.#timer !== undefined && !(dropped && this.#timerKind === 'rise')) return;
    if (dropped) {
      clearTimeout(this.#timer);
      clearTimeout(this.#quiet);
      this.#quiet = undefined;
      this.#timerKind = 'drop';
      this.#timer = setTimeout(() => this.#run('drop'), this.#delayMs);
      // Never the reason the process stays up.
      this.#timer.unref();
      return;
    }
    const { afterRise } = this.#options;
    if (afterRise !== undefined && open - this.#low >= afterRise) {
      clearTimeout(this.#quiet);
      this.#quiet = setTimeout(() => this.#run('rise'), this.#delayMs);
      this.#quiet.unref();
    }
  }

  /** Cancels a pending trim. */
  close(): void {
    clearTimeout(this.#timer);
    clearTimeout(this.#quiet);
    this.#timer = undefined;
    this.#quiet = undefined;
  }

  #run(kind: TrimKind): void {
    this.#timer = undefined;
    this.#quiet = undefined;
    const early = this.#notBefore(kind) - this.#now();
    if (early > 0) {
      // Postponed, not dropped; holding the slot keeps changes from scheduling another meanwhile (but a
      // drop still turns a postponed rise's trim into a drop's: changed()).
      this.#timerKind = kind;
      this.#timer = setTimeout(() => this.#run(kind), early);
      this.#timer.unref();
      return;
    }
    const started = this.#now();
    const released = this.#options.trim();
    this.#trims++;
    const open = this.#options.open();
    // From here, only a new drop (or rise) from what is open now earns another trim.
    this.#high = open;
    this.#low = open;
    const ended = this.#now();
    const ms = ended - started;
    // A drop's trim that went ahead of a rise's spacing carries that rise's time to the next spacing.
    const carried = this.#paysLater(kind) ? (this.#last?.owedMs ?? 0) : 0;
    this.#last = { kind, ended, owedMs: ms + carried };
    this.#options.onTrim?.({ released, open, ms, kind });
  }

  /** Whether a trim of `kind` now may skip the last trim's spacing (and pay for it after itself). */
  #paysLater(kind: TrimKind): boolean {
    return kind === 'drop' && this.#last?.kind === 'rise';
  }

  /** The earliest a trim of `kind` may run after the last one (TRIM_SPACING_FACTOR). */
  #notBefore(kind: TrimKind): number {
    const last = this.#last;
    if (!last) return Number.NEGATIVE_INFINITY;
    const spacing = this.#paysLater(kind) ? 0 : last.owedMs * TRIM_SPACING_FACTOR;
    return last.ended + Math.max(this.#minIntervalMs, spacing);
  }
}

/**
 * A trimmer for the C heap, or undefined where there is nothing to trim with (no addon, not glibc).
 * Each thread that holds connections needs its own: the collection it runs first is of the calling
 * thread's isolate (an ingress worker's closed sockets are freed only by the worker's), while
 * malloc_trim returns every arena's free pages, whichever thread freed them.
 */
export function startHeapTrimmer(logger: Logger, open: () => number): HeapTrimmer | undefined {
  try {
    trimHeap();
  } catch {
    return undefined;
  }
  return new HeapTrimmer({
    trim: () => trimHeap(true),
    open,
    afterRise: TRIM_AFTER_RISE,
    onTrim: ({ released, open, ms, kind }) => {
      const fields = { released, open, ms: Math.round(ms), after: kind };
      if (ms >= TRIM_LOGGED_MS) logger.info(fields, 'C heap trimmed (event loop held)');
      else logger.debug(fields, 'C heap trimmed');
    },
  });
}
