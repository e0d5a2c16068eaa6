import { Decoder, Tag } from 'cbor-x';
import { AttestationError } from './attestation-error.js';

/** Real documents are 4–8 KiB; anything past this is not NSM output and is refused before parsing. */
export const MAX_COSE_SIGN1_BYTES = 64 * 1024;

export const COSE_SIGN1_TAG = 18;
const HEADER_ALG = 1;
const HEADER_CRIT = 2;
const ALG_ES384 = -35;
/** ES384 signatures are raw r‖s, 48 bytes each (RFC 9053 §2.1), not DER. */
export const ES384_SIGNATURE_BYTES = 96;
const SIGNATURE1_CONTEXT = new TextEncoder().encode('Signature1');

// Maps stay Maps so integer header labels (1, -35) and text keys both survive; no records/structured clone.
const decoder = new Decoder({ mapsAsObjects: false, useRecords: false });

/** A decoded COSE_Sign1 whose byte fields are private copies of the input, exactly as received. */
export interface CoseSign1 {
  /** The protected header bstr as on the wire: it is signed as these bytes, never re-encoded. */
  readonly protectedHeader: Uint8Array;
  readonly unprotectedHeader: ReadonlyMap<unknown, unknown>;
  /** The payload bstr content as on the wire (the signature covers these exact bytes). */
  readonly payload: Uint8Array;
  readonly signature: Uint8Array;
  /** Whether the input carried CBOR tag 18; real NSM output never does. */
  readonly tagged: boolean;
}

/** Decodes strict CBOR bytes with cbor-x, mapping every decoder failure (incl. trailing bytes, deep nesting) to `code`. */
export function decodeCbor(bytes: Uint8Array, what: string): unknown {
  try {
    return decoder.decode(bytes);
  } catch (error) {
    // RangeError here is cbor-x recursing through hostile nesting; it is bounded by the input cap.
    const reason = error instanceof Error ? error.message : String(error);
    throw new AttestationError('ERR_ATTESTATION_FORMAT', `${what} is not valid CBOR: ${reason}`, { cause: error });
  }
}

/** Decodes an untagged or tag-18 COSE_Sign1 and checks its shape; the protected header must say ES384. */
export function decodeCoseSign1(input: Uint8Array): CoseSign1 {
  if (input.byteLength === 0) throw new AttestationError('ERR_ATTESTATION_FORMAT', 'attestation document is empty');
  if (input.byteLength > MAX_COSE_SIGN1_BYTES) {
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      `attestation document is ${input.byteLength} bytes, more than the ${MAX_COSE_SIGN1_BYTES} allowed`,
    );
  }
  let outer = decodeCbor(input, 'attestation document');
  let tagged = false;
  if (outer instanceof Tag) {
    if (outer.tag !== COSE_SIGN1_TAG) {
      throw new AttestationError(
        'ERR_ATTESTATION_FORMAT',
        `attestation document has CBOR tag ${outer.tag}, expected none or 18 (COSE_Sign1)`,
      );
    }
    outer = outer.value;
    tagged = true;
  }
  if (!Array.isArray(outer) || outer.length !== 4) {
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      'attestation document is not a COSE_Sign1 array of 4 elements',
    );
  }
  const [protectedHeader, unprotectedHeader, payload, signature] = outer as unknown[];
  if (!(protectedHeader instanceof Uint8Array)) throw formatError('protected header is not a byte string');
  if (!(unprotectedHeader instanceof Map)) throw formatError('unprotected header is not a map');
  if (!(payload instanceof Uint8Array))
    throw formatError('payload is not a byte string (detached payloads are not supported)');
  if (!(signature instanceof Uint8Array)) throw formatError('signature is not a byte string');
  checkProtectedHeader(protectedHeader);
  return {
    // cbor-x hands out views into the caller's buffer; copies keep later caller writes out of verification.
    protectedHeader: copyBytes(protectedHeader),
    unprotectedHeader,
    payload: copyBytes(payload),
    signature: copyBytes(signature),
    tagged,
  };
}

function checkProtectedHeader(bytes: Uint8Array): void {
  if (bytes.byteLength === 0) {
    throw new AttestationError('ERR_ATTESTATION_SIGNATURE', 'protected header is empty: no signature algorithm');
  }
  const header = decodeCbor(bytes, 'protected header');
  if (!(header instanceof Map)) throw formatError('protected header is not a CBOR map');
  if (header.has(HEADER_CRIT)) {
    throw new AttestationError(
      'ERR_ATTESTATION_SIGNATURE',
      'protected header lists critical parameters, which are not supported',
    );
  }
  const alg = header.get(HEADER_ALG);
  if (alg !== ALG_ES384) {
    throw new AttestationError(
      'ERR_ATTESTATION_SIGNATURE',
      `signature algorithm is ${describe(alg)}, only ES384 (-35) is accepted`,
    );
  }
}

/** The canonical CBOR of Sig_structure ["Signature1", protected, h'', payload] (RFC 9052 §4.4). */
export function sigStructure(protectedHeader: Uint8Array, payload: Uint8Array): Uint8Array {
  const parts = [
    Uint8Array.of(0x84),
    cborHeader(3, SIGNATURE1_CONTEXT.byteLength),
    SIGNATURE1_CONTEXT,
    cborHeader(2, protectedHeader.byteLength),
    protectedHeader,
    cborHeader(2, 0),
    cborHeader(2, payload.byteLength),
    payload,
  ];
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let offset = 0;
  for (const part of parts) {
    out.set(part, offset);
    offset += part.byteLength;
  }
  return out;
}

/** Shortest-form CBOR head for a major type and length, as deterministic encoding requires. */
function cborHeader(major: number, length: number): Uint8Array {
  const m = major << 5;
  if (length < 24) return Uint8Array.of(m | length);
  if (length < 0x100) return Uint8Array.of(m | 24, length);
  if (length < 0x10000) return Uint8Array.of(m | 25, length >> 8, length & 0xff);
  return Uint8Array.of(m | 26, (length >>> 24) & 0xff, (length >> 16) & 0xff, (length >> 8) & 0xff, length & 0xff);
}

/** The signature-length rule every ES384 check applies before any crypto; throws ERR_ATTESTATION_SIGNATURE. */
export function checkEs384SignatureLength(cose: CoseSign1): void {
  if (cose.signature.byteLength !== ES384_SIGNATURE_BYTES) {
    throw new AttestationError(
      'ERR_ATTESTATION_SIGNATURE',
      `signature is ${cose.signature.byteLength} bytes, ES384 needs ${ES384_SIGNATURE_BYTES} (raw r||s)`,
    );
  }
}

/** The ES384 refusal for a signing key that is not P-384 (either verifier's key check failed). */
export function es384KeyError(cause?: unknown): AttestationError {
  return new AttestationError(
    'ERR_ATTESTATION_SIGNATURE',
    'the signing certificate key is not a P-384 key, as ES384 requires',
    cause === undefined ? undefined : { cause },
  );
}

/**
 * The one ES384 result both verifiers give: the signature-length rule first, then `check`, which
 * returns whether the signature verifies or throws when the crypto layer could not check it at
 * all. An async check is settled first and handed in as `() => result` (or a thunk that rethrows).
 */
export function checkEs384Outcome(cose: CoseSign1, check: () => boolean): void {
  checkEs384SignatureLength(cose);
  let ok: boolean;
  try {
    ok = check();
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_SIGNATURE', 'signature could not be checked', { cause: error });
  }
  if (!ok) {
    throw new AttestationError(
      'ERR_ATTESTATION_SIGNATURE',
      'ES384 signature does not verify with the signing certificate key',
    );
  }
}

function formatError(reason: string): AttestationError {
  return new AttestationError('ERR_ATTESTATION_FORMAT', `not a COSE_Sign1: ${reason}`);
}

function copyBytes(bytes: Uint8Array): Uint8Array {
  return new Uint8Array(bytes);
}

function describe(value: unknown): string {
  if (value === undefined) return 'missing';
  if (typeof value === 'number' || typeof value === 'bigint') return String(value);
  if (typeof value === 'string') return JSON.stringify(value.slice(0, 32));
  return typeof value;
}
