/**
 * Requester nonces a responder has seen, so a replayed HELLO is refused by name. Bounded: the
 * oldest is forgotten past `max`. Forgetting is safe, since the responder's own fresh nonce (which
 * the requester's document must carry) already defeats a replay; this only makes one visible.
 */
export class NonceBook {
  readonly #seen = new Set<string>();
  readonly #max: number;

  constructor(max = 4096) {
    this.#max = max;
  }

  /** False when `nonce` was seen before; otherwise remembers it. */
  add(nonce: Uint8Array): boolean {
    const key = Buffer.from(nonce).toString('base64');
    if (this.#seen.has(key)) return false;
    this.#seen.add(key);
    if (this.#seen.size > this.#max) this.#seen.delete(this.#seen.values().next().value as string);
    return true;
  }
}
