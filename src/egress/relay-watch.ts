/**
 * Whether the host's relays (egress.relay, egress.dns_relay) can be reached, as the egress paths
 * find out when they connect: a refused or timed-out connect marks that relay unreachable until a
 * later connect succeeds. Without this, a missing host side showed only as SERVFAIL and
 * ERR_DNS_UPSTREAM while /health said egress was fine. Observed, never probed: a probe stream
 * would reach the host as a stream with no header, and vsock is not ours to dial at will.
 */
import { formatAddress, type Address } from '../net/address.js';
import type { Logger } from '../core/log.js';
import { errorCode } from '../core/errors.js';

export class RelayWatch {
  readonly #logger: Logger;
  /** Unreachable relays (as formatted) and the errno of their last failed connect. */
  readonly #down = new Map<string, string>();

  constructor(logger: Logger) {
    this.#logger = logger;
  }

  /** A connect to `relay` failed; logged once per outage (and again if the errno changes). */
  failed(relay: Address, error: unknown): void {
    const where = formatAddress(relay);
    const code = errorCode(error) ?? (error as Error).message;
    if (this.#down.get(where) === code) return;
    this.#down.set(where, code);
    this.#logger.warn(
      { relay: where, code },
      "egress relay unreachable: is the host side (enclave-runtime host, or dev's in-process relays) running there?",
    );
  }

  /** A connect to `relay` succeeded. */
  reached(relay: Address): void {
    const where = formatAddress(relay);
    if (!this.#down.delete(where)) return;
    this.#logger.info({ relay: where }, 'egress relay reachable again');
  }

  /** Not ok while any relay's last connect failed; the detail names each with its errno ("" when ok). */
  health(): { ok: boolean; detail: string } {
    if (this.#down.size === 0) return { ok: true, detail: '' };
    return {
      ok: false,
      detail: [...this.#down].map(([where, code]) => `relay ${where} unreachable (${code})`).join(', '),
    };
  }
}
