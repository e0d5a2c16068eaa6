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
/** And a trim that held the thread for `ms` waits ms × this before the next: trims take at most 1 % of its time. */
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
  onTrim?: (result: { released: boolean; open: number; ms: number }) => void;
}

/** Watches the open-connection count; after it falls by `afterDrop` from its high-water mark (or rises by `afterRise` and holds), trims once. */
export class HeapTrimmer {
  readonly #options: HeapTrimmerOptions;
  readonly #afterDrop: number;
  readonly #delayMs: number;
  readonly #minIntervalMs: number;
  readonly #now: () => number;
  /** No trim before this time (the spacing after the last one). */
  #notBefore = Number.NEGATIVE_INFINITY;
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
    if (this.#timer !== undefined) return;
    if (this.#high - open >= this.#afterDrop) {
      clearTimeout(this.#quiet);
      this.#quiet = undefined;
      this.#timer = setTimeout(() => this.#run(), this.#delayMs);
      // Never the reason the process stays up.
      this.#timer.unref();
      return;
    }
    const { afterRise } = this.#options;
    if (afterRise !== undefined && open - this.#low >= afterRise) {
      clearTimeout(this.#quiet);
      this.#quiet = setTimeout(() => this.#run(), this.#delayMs);
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

  #run(): void {
    this.#timer = undefined;
    this.#quiet = undefined;
    const early = this.#notBefore - this.#now();
    if (early > 0) {
      // Postponed, not dropped; holding the drop's slot keeps changes from scheduling another meanwhile.
      this.#timer = setTimeout(() => this.#run(), early);
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
    this.#notBefore = ended + Math.max(this.#minIntervalMs, ms * TRIM_SPACING_FACTOR);
    this.#options.onTrim?.({ released, open, ms });
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
    onTrim: ({ released, open, ms }) => {
      if (ms >= TRIM_LOGGED_MS) logger.info({ released, open, ms: Math.round(ms) }, 'C heap trimmed (event loop held)');
      else logger.debug({ released, open, ms: Math.round(ms) }, 'C heap trimmed');
    },
  });
}
