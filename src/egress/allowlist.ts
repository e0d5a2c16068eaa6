/**
 * The egress policy compiled from `[egress] allow = [...]`. Entry syntax:
 *
 *   "*"                      every destination (with ":443": every destination on port 443)
 *   "api.example.com"        that name only (case, trailing dot and IDN spelling do not matter)
 *   "*.example.com"          any name below example.com, at any depth, but not example.com itself
 *   "192.0.2.10", "2001:db8::1"                   one address
 *   "10.0.0.0/8", "2001:db8::/32"                 a CIDR range
 *   "api.example.com:443", "10.0.0.0/8:443"       any of the above restricted to one port
 *   "[2001:db8::1]:443", "[2001:db8::/32]:443"    IPv6 with a port: brackets, as in URLs;
 *                                                 a bare IPv6 entry never carries a port
 *
 * An empty list denies everything. Names only match name rules and addresses only match
 * address rules: resolving a name to decide is the caller's business (it knows what it resolved).
 * IPv4-mapped IPv6 addresses (::ffff:10.0.0.1), in entries and in queries, are turned into
 * their IPv4 form first, so "10.0.0.0/8" governs ::ffff:10.0.0.1 and an IPv6 range never
 * matches an IPv4 destination (node's BlockList alone would let "::/0" match 10.0.0.1).
 * A rule with a port does not match a query that gives no port.
 */
import { BlockList, isIP, SocketAddress } from 'node:net';
import { RuntimeError } from '../core/errors.js';
import { DomainNameError, normaliseDomainName, tryNormaliseDomainName } from '../wire/domain-name.js';

export type DecisionReason =
  'allow-all' | 'exact' | 'wildcard' | 'cidr' | 'no-rule' | 'port' | 'invalid-name' | 'invalid-ip' | 'invalid-port';

/** Why a destination is allowed or denied; `rule` is the entry as written in the config. */
export interface Decision {
  allowed: boolean;
  rule?: string;
  reason: DecisionReason;
}

export interface Allowlist {
  readonly entries: readonly string[];
  /** Decide for a host name (SNI, Host, DNS question); an IP literal given here is decided by allowsIp. */
  allowsName(name: string, port?: number): Decision;
  /** Decide for an address, IPv6 optionally in brackets. */
  allowsIp(ip: string, port?: number): Decision;
}

/** An allowlist entry that cannot be compiled; `entry` is exactly what the config said. */
export class AllowlistError extends RuntimeError {
  readonly entry: string;

  constructor(entry: string, reason: string) {
    super('ERR_ALLOWLIST', `egress allow entry ${JSON.stringify(entry)} is invalid: ${reason}`);
    this.entry = entry;
  }
}

export const ALLOWLIST_MAX_ENTRIES = 10_000;
const ENTRY_MAX_LENGTH = 300;
const DIGITS = /^(?:0|[1-9][0-9]{0,4})$/;

interface Rule {
  entry: string;
  port?: number;
}

interface IpRule extends Rule {
  family: 'ipv4' | 'ipv6';
  range: BlockList;
  reason: 'exact' | 'cidr';
}

interface Ip {
  family: 'ipv4' | 'ipv6';
  address: string;
}

/** Compile `[egress] allow` entries, throwing AllowlistError on the first bad one. */
export function compileAllowlist(entries: readonly string[]): Allowlist {
  const { allowlist, errors } = buildAllowlist(entries);
  if (errors[0]) throw errors[0];
  return allowlist;
}

/** Every bad entry of `[egress] allow`, in order (empty when the list compiles), for config checks. */
export function allowlistErrors(entries: readonly string[]): AllowlistError[] {
  return buildAllowlist(entries).errors;
}

/** Compiles what it can; each entry that cannot be compiled is one error, and the next is still read. */
function buildAllowlist(entries: readonly string[]): { allowlist: Allowlist; errors: AllowlistError[] } {
  if (entries.length > ALLOWLIST_MAX_ENTRIES)
    throw new AllowlistError(`(${entries.length} entries)`, `more than ${ALLOWLIST_MAX_ENTRIES} entries`);
  const errors: AllowlistError[] = [];
  const allowAll: Rule[] = [];
  const exact = new Map<string, Rule[]>();
  const wildcard = new Map<string, Rule[]>();
  const ips: IpRule[] = [];
  const add = (map: Map<string, Rule[]>, key: string, rule: Rule): void => {
    map.set(key, [...(map.get(key) ?? []), rule]);
  };

  function compileEntry(entry: string): void {
    if (typeof entry !== 'string') throw new AllowlistError(String(entry), 'not a string');
    if (entry.length > ENTRY_MAX_LENGTH) throw new AllowlistError(entry, `longer than ${ENTRY_MAX_LENGTH} characters`);
    if (entry === '') throw new AllowlistError(entry, 'empty entry');
    if (/\s/.test(entry)) throw new AllowlistError(entry, 'contains whitespace');
    const { host, port, bracketed } = splitPort(entry);
    const rule: Rule = port === undefined ? { entry } : { entry, port };
    if (host === '*') {
      allowAll.push(rule);
    } else if (host.includes('/')) {
      ips.push({ ...rule, ...compileCidr(entry, host, bracketed), reason: 'cidr' });
    } else if (isIP(host) !== 0 || bracketed) {
      const ip = canonicalIp(host);
      if (!ip || (bracketed && isIP(host) !== 6))
        throw new AllowlistError(entry, `${JSON.stringify(host)} is not a valid IP${bracketed ? 'v6' : ''} address`);
      const range = new BlockList();
      range.addAddress(ip.address, ip.family);
      ips.push({ ...rule, family: ip.family, range, reason: 'exact' });
    } else if (host.startsWith('*.')) {
      add(wildcard, compileName(entry, host.slice(2)), rule);
    } else {
      add(exact, compileName(entry, host), rule);
    }
  }

  for (const entry of entries) {
    try {
      compileEntry(entry);
    } catch (error) {
      if (!(error instanceof AllowlistError)) throw error;
      errors.push(error);
    }
  }

  const allowsIp = (ip: string, port?: number): Decision => {
    if (!validPort(port)) return { allowed: false, reason: 'invalid-port' };
    const text = ip.startsWith('[') && ip.endsWith(']') ? ip.slice(1, -1) : ip;
    const canonical = canonicalIp(text);
    if (!canonical) return { allowed: false, reason: 'invalid-ip' };
    const candidates: Array<[Rule[] | undefined, DecisionReason]> = [[allowAll, 'allow-all']];
    for (const rule of ips) {
      if (rule.family === canonical.family && rule.range.check(canonical.address, canonical.family))
        candidates.push([[rule], rule.reason]);
    }
    return firstMatch(candidates, port);
  };

  const allowsName = (name: string, port?: number): Decision => {
    if (isIP(name) !== 0 || (name.startsWith('[') && name.endsWith(']'))) return allowsIp(name, port);
    if (!validPort(port)) return { allowed: false, reason: 'invalid-port' };
    const normalised = tryNormaliseDomainName(name);
    if (normalised === undefined) return { allowed: false, reason: 'invalid-name' };
    const candidates: Array<[Rule[] | undefined, DecisionReason]> = [
      [allowAll, 'allow-all'],
      [exact.get(normalised), 'exact'],
    ];
    for (let dot = normalised.indexOf('.'); dot >= 0; dot = normalised.indexOf('.', dot + 1)) {
      candidates.push([wildcard.get(normalised.slice(dot + 1)), 'wildcard']);
    }
    return firstMatch(candidates, port);
  };

  return { allowlist: { entries: Object.freeze([...entries]), allowsName, allowsIp }, errors };
}

function splitPort(entry: string): { host: string; port?: number; bracketed: boolean } {
  let host = entry;
  let portText: string | undefined;
  let bracketed = false;
  if (entry.startsWith('[')) {
    const close = entry.indexOf(']');
    if (close < 0) throw new AllowlistError(entry, "'[' without a closing ']'");
    host = entry.slice(1, close);
    bracketed = true;
    const after = entry.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) throw new AllowlistError(entry, "only ':PORT' may follow ']'");
    if (after !== '') portText = after.slice(1);
  } else {
    const colons = entry.split(':').length - 1;
    // Two or more colons can only be a bare IPv6 address or range, which has no port.
    if (colons === 1) [host, portText] = entry.split(':') as [string, string];
  }
  if (portText === undefined) return { host, bracketed };
  const port = DIGITS.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535))
    throw new AllowlistError(entry, `port ${JSON.stringify(portText)} is not a number in 1..65535`);
  return { host, port, bracketed };
}

function compileCidr(entry: string, host: string, bracketed: boolean): { family: 'ipv4' | 'ipv6'; range: BlockList } {
  const [addressText = '', prefixText = '', extra] = host.split('/');
  const ip = canonicalIp(addressText);
  if (extra !== undefined || !ip || (bracketed && isIP(addressText) !== 6)) {
    throw new AllowlistError(
      entry,
      `${JSON.stringify(host)} is not ADDRESS/PREFIX with a valid IP${bracketed ? 'v6' : ''} address`,
    );
  }
  const declaredMax = isIP(addressText) === 4 ? 32 : 128;
  let prefix = DIGITS.test(prefixText) ? Number(prefixText) : NaN;
  if (!(prefix <= declaredMax))
    throw new AllowlistError(entry, `prefix ${JSON.stringify(prefixText)} is not a number in 0..${declaredMax}`);
  if (declaredMax === 128 && ip.family === 'ipv4') {
    // A mapped range is an IPv4 range in disguise; one reaching outside ::ffff:0:0/96 is not.
    if (prefix < 96)
      throw new AllowlistError(
        entry,
        'an IPv4-mapped IPv6 range needs a prefix of at least 96; write the IPv4 range instead',
      );
    prefix -= 96;
  }
  const range = new BlockList();
  range.addSubnet(ip.address, prefix, ip.family);
  return { family: ip.family, range };
}

function compileName(entry: string, name: string): string {
  if (name.includes('*'))
    throw new AllowlistError(entry, "'*' is only allowed as the whole entry or as a leading '*.' label");
  try {
    return normaliseDomainName(name);
  } catch (error) {
    if (error instanceof DomainNameError)
      throw new AllowlistError(entry, `not an IP address, CIDR range or valid domain name (${error.message})`);
    throw error;
  }
}

/** An IP in one spelling per address: IPv6 per RFC 5952, IPv4-mapped IPv6 as plain IPv4. */
function canonicalIp(text: string): Ip | undefined {
  const version = isIP(text);
  // Zone ids ("fe80::1%eth0") name an interface of one host; they have no place in a policy.
  if (version === 0 || text.includes('%')) return undefined;
  if (version === 4) return { family: 'ipv4', address: text };
  const address = new SocketAddress({ address: text, family: 'ipv6' }).address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(address);
  return mapped ? { family: 'ipv4', address: mapped[1]! } : { family: 'ipv6', address };
}

function validPort(port: number | undefined): boolean {
  return port === undefined || (Number.isInteger(port) && port >= 0 && port <= 65535);
}

function firstMatch(candidates: Array<[Rule[] | undefined, DecisionReason]>, port: number | undefined): Decision {
  let portMiss: Rule | undefined;
  for (const [rules, reason] of candidates) {
    for (const rule of rules ?? []) {
      if (rule.port === undefined || rule.port === port) return { allowed: true, rule: rule.entry, reason };
      portMiss ??= rule;
    }
  }
  return portMiss ? { allowed: false, rule: portMiss.entry, reason: 'port' } : { allowed: false, reason: 'no-rule' };
}
