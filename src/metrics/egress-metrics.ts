/**
 * Egress decisions as Prometheus series. The egress services keep their own running totals
 * (EgressCounters); those are read at scrape time. Refusal reasons are open-ended, so they are
 * counted here from the egress code's `egressRefused` diagnostics channel.
 */
import { channels, type EgressRefusal } from '../core/diagnostics.js';
import type { EgressCounters } from '../egress/egress-audit.js';
import type { MetricsRegistry, Sample } from './registry.js';

const PATHS = [
  ['dns', 'dnsAllowed', 'dnsRefused', 'dnsFailed'],
  ['transparent', 'connectionsAllowed', 'connectionsRefused', 'connectionsFailed'],
  ['proxy', 'proxyAllowed', 'proxyRefused', 'proxyFailed'],
] as const;

/** Reasons beyond this many distinct values are counted as "other", so they cannot grow without bound. */
const MAX_REASONS = 64;

/** Refusals of the whole process by path and reason, counted from the moment this module loads. */
const refusals = new Map<string, number>();

/** Counts one refusal by egress path (dns, transparent, proxy) and reason (e.g. "not-allowed", "private-ip"). */
function countEgressRefusal({ path, reason }: EgressRefusal): void {
  let key = JSON.stringify([path, reason]);
  if (!refusals.has(key) && refusals.size >= MAX_REASONS) key = JSON.stringify([path, 'other']);
  refusals.set(key, (refusals.get(key) ?? 0) + 1);
}
channels.egressRefused.subscribe(countEgressRefusal);

/** Registers enclave_egress_decisions_total (from `counters()`) and enclave_egress_refusals_total (the hook). */
export function registerEgressMetrics(
  registry: MetricsRegistry,
  counters: () => Readonly<EgressCounters> | undefined,
): void {
  registry.collected(
    'enclave_egress_decisions_total',
    'egress DNS questions, connections and proxy requests by path and outcome',
    'counter',
    () => {
      const current = counters();
      if (current === undefined) return undefined;
      const samples: Sample[] = [];
      for (const [path, allowed, refused, failed] of PATHS) {
        samples.push({ labels: { path, outcome: 'allowed' }, value: current[allowed] });
        samples.push({ labels: { path, outcome: 'refused' }, value: current[refused] });
        samples.push({ labels: { path, outcome: 'failed' }, value: current[failed] });
      }
      return samples;
    },
  );
  registry.collected('enclave_egress_refusals_total', 'egress refusals by path and reason', 'counter', () =>
    [...refusals].map(([key, value]) => {
      const [path, reason] = JSON.parse(key) as [string, string];
      return { labels: { path, reason }, value };
    }),
  );
}
