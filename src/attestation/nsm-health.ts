import type { Logger } from '../core/log.js';
import { RuntimeError } from '../core/errors.js';
import type { AttestationRequest, Nsm, PcrReading } from './nsm.js';

/** A real NSM answers in milliseconds; a call pending this long means the device is stuck. */
export const DEFAULT_NSM_STALL_MS = 5_000;

// The caller's request was bad, not the NSM: these say nothing about the device's health.
const REQUEST_ERRORS: ReadonlySet<string> = new Set([
  'ERR_NSM_INPUT_TOO_LARGE',
  'ERR_NSM_INVALID_ARGUMENT',
  'ERR_NSM_INVALID_INDEX',
]);

export interface NsmHealthOptions {
  logger: Logger;
  /** A call pending longer than this makes the NSM unhealthy (default 5 s). */
  stallMs?: number;
  now?: () => number;
}

/**
 * The NSM with a memory of how its attest calls went, for the `attestation` part of /health:
 * not ok while the last call failed or one has been pending beyond `stallMs`, ok again after a
 * success. Callers (API, certificates, secrets) keep their own fallbacks; this only observes.
 * The change of state is logged once each way, so a failing NSM is one line, not one per call.
 */
export class NsmHealth implements Nsm {
  readonly kind: Nsm['kind'];
  readonly #inner: Nsm;
  readonly #logger: Logger;
  readonly #stallMs: number;
  readonly #now: () => number;
  // Start times of calls in flight; bounded by the callers' own limits (API, store, device queue).
  readonly #pending = new Map<number, number>();
  #nextCall = 0;
  #lastError: { code: string; at: number } | undefined;
  #failures = 0;

  constructor(inner: Nsm, options: NsmHealthOptions) {
    this.#inner = inner;
    this.kind = inner.kind;
    this.#logger = options.logger;
    this.#stallMs = options.stallMs ?? DEFAULT_NSM_STALL_MS;
    this.#now = options.now ?? Date.now;
  }

  async attest(request: AttestationRequest): Promise<Uint8Array> {
    const call = this.#nextCall++;
    this.#pending.set(call, this.#now());
    try {
      const document = await this.#inner.attest(request);
      if (this.#lastError) {
        this.#logger.info(
          { nsm: this.kind, failedSince: new Date(this.#lastError.at).toISOString(), failures: this.#failures },
          'NSM attestation works again',
        );
        this.#lastError = undefined;
        this.#failures = 0;
      }
      return document;
    } catch (error) {
      const code = error instanceof RuntimeError ? error.code : 'ERR_UNKNOWN';
      if (!REQUEST_ERRORS.has(code)) {
        this.#failures += 1;
        if (!this.#lastError)
          this.#logger.warn(
            { nsm: this.kind, code, err: { message: (error as Error).message } },
            'NSM attestation failing',
          );
        this.#lastError = { code, at: this.#lastError?.at ?? this.#now() };
      }
      throw error;
    } finally {
      this.#pending.delete(call);
    }
  }

  describePcr(index: number): Promise<PcrReading> {
    return this.#inner.describePcr(index);
  }

  getRandom(): Promise<Uint8Array> {
    return this.#inner.getRandom();
  }

  close(): Promise<void> {
    return this.#inner.close();
  }

  /** The `attestation` part of /health. */
  health(): { ok: boolean; detail: string } {
    const name = `${this.kind} NSM`;
    if (this.#lastError) {
      return {
        ok: false,
        detail: `${name}: attestation failing since ${new Date(this.#lastError.at).toISOString()} (${this.#lastError.code}, ${this.#failures} failed calls)`,
      };
    }
    let oldest: number | undefined;
    for (const started of this.#pending.values()) oldest = oldest === undefined ? started : Math.min(oldest, started);
    const waited = oldest === undefined ? 0 : this.#now() - oldest;
    if (waited > this.#stallMs)
      return { ok: false, detail: `${name}: an attestation has been pending for ${waited} ms` };
    return { ok: true, detail: name };
  }
}
