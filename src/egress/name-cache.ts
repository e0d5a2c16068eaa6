/**
 * Which names each IP address was resolved for, learned from the DNS answers the runtime
 * forwarded. It is what lets a connection to a bare IP be judged by name: "this address is
 * allowed because the app just resolved allowed.example for it".
 *
 * An address keeps every name it was resolved for (CDNs put many names on one address), each
 * with its own expiry. TTLs are clamped: a floor, because apps and runtimes cache answers
 * past their TTL (the JVM keeps them 30 s by default) and a refused reconnect would look like an
 * outage; a ceiling, so a stale mapping cannot outlive an hour. Both the number of addresses
 * (least recently used go first) and the names per address are bounded.
 */
import { isIP, SocketAddress } from 'node:net';
import { DnsType, type DnsAnswer } from '../wire/dns-message.js';
import { tryNormaliseDomainName } from '../wire/domain-name.js';

export interface NameCacheOptions {
  /** Addresses remembered at once (default 10 000). */
  maxAddresses?: number;
  /** Names remembered per address (default 32); the one expiring first is dropped. */
  maxNamesPerAddress?: number;
  /** Lower clamp on a record's TTL (default 30 s). */
  minTtlMs?: number;
  /** Upper clamp on a record's TTL (default 1 h). */
  maxTtlMs?: number;
  /** The clock, in ms (tests move it). */
  now?: () => number;
}

export const NAME_CACHE_DEFAULTS = {
  maxAddresses: 10_000,
  maxNamesPerAddress: 32,
  minTtlMs: 30_000,
  maxTtlMs: 3_600_000,
} as const;

const CLASS_IN = 1;
// A CNAME chain longer than this is a loop or an abuse; real ones have two or three links.
const MAX_CHAIN = 16;

export class NameCache {
  readonly #options: Required<NameCacheOptions>;
  /** address -> (normalised name -> expiry in ms); Map order is recency, oldest first. */
  readonly #entries = new Map<string, Map<string, number>>();

  constructor(options: NameCacheOptions = {}) {
    this.#options = { ...NAME_CACHE_DEFAULTS, now: Date.now, ...options };
    const { maxAddresses, maxNamesPerAddress, minTtlMs, maxTtlMs } = this.#options;
    if (!(Number.isInteger(maxAddresses) && maxAddresses >= 1))
      throw new RangeError('maxAddresses must be a positive integer');
    if (!(Number.isInteger(maxNamesPerAddress) && maxNamesPerAddress >= 1))
      throw new RangeError('maxNamesPerAddress must be a positive integer');
    if (!(minTtlMs >= 0 && maxTtlMs >= minTtlMs)) throw new RangeError('need 0 <= minTtlMs <= maxTtlMs');
  }

  /** Addresses currently held (expired ones may still count until looked up or evicted). */
  get size(): number {
    return this.#entries.size;
  }

  /**
   * Record what an answer to `question` says: every A/AAAA owned by the question name, or by a
   * name its CNAME chain leads to, maps to the question name (what the app asked for and will
   * send as SNI). Returns the addresses learned.
   */
  learn(question: string, answers: readonly DnsAnswer[]): string[] {
    const asked = tryNormaliseDomainName(question);
    if (asked === undefined) return [];
    // Each name of the chain with the smallest TTL on the way to it, in seconds.
    const chain = new Map<string, number>([[asked, Infinity]]);
    for (let grew = true; grew && chain.size < MAX_CHAIN;) {
      grew = false;
      for (const answer of answers) {
        if (answer.type !== DnsType.CNAME || answer.class !== CLASS_IN || answer.data === undefined) continue;
        const owner = tryNormaliseDomainName(answer.name);
        const target = tryNormaliseDomainName(answer.data);
        if (owner === undefined || target === undefined || !chain.has(owner) || chain.has(target)) continue;
        chain.set(target, Math.min(chain.get(owner)!, answer.ttl));
        grew = true;
        if (chain.size >= MAX_CHAIN) break;
      }
    }
    const learned: string[] = [];
    for (const answer of answers) {
      if (
        (answer.type !== DnsType.A && answer.type !== DnsType.AAAA) ||
        answer.class !== CLASS_IN ||
        answer.data === undefined
      )
        continue;
      const owner = tryNormaliseDomainName(answer.name);
      if (owner === undefined || !chain.has(owner)) continue;
      if (this.add(answer.data, asked, Math.min(chain.get(owner)!, answer.ttl)))
        learned.push(canonicalIp(answer.data)!);
    }
    return learned;
  }

  /** Map `ip` to `name` for `ttlSeconds` (clamped); false when either is not valid. */
  add(ip: string, name: string, ttlSeconds: number): boolean {
    const address = canonicalIp(ip);
    const normalised = tryNormaliseDomainName(name);
    if (address === undefined || normalised === undefined) return false;
    const { minTtlMs, maxTtlMs, maxAddresses, maxNamesPerAddress, now } = this.#options;
    const ttlMs = Math.min(
      maxTtlMs,
      Math.max(minTtlMs, (Number.isFinite(ttlSeconds) ? Math.max(0, ttlSeconds) : 0) * 1000),
    );
    const expires = now() + ttlMs;

    const names = this.#entries.get(address) ?? new Map<string, number>();
    this.#entries.delete(address);
    this.#entries.set(address, names);
    names.set(normalised, Math.max(expires, names.get(normalised) ?? 0));
    if (names.size > maxNamesPerAddress) {
      let soonest: string | undefined;
      for (const [candidate, expiry] of names)
        if (soonest === undefined || expiry < names.get(soonest)!) soonest = candidate;
      names.delete(soonest!);
    }
    while (this.#entries.size > maxAddresses) this.#entries.delete(this.#entries.keys().next().value!);
    return true;
  }

  /** The names `ip` was resolved for and that have not expired, most recent entry last. */
  namesFor(ip: string): string[] {
    const address = canonicalIp(ip);
    if (address === undefined) return [];
    const names = this.#entries.get(address);
    if (!names) return [];
    const now = this.#options.now();
    for (const [name, expiry] of names) if (expiry <= now) names.delete(name);
    this.#entries.delete(address);
    if (names.size === 0) return [];
    this.#entries.set(address, names);
    return [...names.keys()];
  }

  /** Forget everything. */
  clear(): void {
    this.#entries.clear();
  }
}

/** One spelling per address: RFC 5952 for IPv6, IPv4-mapped IPv6 as IPv4; undefined if not an IP. */
export function canonicalIp(text: string): string | undefined {
  const version = isIP(text);
  if (version === 0 || text.includes('%')) return undefined;
  if (version === 4) return text;
  const address = new SocketAddress({ address: text, family: 'ipv6' }).address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(address);
  return mapped ? mapped[1]! : address;
}
