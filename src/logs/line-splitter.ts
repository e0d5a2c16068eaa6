/**
 * Cuts a byte stream into lines of at most `maxBytes` bytes. A longer line is split, not
 * truncated: every piece but the last is reported `partial`, and cuts fall on UTF-8 character
 * boundaries, so a reader can join the pieces back into the line as it was written.
 */
export class LineSplitter {
  readonly #maxBytes: number;
  readonly #onLine: (line: string, partial: boolean) => void;
  #pending: Buffer[] = [];
  #size = 0;

  constructor(maxBytes: number, onLine: (line: string, partial: boolean) => void) {
    if (!Number.isInteger(maxBytes) || maxBytes < 4)
      throw new RangeError(`a line holds at least 4 bytes (one UTF-8 character), got ${maxBytes}`);
    this.#maxBytes = maxBytes;
    this.#onLine = onLine;
  }

  /** Feeds bytes; each complete line (without its "\n" and a "\r" before it) is reported at once. */
  push(chunk: Buffer): void {
    let start = 0;
    while (start < chunk.length) {
      const newline = chunk.indexOf(0x0a, start);
      this.#append(chunk.subarray(start, newline < 0 ? chunk.length : newline));
      if (newline < 0) return;
      this.#emit(false);
      start = newline + 1;
    }
  }

  /** Reports what is left after the last newline (the stream ended without one). */
  flush(): void {
    if (this.#size > 0) this.#emit(false);
  }

  #append(bytes: Buffer): void {
    while (this.#size + bytes.length > this.#maxBytes) {
      const room = this.#maxBytes - this.#size;
      this.#pending.push(bytes.subarray(0, room));
      this.#size += room;
      bytes = bytes.subarray(room);
      const full = Buffer.concat(this.#pending);
      const cut = characterBoundary(full);
      this.#pending = [];
      this.#size = 0;
      this.#onLine(full.subarray(0, cut).toString('utf8'), true);
      // The bytes of a character cut in two go first into the next piece.
      if (cut < full.length) {
        this.#pending.push(full.subarray(cut));
        this.#size = full.length - cut;
      }
    }
    if (bytes.length > 0) {
      this.#pending.push(bytes);
      this.#size += bytes.length;
    }
  }

  #emit(partial: boolean): void {
    let line = this.#pending.length === 1 ? (this.#pending[0] as Buffer) : Buffer.concat(this.#pending);
    if (!partial && line.length > 0 && line[line.length - 1] === 0x0d) line = line.subarray(0, -1);
    this.#pending = [];
    this.#size = 0;
    this.#onLine(line.toString('utf8'), partial);
  }
}

/** `bytes.length`, or less when the last character is cut short (its remaining bytes are still to come). */
function characterBoundary(bytes: Buffer): number {
  let start = bytes.length - 1;
  // Back over continuation bytes (10xxxxxx) to the lead byte of the last character.
  while (start > 0 && bytes.length - start < 4 && ((bytes[start] as number) & 0xc0) === 0x80) start--;
  const lead = bytes[start] as number;
  const length = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
  return start > 0 && start + length > bytes.length ? start : bytes.length;
}
