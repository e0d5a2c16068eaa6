/**
 * The user_data forms the runtime keeps for its own bindings (SPEC "Reserved bindings"): a DER
 * SubjectPublicKeyInfo (an attested TLS leaf's document) and anything starting `enclave-runtime/`
 * (the provisioner's `enclave-runtime/provisioner/v1:` + SHA-256 of the CSR's SPKI). The internal API
 * refuses them, so the app never holds a document a verifier would take as the runtime vouching for
 * a key the app chose (and could export).
 */

/** Every runtime binding that is not a raw SPKI starts with these bytes. */
export const RESERVED_USER_DATA_PREFIX = 'enclave-runtime/';

/** Which rule a user_data breaks. */
export type ReservedRule = 'spki' | 'prefix';

const PREFIX_BYTES = Buffer.from(RESERVED_USER_DATA_PREFIX, 'ascii');
const TAG_SEQUENCE = 0x30;
const TAG_OID = 0x06;
const TAG_BIT_STRING = 0x03;
const TAG_BIT_STRING_CONSTRUCTED = 0x23;
/** Nesting any SPKI needs is 2; indefinite-length children may nest deeper, but not without bound. */
const MAX_DEPTH = 16;

/**
 * The rule `userData` breaks, or undefined for ordinary bytes. `spki`: it begins with something that
 * decodes as a SubjectPublicKeyInfo of any algorithm (BER lengths too, trailing bytes or not), since a
 * lenient verifier may read it as one. `prefix`: it begins with `enclave-runtime/` in any ASCII case.
 */
export function reservedUserDataRule(userData: Uint8Array): ReservedRule | undefined {
  if (startsWithPrefix(userData)) return 'prefix';
  if (startsWithSpki(userData)) return 'spki';
  return undefined;
}

/** The refusal the API gives for `rule`, naming it. */
export function reservedUserDataReason(rule: ReservedRule): string {
  return rule === 'spki'
    ? 'user_data is reserved: it decodes as a DER SubjectPublicKeyInfo, the form the runtime uses to bind its own TLS keys; send a hash of the key (or any other bytes) instead'
    : `user_data is reserved: it starts with "${RESERVED_USER_DATA_PREFIX}", the prefix of the runtime's own bindings`;
}

function startsWithPrefix(bytes: Uint8Array): boolean {
  if (bytes.byteLength < PREFIX_BYTES.byteLength) return false;
  for (let i = 0; i < PREFIX_BYTES.byteLength; i++) {
    const byte = bytes[i]!;
    // ASCII case folding only: A-Z to a-z.
    const folded = byte >= 0x41 && byte <= 0x5a ? byte + 0x20 : byte;
    if (folded !== PREFIX_BYTES[i]) return false;
  }
  return true;
}

interface Tlv {
  tag: number;
  /** Offset of the first content byte. */
  start: number;
  /** Offset just past the element (end-of-contents octets included for indefinite length). */
  end: number;
  /** Offset just past the content (before end-of-contents octets). */
  contentEnd: number;
}

/** SEQUENCE { SEQUENCE { OID, any? }, BIT STRING } at offset 0; what follows it is not looked at. */
function startsWithSpki(bytes: Uint8Array): boolean {
  const outer = readTlv(bytes, 0, bytes.byteLength, 0);
  if (outer === undefined || outer.tag !== TAG_SEQUENCE) return false;
  const children = readChildren(bytes, outer, 1);
  if (children === undefined || children.length !== 2) return false;
  const [algorithm, key] = children as [Tlv, Tlv];
  if (algorithm.tag !== TAG_SEQUENCE || (key.tag !== TAG_BIT_STRING && key.tag !== TAG_BIT_STRING_CONSTRUCTED))
    return false;
  const parts = readChildren(bytes, algorithm, 2);
  if (parts === undefined || parts.length < 1 || parts.length > 2) return false;
  const oid = parts[0]!;
  return oid.tag === TAG_OID && oid.contentEnd > oid.start;
}

function readChildren(bytes: Uint8Array, parent: Tlv, depth: number): Tlv[] | undefined {
  if (parent.tag & 0x20) {
    const children: Tlv[] = [];
    for (let at = parent.start; at < parent.contentEnd;) {
      const child = readTlv(bytes, at, parent.contentEnd, depth);
      if (child === undefined) return undefined;
      children.push(child);
      at = child.end;
    }
    return children;
  }
  return undefined;
}

/**
 * One BER element within [offset, limit): single-byte tags, short, long (up to 8 length bytes,
 * minimal or not, as lenient decoders take them) or indefinite lengths (constructed only).
 */
function readTlv(bytes: Uint8Array, offset: number, limit: number, depth: number): Tlv | undefined {
  if (depth > MAX_DEPTH || offset + 2 > limit) return undefined;
  const tag = bytes[offset]!;
  if ((tag & 0x1f) === 0x1f) return undefined;
  const first = bytes[offset + 1]!;
  let at = offset + 2;
  if (first === 0x80) {
    if (!(tag & 0x20)) return undefined;
    // Indefinite: children until the end-of-contents octets 00 00.
    let cursor = at;
    for (;;) {
      if (cursor + 2 > limit) return undefined;
      if (bytes[cursor] === 0 && bytes[cursor + 1] === 0)
        return { tag, start: at, contentEnd: cursor, end: cursor + 2 };
      const child = readTlv(bytes, cursor, limit, depth + 1);
      if (child === undefined) return undefined;
      cursor = child.end;
    }
  }
  let length = first;
  if (first & 0x80) {
    const count = first & 0x7f;
    if (count > 8 || at + count > limit) return undefined;
    length = 0;
    for (let i = 0; i < count; i++) {
      length = length * 256 + bytes[at + i]!;
      if (length > limit) return undefined;
    }
    at += count;
  }
  if (at + length > limit) return undefined;
  return { tag, start: at, contentEnd: at + length, end: at + length };
}
