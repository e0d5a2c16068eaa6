/** One figure measured over several rounds: the median of the round values and their min-max spread. */
export interface Figure {
  median: number;
  min: number;
  max: number;
  /** The good rounds' values, in the order measured (the warm-up is not among them). */
  rounds: number[];
}

/** The p-th percentile (0..100) by nearest rank; the samples need not be sorted. */
export function percentile(samples: ArrayLike<number>, p: number): number {
  if (samples.length === 0) return Number.NaN;
  const sorted = Float64Array.from(samples).sort();
  const rank = Math.ceil((p / 100) * sorted.length) - 1;
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank))] as number;
}

export function median(samples: ArrayLike<number>): number {
  return percentile(samples, 50);
}

/** NaN rounds (a failed round) are left out, so one failure does not poison the figure. */
export function figure(rounds: readonly number[]): Figure | undefined {
  const good = rounds.filter((value) => Number.isFinite(value));
  if (good.length === 0) return undefined;
  return { median: median(good), min: Math.min(...good), max: Math.max(...good), rounds: good };
}

/**
 * Round by round `combine(a[i], b[i])`: the rounds were taken side by side, so pairing them cancels
 * the noise both saw in the same round better than combining two medians would. A round that
 * failed on either side (NaN) drops out of the pair.
 */
export function paired(
  a: readonly number[],
  b: readonly number[],
  combine: (a: number, b: number) => number,
): Figure | undefined {
  const n = Math.min(a.length, b.length);
  const values: number[] = [];
  for (let i = 0; i < n; i++) values.push(combine(a[i] as number, b[i] as number));
  return figure(values);
}

export const ratio = (a: number, b: number) => a / b;
export const difference = (a: number, b: number) => a - b;

/** Round values per subject, in measuring order; NaN marks a round that failed. */
export class RoundLog {
  readonly #values = new Map<string, number[]>();

  add(key: string, value: number): void {
    let list = this.#values.get(key);
    if (!list) this.#values.set(key, (list = []));
    list.push(value);
  }

  get(key: string): number[] {
    return this.#values.get(key) ?? [];
  }

  figure(key: string): Figure | undefined {
    return figure(this.get(key));
  }
}

/** Rotates the order each round, so no subject always runs first (warmest caches) or last. */
export function rotated<T>(items: readonly T[], round: number): T[] {
  const k = items.length === 0 ? 0 : round % items.length;
  return [...items.slice(k), ...items.slice(0, k)];
}
