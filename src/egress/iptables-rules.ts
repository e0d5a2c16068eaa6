/**
 * The netfilter rules that make egress transparent for an unmodified app: every outbound TCP
 * connection is redirected (nat OUTPUT REDIRECT) to the transparent listener, and DNS sent to
 * any non-loopback resolver to the runtime's DNS server. The rules live in a chain of their own,
 * ENCLAVE_EGRESS, jumped to from OUTPUT, so applying is idempotent and removal exact.
 *
 * Not redirected: loopback destinations (the app's own services, the runtime's listeners and
 * API) and the runtime's own TCP to its relays when those are tcp addresses (dev); inside the
 * enclave the relays are vsock, which netfilter never sees.
 *
 * DNS: under `run` the runtime's DNS listens on 127.0.0.1:53 and the enclave image's
 * /etc/resolv.conf should say `nameserver 127.0.0.1`; a resolver configured elsewhere is
 * redirected to it anyway (UDP and TCP port 53, IPv4).
 *
 * Routing: an enclave has only `lo`, so a connect() to an outside address fails with
 * ENETUNREACH before netfilter ever sees it. When there is no default route, one through `lo`
 * is added (and removed on stop) so the packet reaches the nat table; without the redirect it
 * still goes nowhere, as lo delivers only to local addresses.
 *
 * iptables, ip6tables and ip run via execFile (no shell); a missing binary is a clear error.
 */
import { execFile } from 'node:child_process';
import { isIP } from 'node:net';
import { errorCode, RuntimeError } from '../core/errors.js';
import type { Logger } from '../core/log.js';

export class IptablesError extends RuntimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_IPTABLES', message, options);
  }
}

export const EGRESS_CHAIN = 'ENCLAVE_EGRESS';

export interface RedirectPlan {
  /** The transparent listener's port (127.0.0.1, and ::1 for IPv6). */
  transparentPort: number;
  /** The DNS server's port on 127.0.0.1, or undefined to leave DNS alone. */
  dnsPort?: number | undefined;
  /** Redirect IPv6 too (the listener also listens on ::1). */
  ipv6: boolean;
  /** tcp destinations (IP literals) never redirected: the runtime's own relay connections. */
  exclude: ReadonlyArray<{ host: string; port: number }>;
}

export interface RuleSet {
  /** Arguments after `iptables -t nat`, in order. */
  ipv4: string[][];
  ipv6: string[][];
}

export interface AppliedRules {
  readonly ipv6: boolean;
  /** Remove the chain, the jump and any route added; safe to call twice. */
  remove(): Promise<void>;
}

export interface ApplyOptions {
  logger: Logger;
  /** Binaries, for tests or unusual images. */
  iptables?: string;
  ip6tables?: string;
  ip?: string;
  /** Add a default route via lo when there is none (default true). */
  ensureRoute?: boolean;
}

const EXEC_TIMEOUT_MS = 10_000;
const EXEC_MAX_OUTPUT = 1024 * 1024;

/** The rules for a plan, as argument vectors (pure, for tests and for `apply`). */
export function buildRules(plan: RedirectPlan): RuleSet {
  const port = String(plan.transparentPort);
  const ipv4: string[][] = [['-A', EGRESS_CHAIN, '-d', '127.0.0.0/8', '-j', 'RETURN']];
  const ipv6: string[][] = [['-A', EGRESS_CHAIN, '-d', '::1/128', '-j', 'RETURN']];
  for (const { host, port: excluded } of plan.exclude) {
    const target = isIP(host) === 4 ? ipv4 : isIP(host) === 6 ? ipv6 : undefined;
    target?.push(['-A', EGRESS_CHAIN, '-p', 'tcp', '-d', host, '--dport', String(excluded), '-j', 'RETURN']);
  }
  if (plan.dnsPort !== undefined) {
    for (const protocol of ['udp', 'tcp']) {
      ipv4.push([
        '-A',
        EGRESS_CHAIN,
        '-p',
        protocol,
        '--dport',
        '53',
        '-j',
        'REDIRECT',
        '--to-ports',
        String(plan.dnsPort),
      ]);
    }
  }
  ipv4.push(['-A', EGRESS_CHAIN, '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', port]);
  ipv6.push(['-A', EGRESS_CHAIN, '-p', 'tcp', '-j', 'REDIRECT', '--to-ports', port]);
  return { ipv4, ipv6: plan.ipv6 ? ipv6 : [] };
}

/** Write the rules (IPv4 must work; IPv6 failing is logged, as unredirected IPv6 goes nowhere anyway). */
export async function applyRules(plan: RedirectPlan, options: ApplyOptions): Promise<AppliedRules> {
  const { logger } = options;
  const iptables = options.iptables ?? 'iptables';
  const ip6tables = options.ip6tables ?? 'ip6tables';
  const ip = options.ip ?? 'ip';
  const rules = buildRules(plan);
  const undo: Array<() => Promise<void>> = [];
  const remove = async () => {
    for (const step of undo.splice(0).reverse()) {
      try {
        await step();
      } catch (error) {
        logger.warn({ err: { message: (error as Error).message } }, 'could not remove an egress redirect rule');
      }
    }
  };

  try {
    undo.push(() => removeChain(iptables));
    await installChain(iptables, rules.ipv4);
    if (options.ensureRoute !== false) {
      const added = await ensureDefaultRoute(ip, 4);
      if (added) undo.push(() => run(ip, ['-4', 'route', 'del', 'default', 'dev', 'lo']).then(() => undefined));
    }
  } catch (error) {
    await remove();
    throw error;
  }

  let ipv6 = false;
  if (rules.ipv6.length > 0) {
    try {
      undo.push(() => removeChain(ip6tables));
      await installChain(ip6tables, rules.ipv6);
      if (options.ensureRoute !== false) {
        const added = await ensureDefaultRoute(ip, 6);
        if (added) undo.push(() => run(ip, ['-6', 'route', 'del', 'default', 'dev', 'lo']).then(() => undefined));
      }
      ipv6 = true;
    } catch (error) {
      logger.warn(
        { err: { message: (error as Error).message } },
        'IPv6 egress redirect not applied: outbound IPv6 TCP stays unrouted',
      );
    }
  }
  logger.info(
    { chain: EGRESS_CHAIN, transparentPort: plan.transparentPort, dnsPort: plan.dnsPort ?? null, ipv6 },
    'egress redirect rules applied',
  );
  return { ipv6, remove };
}

async function installChain(binary: string, rules: string[][]): Promise<void> {
  // A chain left by a runtime that died is emptied and reused.
  try {
    await nat(binary, ['-N', EGRESS_CHAIN]);
  } catch (error) {
    if (!/exists/i.test((error as Error).message)) throw error;
    await nat(binary, ['-F', EGRESS_CHAIN]);
  }
  for (const rule of rules) await nat(binary, rule);
  try {
    await nat(binary, ['-C', 'OUTPUT', '-j', EGRESS_CHAIN]);
  } catch {
    await nat(binary, ['-I', 'OUTPUT', '1', '-j', EGRESS_CHAIN]);
  }
}

async function removeChain(binary: string): Promise<void> {
  // At most a few jumps can exist (one per crashed start); stop at the first "not found".
  for (let i = 0; i < 8; i++) {
    try {
      await nat(binary, ['-D', 'OUTPUT', '-j', EGRESS_CHAIN]);
    } catch {
      break;
    }
  }
  await nat(binary, ['-F', EGRESS_CHAIN]);
  await nat(binary, ['-X', EGRESS_CHAIN]);
}

/** Add `default dev lo` when the family has no default route; true when it did. */
async function ensureDefaultRoute(ip: string, family: 4 | 6): Promise<boolean> {
  const current = await run(ip, [`-${family}`, 'route', 'show', 'default']);
  if (current.trim() !== '') return false;
  // Without `src`, IPv4 picks 0.0.0.0 as the source, and the redirected connection's replies get lost.
  await run(ip, [`-${family}`, 'route', 'add', 'default', 'dev', 'lo', ...(family === 4 ? ['src', '127.0.0.1'] : [])]);
  return true;
}

function nat(binary: string, args: string[]): Promise<string> {
  return run(binary, ['-w', '5', '-t', 'nat', ...args]);
}

/** Run a binary without a shell; its stderr is the error message on failure. */
export function run(binary: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(
      binary,
      args,
      { timeout: EXEC_TIMEOUT_MS, maxBuffer: EXEC_MAX_OUTPUT, encoding: 'utf8' },
      (error, stdout, stderr) => {
        if (!error) return resolve(stdout);
        const code = errorCode(error);
        if (code === 'ENOENT') {
          reject(
            new IptablesError(
              `${binary} not found: install the iptables and iproute2 packages (needed for egress.apply_rules)`,
              { cause: error },
            ),
          );
          return;
        }
        const detail = (stderr || error.message).trim().split('\n')[0];
        reject(new IptablesError(`${binary} ${args.join(' ')} failed: ${detail}`, { cause: error }));
      },
    );
  });
}
