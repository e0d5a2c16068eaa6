/**
 * A seeded PRNG (mulberry32) and the input generators fuzz tests share, so a failing case
 * is reproduced by its seed and iteration number alone.
 */
export class Prng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A uniform 32-bit unsigned integer. */
  nextUint32(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  /** An integer in [0, n). */
  int(n: number): number {
    return this.nextUint32() % n;
  }

  /** One of the given values. */
  pick<T>(values: readonly T[]): T {
    return values[this.int(values.length)]!;
  }

  /** `length` random bytes. */
  bytes(length: number): Buffer {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i++) out[i] = this.int(256);
    return out;
  }

  /** A copy of `input` with a few random byte flips, insertions, deletions or truncation. */
  mutate(input: Buffer): Buffer {
    let out = Buffer.from(input);
    const edits = 1 + this.int(4);
    for (let e = 0; e < edits; e++) {
      const at = out.length === 0 ? 0 : this.int(out.length);
      switch (this.int(5)) {
        case 0:
          if (out.length > 0) out[at] = this.int(256);
          break;
        case 1:
          if (out.length > 0) out[at] = out[at]! ^ (1 << this.int(8));
          break;
        case 2:
          out = Buffer.concat([out.subarray(0, at), this.bytes(1 + this.int(8)), out.subarray(at)]);
          break;
        case 3:
          out = Buffer.concat([out.subarray(0, at), out.subarray(at + 1 + this.int(8))]);
          break;
        default:
          out = out.subarray(0, at);
      }
    }
    return out;
  }
}
