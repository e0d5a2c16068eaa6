import { TlsError } from './tls-error.js';

// Nothing we encode comes near this: a leaf with a 1 KiB-field document is about 10 KiB.
const MAX_CONTENT_BYTES = 0xffffff;

/** One DER TLV with a definite, minimal length; `content` parts are concatenated. */
export function derTlv(tag: number, ...content: Uint8Array[]): Buffer {
  return derJoin(derNested(tag, ...content));
}

/**
 * A DER value not yet joined into one buffer: its parts, in order, and their total size. Nesting one in a
 * derNested() adds a header in front instead of copying it, so a leaf whose SAN carries a 9 KB document is
 * copied once, by derJoin(), rather than once per enclosing level (seven of them).
 */
export interface DerParts {
  readonly bytes: number;
  readonly parts: readonly Uint8Array[];
}

/** derTlv() without the copy: `content` parts (bytes or DerParts) stay where they are until derJoin(). */
export function derNested(tag: number, ...content: ReadonlyArray<Uint8Array | DerParts>): DerParts {
  let n = 0;
  const parts: Uint8Array[] = [];
  for (const part of content) {
    if (part instanceof Uint8Array) {
      n += part.byteLength;
      parts.push(part);
    } else {
      n += part.bytes;
      for (const inner of part.parts) parts.push(inner);
    }
  }
  const head = tlvHeader(tag, n);
  return { bytes: head.length + n, parts: [head, ...parts] };
}

/** The bytes of `value`, in one new buffer. */
export function derJoin(value: DerParts): Buffer {
  return Buffer.concat(value.parts as Uint8Array[], value.bytes);
}

function tlvHeader(tag: number, n: number): Buffer {
  if (n > MAX_CONTENT_BYTES) throw new TlsError('ERR_TLS_ISSUE', `a DER value of ${n} bytes is too large to encode`);
  return n < 0x80
    ? Buffer.of(tag, n)
    : n < 0x100
      ? Buffer.of(tag, 0x81, n)
      : n < 0x10000
        ? Buffer.of(tag, 0x82, n >> 8, n & 0xff)
        : Buffer.of(tag, 0x83, n >> 16, (n >> 8) & 0xff, n & 0xff);
}

/** A TLV read from DER: its tag, where its content starts and ends, and where the whole element ends. */
export interface DerElement {
  tag: number;
  start: number;
  contentStart: number;
  end: number;
}

/**
 * Reads the element at `offset` of `der`, bounded by `limit`. Only definite lengths of at most four
 * bytes are accepted: this reads certificates we were handed (our CA's), not arbitrary BER.
 */
export function readDer(der: Uint8Array, offset: number, limit: number = der.byteLength): DerElement {
  const fail = (why: string): never => {
    throw new TlsError('ERR_TLS_CA_STATE', `malformed DER at byte ${offset}: ${why}`);
  };
  if (offset + 2 > limit) fail('truncated header');
  const tag = der[offset]!;
  if ((tag & 0x1f) === 0x1f) fail('multi-byte tags are not supported');
  let length = der[offset + 1]!;
  let contentStart = offset + 2;
  if (length & 0x80) {
    const bytes = length & 0x7f;
    if (bytes === 0 || bytes > 4) fail('unsupported length form');
    if (contentStart + bytes > limit) fail('truncated length');
    length = 0;
    for (let i = 0; i < bytes; i++) length = length * 256 + der[contentStart + i]!;
    contentStart += bytes;
  }
  const end = contentStart + length;
  if (end > limit) fail('content runs past its container');
  return { tag, start: offset, contentStart, end };
}
