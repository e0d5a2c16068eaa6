/**
 * A small Prometheus registry and its text exposition format (version 0.0.4): counters,
 * histograms, and gauges or counters whose value is read at scrape time. prom-client would
 * bring a default registry, cluster support and more than this runtime needs; the format
 * itself is a few lines of text.
 */

export type Labels = Readonly<Record<string, string>>;

/** One line of output: `name{labels} value`; `suffix` makes `name_bucket`, `name_sum`, ... */
export interface Sample {
  labels?: Labels;
  value: number;
  suffix?: string;
}

export type MetricType = 'counter' | 'gauge' | 'histogram';

interface Metric {
  readonly name: string;
  readonly help: string;
  readonly type: MetricType;
  samples(): readonly Sample[];
}

/** Label sets one metric may hold; more are dropped (and counted), so a bug cannot grow memory without bound. */
export const MAX_SERIES_PER_METRIC = 512;

const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

/** Buckets (seconds) for durations from a millisecond to ten seconds. */
export const DURATION_BUCKETS: readonly number[] = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

class Series<T> {
  readonly #byKey = new Map<string, { labels: Labels; value: T }>();
  constructor(
    readonly labelNames: readonly string[],
    readonly onDropped: () => void,
    readonly initial: () => T,
  ) {}

  /** The series for `labels`, created on first use; undefined when the metric is full. */
  get(labels: Labels = {}): T | undefined {
    const values = this.labelNames.map((name) => {
      const value = labels[name];
      if (value === undefined) throw new Error(`label "${name}" is missing`);
      return value;
    });
    const key = JSON.stringify(values);
    let entry = this.#byKey.get(key);
    if (entry === undefined) {
      if (this.#byKey.size >= MAX_SERIES_PER_METRIC) {
        this.onDropped();
        return undefined;
      }
      entry = {
        labels: Object.fromEntries(this.labelNames.map((name, i) => [name, values[i] as string])),
        value: this.initial(),
      };
      this.#byKey.set(key, entry);
    }
    return entry.value;
  }

  entries(): Iterable<{ labels: Labels; value: T }> {
    return this.#byKey.values();
  }
}

/** A monotonically increasing count. */
export class Counter implements Metric {
  readonly type = 'counter';
  readonly #series: Series<{ n: number }>;

  constructor(
    readonly name: string,
    readonly help: string,
    labelNames: readonly string[],
    onDropped: () => void,
  ) {
    this.#series = new Series(labelNames, onDropped, () => ({ n: 0 }));
    if (labelNames.length === 0) this.#series.get();
  }

  /** Adds `by` (default 1, never negative) to the series of `labels`. */
  inc(labels?: Labels, by = 1): void {
    if (!(by >= 0)) throw new RangeError(`a counter only goes up (got ${by})`);
    const series = this.#series.get(labels);
    if (series) series.n += by;
  }

  /** The current value for `labels` (0 when never incremented). */
  value(labels?: Labels): number {
    return this.#series.get(labels)?.n ?? 0;
  }

  samples(): Sample[] {
    return [...this.#series.entries()].map(({ labels, value }) => ({ labels, value: value.n }));
  }
}

/** Observations counted into cumulative buckets, with their sum and count. */
export class Histogram implements Metric {
  readonly type = 'histogram';
  readonly buckets: readonly number[];
  readonly #series: Series<{ counts: number[]; sum: number; count: number }>;

  constructor(
    readonly name: string,
    readonly help: string,
    buckets: readonly number[],
    labelNames: readonly string[],
    onDropped: () => void,
  ) {
    if (labelNames.includes('le')) throw new Error('"le" is reserved in histograms');
    this.buckets = [...buckets].sort((a, b) => a - b);
    this.#series = new Series(labelNames, onDropped, () => ({ counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    if (labelNames.length === 0) this.#series.get();
  }

  /** Records one observation (seconds, bytes, ...). */
  observe(value: number, labels?: Labels): void {
    const series = this.#series.get(labels);
    if (!series || Number.isNaN(value)) return;
    for (let i = 0; i < this.buckets.length; i++) if (value <= (this.buckets[i] as number)) series.counts[i]!++;
    series.sum += value;
    series.count++;
  }

  /** Adds observations counted elsewhere (another thread): per-bucket counts in `buckets` order, their sum and count. */
  add(figures: { buckets: readonly number[]; sum: number; count: number }, labels?: Labels): void {
    const series = this.#series.get(labels);
    if (!series) return;
    this.buckets.forEach((_, i) => {
      series.counts[i]! += figures.buckets[i] ?? 0;
    });
    series.sum += figures.sum;
    series.count += figures.count;
  }

  samples(): Sample[] {
    const out: Sample[] = [];
    for (const { labels, value } of this.#series.entries()) {
      this.buckets.forEach((le, i) =>
        out.push({ suffix: '_bucket', labels: { ...labels, le: formatValue(le) }, value: value.counts[i] as number }),
      );
      out.push({ suffix: '_bucket', labels: { ...labels, le: '+Inf' }, value: value.count });
      out.push({ suffix: '_sum', labels, value: value.sum });
      out.push({ suffix: '_count', labels, value: value.count });
    }
    return out;
  }
}

/** A metric whose samples are read from elsewhere at scrape time (stats objects, process figures). */
class Collected implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: MetricType,
    readonly collect: () => number | readonly Sample[] | undefined,
  ) {}

  samples(): readonly Sample[] {
    const result = this.collect();
    if (result === undefined) return [];
    const samples = typeof result === 'number' ? [{ value: result }] : result;
    return samples.slice(0, MAX_SERIES_PER_METRIC);
  }
}

export class MetricsRegistry {
  readonly #metrics = new Map<string, Metric>();
  readonly #beforeRender: Array<() => void> = [];
  #dropped = 0;

  constructor() {
    this.collected(
      'enclave_metrics_series_dropped_total',
      'label sets not recorded because a metric held too many',
      'counter',
      () => this.#dropped,
    );
  }

  /** A counter the caller increments. */
  counter(name: string, help: string, labelNames: readonly string[] = []): Counter {
    return this.#add(new Counter(name, help, checkLabels(labelNames), () => this.#dropped++));
  }

  /** A histogram the caller observes into. */
  histogram(
    name: string,
    help: string,
    buckets: readonly number[] = DURATION_BUCKETS,
    labelNames: readonly string[] = [],
  ): Histogram {
    return this.#add(new Histogram(name, help, buckets, checkLabels(labelNames), () => this.#dropped++));
  }

  /** A gauge or counter read from `collect` at scrape time; undefined leaves it out of that scrape. */
  collected(
    name: string,
    help: string,
    type: 'counter' | 'gauge',
    collect: () => number | readonly Sample[] | undefined,
  ): void {
    this.#add(new Collected(name, help, type, collect));
  }

  /** Runs `hook` at the start of every render (folding figures kept elsewhere into counters). */
  beforeRender(hook: () => void): void {
    this.#beforeRender.push(hook);
  }

  /** The registered metric of that name, for callers that share one (egress's hook counter). */
  get(name: string): Counter | Histogram | undefined {
    const metric = this.#metrics.get(name);
    return metric instanceof Counter || metric instanceof Histogram ? metric : undefined;
  }

  /** The whole registry in the Prometheus text format; a collector that throws is left out of this scrape. */
  render(): string {
    for (const hook of this.#beforeRender) {
      try {
        hook();
      } catch {
        // A failing hook leaves its figures as they were for this scrape.
      }
    }
    const lines: string[] = [];
    for (const metric of this.#metrics.values()) {
      let samples: readonly Sample[];
      try {
        samples = metric.samples();
      } catch {
        continue;
      }
      lines.push(`# HELP ${metric.name} ${escapeHelp(metric.help)}`, `# TYPE ${metric.name} ${metric.type}`);
      for (const sample of samples)
        lines.push(`${metric.name}${sample.suffix ?? ''}${formatLabels(sample.labels)} ${formatValue(sample.value)}`);
    }
    return `${lines.join('\n')}\n`;
  }

  #add<M extends Metric>(metric: M): M {
    if (!METRIC_NAME.test(metric.name)) throw new Error(`bad metric name "${metric.name}"`);
    if (this.#metrics.has(metric.name)) throw new Error(`metric "${metric.name}" is registered twice`);
    this.#metrics.set(metric.name, metric);
    return metric;
  }
}

function checkLabels(names: readonly string[]): readonly string[] {
  for (const name of names)
    if (!LABEL_NAME.test(name) || name.startsWith('__')) throw new Error(`bad label name "${name}"`);
  return names;
}

/** Prometheus floats: integers as is, the rest as JS prints them, NaN and infinities spelled out. */
export function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Infinity) return '+Inf';
  if (value === -Infinity) return '-Inf';
  return String(value);
}

function formatLabels(labels: Labels | undefined): string {
  if (labels === undefined) return '';
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([name, value]) => `${name}="${escapeLabel(value)}"`).join(',')}}`;
}

function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n');
}

function escapeHelp(help: string): string {
  return help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n');
}
