/**
 * The egress decisions, as pure functions of the allowlist and what the runtime saw, so every
 * combination is testable without sockets.
 *
 * A connection is allowed only when its destination IP was resolved (through our DNS) for an
 * allowed name, or is itself an allowed literal; and when the app named a host in the first
 * bytes (TLS SNI, HTTP Host), that name must be allowed too and must be one the IP was
 * resolved for. The last rule stops "resolve allowed.example, then send SNI other.example to
 * the same shared CDN address", which the IP check alone would let through.
 */
import { isIP } from 'node:net';
import type { Allowlist, Decision } from './allowlist.js';
import { tryNormaliseDomainName } from '../wire/domain-name.js';
import { canonicalIp } from './name-cache.js';

export type ConnectionReason =
  /** The SNI/Host is allowed and the IP was resolved for it. */
  | 'hostname'
  /** No SNI/Host; the IP was resolved for an allowed name. */
  | 'resolved-name'
  /** The IP is allowed by an address rule. */
  | 'allowed-ip'
  /** The SNI/Host is not a usable host name. */
  | 'invalid-hostname'
  /** The SNI/Host is not allowed (on this port). */
  | 'hostname-denied'
  /** The SNI/Host is allowed, but the IP was resolved for other names (or is another IP literal). */
  | 'hostname-mismatch'
  /** The IP was resolved only for names not allowed on this port. */
  | 'name-denied'
  /** The IP was never resolved through us and no address rule allows it. */
  | 'not-resolved';

export interface ConnectionDecision {
  allowed: boolean;
  reason: ConnectionReason;
  /** The name the decision rests on ('' when none): sent to the host relay and logged. */
  name: string;
  /** The allowlist entry that decided, as written in the config. */
  rule?: string;
}

export interface ConnectionFacts {
  ip: string;
  port: number;
  /** Names the name cache holds for `ip` (normalised, unexpired). */
  resolvedNames: readonly string[];
  /** The TLS SNI or HTTP Host, as sent, when the app sent one. */
  hostname?: string | undefined;
}

/** Decide one outbound connection from its destination, the names learned for it and its SNI/Host. */
export function decideConnection(allowlist: Allowlist, facts: ConnectionFacts): ConnectionDecision {
  const { ip, port, resolvedNames } = facts;
  const byIp = allowlist.allowsIp(ip, port);
  let hostname = facts.hostname;

  if (hostname !== undefined && isIP(hostname.replace(/^\[(.*)\]$/, '$1')) !== 0) {
    // "Host: 203.0.113.7" names an address; it must be the one dialled, and then says nothing more.
    const named = canonicalIp(hostname.replace(/^\[(.*)\]$/, '$1'));
    if (named !== canonicalIp(ip)) return refuse('hostname-mismatch', resolvedNames[0] ?? '');
    hostname = undefined;
  }

  if (hostname !== undefined) {
    const name = tryNormaliseDomainName(hostname);
    if (name === undefined) return refuse('invalid-hostname', '');
    const byName = allowlist.allowsName(name, port);
    if (!byName.allowed) return refuse('hostname-denied', name, byName.rule);
    if (resolvedNames.includes(name)) return allow('hostname', name, byName.rule);
    if (byIp.allowed) return allow('allowed-ip', name, byIp.rule);
    return refuse(resolvedNames.length > 0 ? 'hostname-mismatch' : 'not-resolved', name);
  }

  let denied: { name: string; decision: Decision } | undefined;
  for (const name of resolvedNames) {
    const decision = allowlist.allowsName(name, port);
    if (decision.allowed) return allow('resolved-name', name, decision.rule);
    denied ??= { name, decision };
  }
  if (byIp.allowed) return allow('allowed-ip', '', byIp.rule);
  if (denied) return refuse('name-denied', denied.name, denied.decision.rule);
  return refuse('not-resolved', '');
}

/**
 * Whether a DNS question for `name` may be forwarded. DNS carries no port, so a rule such as
 * "api.example.com:443" allows the name here; the port is enforced when the app connects.
 */
export function decideDnsName(allowlist: Allowlist, name: string): Decision {
  const decision = allowlist.allowsName(name);
  // reason stays 'port': allowed by a rule that restricts the port.
  if (!decision.allowed && decision.reason === 'port' && decision.rule !== undefined)
    return { ...decision, allowed: true };
  return decision;
}

function allow(reason: ConnectionReason, name: string, rule: string | undefined): ConnectionDecision {
  return rule === undefined ? { allowed: true, reason, name } : { allowed: true, reason, name, rule };
}

function refuse(reason: ConnectionReason, name: string, rule?: string): ConnectionDecision {
  return rule === undefined ? { allowed: false, reason, name } : { allowed: false, reason, name, rule };
}
