import { randomBytes } from 'node:crypto';
import { CHALLENGE_NONCE_BYTES } from './protocol.js';
import { ProvisionerRefusal } from './provisioner-error.js';

export interface ChallengeBookOptions {
  ttlMs: number;
  /** Outstanding challenges at most; beyond it `issue` refuses (503) until some are used or expire. */
  maxPending: number;
  now?: () => number;
}

/** A challenge handed out: the nonce and when it stops being accepted (ms since the epoch). */
export interface Challenge {
  nonce: Uint8Array;
  expiresAt: number;
}

/**
 * The provisioner's outstanding challenge nonces. Each is accepted once, before its expiry; a used
 * one is remembered until it would have expired, so a replay is named as one rather than as unknown.
 * Both maps are in expiry order (one TTL for all), so pruning only ever looks at their heads.
 */
export class ChallengeBook {
  readonly #ttlMs: number;
  readonly #maxPending: number;
  readonly #now: () => number;
  readonly #pending = new Map<string, number>();
  readonly #used = new Map<string, number>();

  constructor(options: ChallengeBookOptions) {
    this.#ttlMs = options.ttlMs;
    this.#maxPending = options.maxPending;
    this.#now = options.now ?? Date.now;
  }

  /** Outstanding (issued, unused, unexpired) challenges. */
  get pending(): number {
    this.#prune();
    return this.#pending.size;
  }

  /** Hand out a fresh nonce, or refuse with ERR_PROVISIONER_BUSY when too many are outstanding. */
  issue(): Challenge {
    this.#prune();
    if (this.#pending.size >= this.#maxPending) {
      throw new ProvisionerRefusal(503, 'ERR_PROVISIONER_BUSY', `${this.#maxPending} challenges are outstanding; retry when some are used or expire (within ${this.#ttlMs} ms)`);
    }
    const nonce = randomBytes(CHALLENGE_NONCE_BYTES);
    const expiresAt = this.#now() + this.#ttlMs;
    this.#pending.set(nonce.toString('hex'), expiresAt);
    return { nonce: new Uint8Array(nonce), expiresAt };
  }

  /** Consume the challenge `nonce`: refused when it was already used, has expired, or was never issued here. */
  take(nonce: Uint8Array): void {
    // A plain map lookup is fine: a challenge is handed to whoever asks, so it is unguessable but not secret.
    const key = Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString('hex');
    const now = this.#now();
    const expiresAt = this.#pending.get(key);
    if (expiresAt !== undefined) {
      this.#pending.delete(key);
      if (expiresAt <= now) {
        throw new ProvisionerRefusal(403, 'ERR_PROVISIONER_CHALLENGE_EXPIRED', `the challenge nonce expired ${now - expiresAt} ms ago (challenges last ${this.#ttlMs} ms); ask for a new one`);
      }
      this.#used.set(key, expiresAt);
      if (this.#used.size > this.#maxPending) this.#used.delete(this.#used.keys().next().value!);
      this.#prune();
      return;
    }
    this.#prune();
    if (this.#used.has(key)) {
      throw new ProvisionerRefusal(403, 'ERR_PROVISIONER_CHALLENGE_USED', 'the challenge nonce was already used: each challenge is accepted once (a replay?); ask for a new one');
    }
    throw new ProvisionerRefusal(403, 'ERR_PROVISIONER_CHALLENGE_UNKNOWN', 'the nonce is not an outstanding challenge of this provisioner (never issued here, or expired); ask for a new one');
  }

  #prune(): void {
    const now = this.#now();
    for (const map of [this.#pending, this.#used]) {
      for (const [key, expiresAt] of map) {
        if (expiresAt > now) break;
        map.delete(key);
      }
    }
  }
}
