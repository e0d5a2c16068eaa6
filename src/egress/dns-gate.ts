import type { Allowlist, Decision } from './allowlist.js';
import {
  buildErrorResponse,
  buildFormErr,
  buildNxdomain,
  buildRefused,
  DnsFormatError,
  DnsRcode,
  parseDnsQuery,
  type DnsQuery,
} from '../wire/dns-message.js';
import { decideDnsName } from './egress-policy.js';

/**
 * What to do with one DNS message, decided the same way inside the enclave and again on the host:
 * answer it here (malformed, unsupported or denied: `reply` may be undefined, meaning drop it),
 * or forward it. The callers differ only in where they forward and what they count and log.
 */
export type DnsGateOutcome =
  | { kind: 'malformed'; reply: Buffer | undefined; reason: string }
  | { kind: 'unsupported'; reply: Buffer; query: DnsQuery }
  | { kind: 'refused'; reply: Buffer; query: DnsQuery; decision: Decision }
  | { kind: 'forward'; query: DnsQuery; decision: Decision };

/** Parses one query and applies the allowlist to its question; denied questions get REFUSED or NXDOMAIN at once. */
export function gateDnsQuery(raw: Buffer, allowlist: Allowlist, refusal: 'refused' | 'nxdomain'): DnsGateOutcome {
  let query: DnsQuery;
  try {
    query = parseDnsQuery(raw);
  } catch (error) {
    if (!(error instanceof DnsFormatError)) throw error;
    return { kind: 'malformed', reply: buildFormErr(raw), reason: error.message };
  }
  if (query.header.opcode !== 0)
    return { kind: 'unsupported', reply: buildErrorResponse(query, DnsRcode.NOTIMP), query };
  const decision = decideDnsName(allowlist, query.question.name);
  if (!decision.allowed) {
    return {
      kind: 'refused',
      reply: refusal === 'nxdomain' ? buildNxdomain(query) : buildRefused(query),
      query,
      decision,
    };
  }
  return { kind: 'forward', query, decision };
}
