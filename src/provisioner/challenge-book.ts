import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { CHALLENGE_NONCE_BYTES } from '../wire/provisioner-protocol.js';
import { ProvisionerRefusal } from './provisioner-error.js';

export interface ChallengeBookOptions {
  ttlMs: number;
  /**
   * Spent challenges remembered (against replay) until they would have expired; beyond it `take`
   * refuses (503) until some expire. Only a request whose attestation document verified spends one.
   */
  maxPending: number;
  now?: () => number;
}

/** A challenge handed out: the nonce and when it stops being accepted (ms since the epoch). */
export interface Challenge {
  nonce: Uint8Array;
  expiresAt: number;
}

const EXPIRY_BYTES = 8;
const RANDOM_BYTES = 8;
const SIGNED_BYTES = EXPIRY_BYTES + RANDOM_BYTES;
const MAC_BYTES = CHALLENGE_NONCE_BYTES - SIGNED_BYTES;

/**
 * The provisioner's challenge nonces, kept without per-challenge state until one is spent: a nonce
 * is its expiry (8 bytes), 8 random bytes and a MAC over both (16 bytes of HMAC-SHA256 under a key
 * made at start). Handing one out stores nothing, so no number of POST /challenge from one caller
 * can use up what another enclave needs. Each is accepted once, before its expiry; a spent one is
 * remembered until it would have expired, so a replay is named as one.
 */
export class ChallengeBook {
  readonly #ttlMs: number;
  readonly #maxSpent: number;
  readonly #now: () => number;
  readonly #key = randomBytes(32);
  readonly #spent = new Map<string, number>();

  constructor(options: ChallengeBookOptions) {
    this.#ttlMs = options.ttlMs;
    this.#maxSpent = options.maxPending;
    this.#now = options.now ?? Date.now;
  }

  /** Spent challenges remembered now (each until it would have expired). */
  get spent(): number {
    this.#prune();
    return this.#spent.size;
  }

  /** Hand out a fresh nonce; never refuses and stores nothing. */
  issue(): Challenge {
    const expiresAt = this.#now() + this.#ttlMs;
    const nonce = Buffer.alloc(CHALLENGE_NONCE_BYTES);
    nonce.writeBigUInt64BE(BigInt(expiresAt), 0);
    randomBytes(RANDOM_BYTES).copy(nonce, EXPIRY_BYTES);
    this.#mac(nonce).copy(nonce, SIGNED_BYTES);
    return { nonce: new Uint8Array(nonce), expiresAt };
  }

  /** Spend the challenge `nonce`: refused when it was already spent, has expired, or was never issued here. */
  take(nonce: Uint8Array): void {
    const bytes = Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength);
    const now = this.#now();
    if (
      bytes.byteLength !== CHALLENGE_NONCE_BYTES ||
      !timingSafeEqual(this.#mac(bytes), bytes.subarray(SIGNED_BYTES))
    ) {
      throw new ProvisionerRefusal(
        403,
        'ERR_PROVISIONER_CHALLENGE_UNKNOWN',
        'the nonce is not an outstanding challenge of this provisioner (never issued here, or before it restarted); ask for a new one',
      );
    }
    const expiresAt = Number(bytes.readBigUInt64BE(0));
    if (expiresAt <= now) {
      throw new ProvisionerRefusal(
        403,
        'ERR_PROVISIONER_CHALLENGE_EXPIRED',
        `the challenge nonce expired ${now - expiresAt} ms ago (challenges last ${this.#ttlMs} ms); ask for a new one`,
      );
    }
    const key = bytes.toString('hex');
    if (this.#spent.has(key)) {
      throw new ProvisionerRefusal(
        403,
        'ERR_PROVISIONER_CHALLENGE_USED',
        'the challenge nonce was already used: each challenge is accepted once (a replay?); ask for a new one',
      );
    }
    if (this.#spent.size >= this.#maxSpent) this.#prune();
    if (this.#spent.size >= this.#maxSpent) {
      // Forgetting one would let it be replayed: refuse until some expire instead.
      throw new ProvisionerRefusal(
        503,
        'ERR_PROVISIONER_BUSY',
        `${this.#maxSpent} challenges were spent within the last ${this.#ttlMs} ms; retry shortly`,
      );
    }
    this.#spent.set(key, expiresAt);
  }

  #mac(nonce: Buffer): Buffer {
    return createHmac('sha256', this.#key).update(nonce.subarray(0, SIGNED_BYTES)).digest().subarray(0, MAC_BYTES);
  }

  /** Spent challenges are in the order they were spent, not of expiry, so this looks at all of them. */
  #prune(): void {
    const now = this.#now();
    for (const [key, expiresAt] of this.#spent) if (expiresAt <= now) this.#spent.delete(key);
  }
}
