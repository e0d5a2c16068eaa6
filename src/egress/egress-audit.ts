/**
 * The egress audit trail: one counter per outcome and one structured log line per refusal, so
 * an operator can see what the app tried to reach and why it was stopped. Lines carry names,
 * addresses and rules only, never payload bytes.
 */
import type { Logger } from '../core/log.js';
import { RelayWatch } from './relay-watch.js';
import type { InspectionRefusal, Sighting } from './stream-inspector.js';
import { channels } from '../core/diagnostics.js';

export interface EgressCounters {
  dnsQueries: number;
  dnsAllowed: number;
  dnsRefused: number;
  dnsMalformed: number;
  dnsFailed: number;
  connectionsAllowed: number;
  connectionsRefused: number;
  connectionsFailed: number;
  proxyAllowed: number;
  proxyRefused: number;
  proxyFailed: number;
}

/** Which egress path saw the traffic. */
export type EgressPath = 'dns' | 'transparent' | 'proxy';

/** What a refusal line says; absent facts are logged as null so every line has the same keys. */
export interface RefusalFacts {
  name?: string | undefined;
  ip?: string | undefined;
  port?: number | undefined;
  qtype?: string | undefined;
  sni?: string | undefined;
  host?: string | undefined;
  reason: string;
  rule?: string | undefined;
}

const REFUSED_COUNTER: Record<EgressPath, keyof EgressCounters> = {
  dns: 'dnsRefused',
  transparent: 'connectionsRefused',
  proxy: 'proxyRefused',
};
const ALLOWED_COUNTER: Record<EgressPath, keyof EgressCounters> = {
  dns: 'dnsAllowed',
  transparent: 'connectionsAllowed',
  proxy: 'proxyAllowed',
};

/** Counters starting at zero. */
export function newEgressCounters(): EgressCounters {
  return {
    dnsQueries: 0,
    dnsAllowed: 0,
    dnsRefused: 0,
    dnsMalformed: 0,
    dnsFailed: 0,
    connectionsAllowed: 0,
    connectionsRefused: 0,
    connectionsFailed: 0,
    proxyAllowed: 0,
    proxyRefused: 0,
    proxyFailed: 0,
  };
}

/** Counts outcomes and writes the refusal lines; shared by the DNS server, transparent listener and proxy. */
export class EgressAudit {
  readonly counters: EgressCounters;
  /** Whether the host's relays answered the last connect, for /health. */
  readonly relays: RelayWatch;
  readonly #logger: Logger;

  constructor(logger: Logger, counters: EgressCounters = newEgressCounters()) {
    this.#logger = logger;
    this.counters = counters;
    this.relays = new RelayWatch(logger);
  }

  /** Count a refusal and log its one line. */
  refused(path: EgressPath, facts: RefusalFacts): void {
    this.counters[REFUSED_COUNTER[path]]++;
    channels.egressRefused.publish({ path, reason: facts.reason });
    this.#logger.warn(
      {
        event: 'egress-refused',
        path,
        name: facts.name || null,
        ip: facts.ip ?? null,
        port: facts.port ?? null,
        ...(path === 'dns' ? { qtype: facts.qtype ?? null } : { sni: facts.sni ?? null, host: facts.host ?? null }),
        outcome: 'refused',
        reason: facts.reason,
        rule: facts.rule ?? null,
      },
      'egress refused',
    );
  }

  /** Count an allowed query or connection; its line is debug-level, as allowed traffic is the normal case. */
  allowed(path: EgressPath, facts: Omit<RefusalFacts, 'reason'> & { reason?: string }): void {
    this.counters[ALLOWED_COUNTER[path]]++;
    this.#logger.debug({ event: 'egress-allowed', path, ...facts, outcome: 'allowed' }, 'egress allowed');
  }

  /** Count an allowed connection or query that failed on the way (relay down, upstream silent). */
  failed(path: EgressPath, facts: Omit<RefusalFacts, 'reason'> & { reason: string }): void {
    this.counters[path === 'dns' ? 'dnsFailed' : path === 'proxy' ? 'proxyFailed' : 'connectionsFailed']++;
    this.#logger.warn({ event: 'egress-failed', path, ...facts, outcome: 'failed' }, 'egress failed');
  }
}

/** The sni/host fields of a line, from what the inspection saw. */
export function sightingFacts(sighting: Sighting | undefined): { sni?: string | undefined; host?: string | undefined } {
  if (sighting?.protocol === 'tls') return { sni: sighting.hostname };
  if (sighting?.protocol === 'http') return { host: sighting.hostname };
  return {};
}

/** A refusal line's facts from an inspection refusal; `fallbackName` when the judge named none. */
export function refusalFacts(refusal: InspectionRefusal, fallbackName?: string): RefusalFacts {
  return {
    name: refusal.verdict?.name || fallbackName,
    ...sightingFacts(refusal.sighting),
    reason: refusal.reason,
    rule: refusal.verdict?.rule,
  };
}
