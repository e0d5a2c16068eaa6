/**
 * The runtime process's own figures: resident memory, open file descriptors and event loop lag.
 * A lagging event loop delays every connection the runtime relays, so it is worth a graph.
 */
import { readdirSync } from 'node:fs';
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';
import type { MetricsRegistry } from './registry.js';

/** Event loop delay is sampled this often (ms); finer costs CPU, coarser misses short stalls. */
const LAG_RESOLUTION_MS = 20;
/** Beyond this many descriptors the count stops: the figure is for alerting, not an inventory. */
const MAX_FDS_COUNTED = 1_000_000;

/** Registers process_* and nodejs_eventloop_lag_* gauges; returns a function that stops sampling. */
export function registerProcessMetrics(registry: MetricsRegistry): () => void {
  const lag: IntervalHistogram = monitorEventLoopDelay({ resolution: LAG_RESOLUTION_MS });
  lag.enable();
  const startSeconds = Math.round((Date.now() - process.uptime() * 1000) / 1000);

  registry.collected('process_resident_memory_bytes', 'resident set size in bytes', 'gauge', () =>
    process.memoryUsage.rss(),
  );
  registry.collected('process_heap_bytes', 'V8 heap in use, in bytes', 'gauge', () => process.memoryUsage().heapUsed);
  registry.collected(
    'process_open_fds',
    'open file descriptors (left out when /proc is not mounted)',
    'gauge',
    openFds,
  );
  registry.collected(
    'process_start_time_seconds',
    'start time of the process, in unix seconds',
    'gauge',
    () => startSeconds,
  );
  // Percentiles since the previous scrape, then reset, so a stall shows up once and then ages out.
  const snapshot = { at: -1, p50: 0, p99: 0, max: 0, mean: 0 };
  let scrapes = 0;
  const read = () => {
    if (snapshot.at !== scrapes) {
      snapshot.at = scrapes;
      // The sampler records the whole interval between its timer's runs; the lag is what exceeds the resolution.
      const seconds = (ns: number) => (Number.isFinite(ns) ? Math.max(0, ns / 1e9 - LAG_RESOLUTION_MS / 1000) : 0);
      snapshot.p50 = seconds(lag.percentile(50));
      snapshot.p99 = seconds(lag.percentile(99));
      snapshot.max = seconds(lag.max);
      snapshot.mean = seconds(lag.mean);
      lag.reset();
    }
    return snapshot;
  };
  registry.collected(
    'nodejs_eventloop_lag_p50_seconds',
    'median event loop delay since the previous scrape',
    'gauge',
    () => read().p50,
  );
  registry.collected(
    'nodejs_eventloop_lag_p99_seconds',
    '99th percentile event loop delay since the previous scrape',
    'gauge',
    () => read().p99,
  );
  registry.collected(
    'nodejs_eventloop_lag_max_seconds',
    'longest event loop delay since the previous scrape',
    'gauge',
    () => read().max,
  );
  registry.collected(
    'nodejs_eventloop_lag_mean_seconds',
    'mean event loop delay since the previous scrape',
    'gauge',
    () => {
      const { mean } = read();
      scrapes++;
      return mean;
    },
  );
  return () => lag.disable();
}

function openFds(): number | undefined {
  try {
    // readdir's own descriptor is in the listing; it is closed again by the time anyone reads the figure.
    return Math.min(readdirSync('/proc/self/fd').length - 1, MAX_FDS_COUNTED);
  } catch {
    return undefined;
  }
}
