import { Encoder } from 'cbor-x';

// Integer keys stay integers, bytes stay untagged bstr, maps get minimal length headers: as the NSM writes them.
const cbor = new Encoder({ useRecords: false, tagUint8Array: false, variableMapSize: true, mapsAsObjects: false });

// COSE protected header {1: -35}: alg ES384, byte for byte as in real documents.
export const PROTECTED_HEADER = Uint8Array.of(0xa1, 0x01, 0x38, 0x22);
const BYTES = 0x40; // CBOR major type 2
const ARRAY_OF_4 = 0x84;
const EMPTY_MAP = 0xa0;
const EMPTY_BYTES = 0x40;
const NULL = 0xf6;
const UINT64 = 0x1b; // what cbor-x writes for any BigInt that fits: 8 bytes, whatever the value
const PAYLOAD_KEYS = 9;

/** What a simulated document's payload holds that changes only with the NSM's signing identity. */
export interface DocumentFixedFields {
  moduleId: string;
  /** PCRs 0..15. */
  pcrs: readonly Uint8Array[];
  certificate: Uint8Array;
  cabundle: readonly Uint8Array[];
}

/** What changes from one document to the next. */
export interface DocumentVariableFields {
  timestamp: number;
  publicKey: Uint8Array | undefined;
  userData: Uint8Array | undefined;
  nonce: Uint8Array | undefined;
}

/**
 * Encodes simulated attestation documents from bytes encoded once per signing identity: the payload map's
 * fixed pairs (module id, digest, 16 PCRs, certificate, CA bundle: nearly all of its 4-5 KB) are cbor-x's
 * own output, kept, and only the timestamp and the three optional byte strings are written per document.
 * A whole-map cbor-x encode (and two more to wrap it) cost ~0.3 ms of event loop per nonce handshake; the
 * test suite checks the result byte for byte against that encoder.
 */
export class DocumentTemplate {
  // From the map header through the `timestamp` key, then from the `pcrs` key through the `public_key` key.
  readonly #head: Buffer;
  readonly #middle: Buffer;
  static readonly #userDataKey = encode('user_data');
  static readonly #nonceKey = encode('nonce');

  constructor(fixed: DocumentFixedFields) {
    const pcrs = new Map<number, Uint8Array>();
    fixed.pcrs.forEach((value, index) => pcrs.set(index, value));
    this.#head = Buffer.concat([
      Buffer.of(0xa0 + PAYLOAD_KEYS),
      encode('module_id'),
      encode(fixed.moduleId),
      encode('digest'),
      encode('SHA384'),
      encode('timestamp'),
    ]);
    this.#middle = Buffer.concat([
      encode('pcrs'),
      encode(pcrs),
      encode('certificate'),
      encode(fixed.certificate),
      encode('cabundle'),
      encode(fixed.cabundle),
      encode('public_key'),
    ]);
  }

  /** The CBOR payload map, keys in the NSM's order, null for an absent field. */
  payload(fields: DocumentVariableFields): Buffer {
    const userDataKey = DocumentTemplate.#userDataKey;
    const nonceKey = DocumentTemplate.#nonceKey;
    const length =
      this.#head.length +
      9 +
      this.#middle.length +
      optionalLength(fields.publicKey) +
      userDataKey.length +
      optionalLength(fields.userData) +
      nonceKey.length +
      optionalLength(fields.nonce);
    const out = Buffer.allocUnsafe(length);
    let at = this.#head.copy(out, 0);
    out[at++] = UINT64;
    out.writeBigUInt64BE(BigInt(Math.trunc(fields.timestamp)), at);
    at += 8;
    at += this.#middle.copy(out, at);
    at = writeOptional(out, at, fields.publicKey);
    at += userDataKey.copy(out, at);
    at = writeOptional(out, at, fields.userData);
    at += nonceKey.copy(out, at);
    writeOptional(out, at, fields.nonce);
    return out;
  }
}

/** The COSE Sig_structure ["Signature1", protected, external_aad = h'', payload] that gets signed. */
export function toBeSigned(payload: Uint8Array): Buffer {
  return Buffer.concat([
    Buffer.of(ARRAY_OF_4, 0x6a),
    Buffer.from('Signature1', 'latin1'),
    bytesHeader(PROTECTED_HEADER.length),
    PROTECTED_HEADER,
    Buffer.of(EMPTY_BYTES),
    bytesHeader(payload.byteLength),
    payload,
  ]);
}

/** The untagged COSE_Sign1 [protected, {}, payload, signature]. */
export function coseSign1(payload: Uint8Array, signature: Uint8Array): Uint8Array {
  const joined = Buffer.concat([
    Buffer.of(ARRAY_OF_4),
    bytesHeader(PROTECTED_HEADER.length),
    PROTECTED_HEADER,
    Buffer.of(EMPTY_MAP),
    bytesHeader(payload.byteLength),
    payload,
    bytesHeader(signature.byteLength),
    signature,
  ]);
  return new Uint8Array(joined.buffer, joined.byteOffset, joined.byteLength);
}

function optionalLength(value: Uint8Array | undefined): number {
  return value === undefined ? 1 : bytesHeaderLength(value.byteLength) + value.byteLength;
}

function writeOptional(out: Buffer, at: number, value: Uint8Array | undefined): number {
  if (value === undefined) {
    out[at] = NULL;
    return at + 1;
  }
  at += bytesHeader(value.byteLength).copy(out, at);
  out.set(value, at);
  return at + value.byteLength;
}

function bytesHeaderLength(n: number): number {
  return n < 24 ? 1 : n < 0x100 ? 2 : n < 0x10000 ? 3 : 5;
}

// A byte string's minimal CBOR header, as cbor-x writes it (fields are capped at NSM_MAX_FIELD_BYTES anyway).
function bytesHeader(n: number): Buffer {
  if (n < 24) return Buffer.of(BYTES + n);
  if (n < 0x100) return Buffer.of(BYTES + 24, n);
  if (n < 0x10000) return Buffer.of(BYTES + 25, n >> 8, n & 0xff);
  const header = Buffer.allocUnsafe(5);
  header[0] = BYTES + 26;
  header.writeUInt32BE(n, 1);
  return header;
}

/** cbor-x's encoding of `value` with the NSM's options, copied out of its reusable buffer. */
export function encode(value: unknown): Buffer {
  return Buffer.from(cbor.encode(value));
}
