/**
 * Fleet exchanges as Prometheus series, counted from the fleet's `fleetSync` diagnostics channel
 * (the fleet code does not know metrics exist), and the reachable peers read at scrape time.
 */
import { channels, type FleetSync } from '../core/diagnostics.js';
import type { MetricsRegistry } from './registry.js';

/** Codes beyond this many distinct values are counted as "other" (a peer's code is its own word). */
const MAX_CODES = 32;

const syncs = new Map<string, number>();
const refusals = new Map<string, number>();

function countFleetSync({ role, outcome, code }: FleetSync): void {
  const key = JSON.stringify([role, outcome]);
  syncs.set(key, (syncs.get(key) ?? 0) + 1);
  if (outcome !== 'refused') return;
  let reason = /^ERR_FLEET_[A-Z_]{1,32}$/.test(code ?? '') ? code! : 'other';
  if (!refusals.has(reason) && refusals.size >= MAX_CODES) reason = 'other';
  refusals.set(reason, (refusals.get(reason) ?? 0) + 1);
}
channels.fleetSync.subscribe(countFleetSync);

/** Registers enclave_fleet_syncs_total, enclave_fleet_refusals_total and enclave_fleet_peers. */
export function registerFleetMetrics(
  registry: MetricsRegistry,
  peers: () => { reachable: number; known: number } | undefined,
): void {
  registry.collected(
    'enclave_fleet_syncs_total',
    'fleet exchanges by the role this member played and the outcome',
    'counter',
    () =>
      [...syncs].map(([key, value]) => {
        const [role, outcome] = JSON.parse(key) as [string, string];
        return { labels: { role, outcome }, value };
      }),
  );
  registry.collected('enclave_fleet_refusals_total', 'fleet exchanges refused, by ERR_FLEET_* code', 'counter', () =>
    [...refusals].map(([code, value]) => ({ labels: { code }, value })),
  );
  registry.collected('enclave_fleet_peers', 'fleet peers known and reachable at the last round', 'gauge', () => {
    const now = peers();
    if (now === undefined) return undefined;
    return [
      { labels: { state: 'reachable' }, value: now.reachable },
      { labels: { state: 'known' }, value: now.known },
    ];
  });
}
