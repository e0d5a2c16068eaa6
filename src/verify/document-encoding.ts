import { AttestationError } from './attestation-error.js';
import { MAX_COSE_SIGN1_BYTES } from './cose-sign1.js';

/** Hex doubles the size and people wrap base64/hex in lines: room for that, nothing more. */
export const MAX_ENCODED_INPUT_BYTES = 3 * MAX_COSE_SIGN1_BYTES;

export type DocumentEncoding = 'cbor' | 'base64' | 'hex';

/** What `attest verify` was given: a COSE_Sign1 document, or a certificate that embeds one. */
export type AttestationInput =
  | { kind: 'document'; encoding: DocumentEncoding; bytes: Uint8Array }
  | { kind: 'certificate'; encoding: 'der' | 'pem'; bytes: Uint8Array };

const CBOR_ARRAY_4 = 0x84;
const CBOR_TAG_18 = 0xd2;
const DER_SEQUENCE = 0x30;
// The first block is the leaf; TLS PEM files often go on with its issuers (the evervault fixtures do).
const PEM_CERTIFICATE = /^-----BEGIN CERTIFICATE-----\s*([A-Za-z0-9+/=\s]+?)\s*-----END CERTIFICATE-----/;
const HEX = /^(?:0x)?((?:[0-9a-fA-F]{2})+)$/;
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=|[A-Za-z0-9+/]{2,3})?$/;
const BASE64URL = /^[A-Za-z0-9_-]+={0,2}$/;

/** Turns raw CBOR, base64 (standard or URL-safe) or hex (whitespace anywhere) into COSE_Sign1 bytes. */
export function decodeDocumentInput(input: Uint8Array): { encoding: DocumentEncoding; bytes: Uint8Array } {
  const decoded = decodeAttestationInput(input);
  if (decoded.kind !== 'document') {
    throw new AttestationError('ERR_ATTESTATION_FORMAT', 'input is a certificate, not an attestation document');
  }
  return decoded;
}

/**
 * Autodetects what the bytes are. Binary input starting like a COSE_Sign1 (0x84 or tag 18) is
 * taken verbatim, never trimmed: its trailing bytes are signature bytes. Text is trimmed of all
 * whitespace, then read as PEM certificate, hex, or base64, in that order: hex digits are also
 * base64 characters, but a COSE_Sign1 in base64 starts "h" (0x84) or "0o" (0xd2 0x84), never all-hex.
 */
export function decodeAttestationInput(input: Uint8Array): AttestationInput {
  if (input.byteLength === 0) throw formatError('input is empty');
  if (input.byteLength > MAX_ENCODED_INPUT_BYTES)
    throw formatError(`input is ${input.byteLength} bytes, more than the ${MAX_ENCODED_INPUT_BYTES} allowed`);
  const first = input[0];
  if (first === CBOR_ARRAY_4 || first === CBOR_TAG_18)
    return { kind: 'document', encoding: 'cbor', bytes: bounded(input) };
  // A certificate is a SEQUENCE longer than 127 bytes, so its length is in long form (0x81–0x84);
  // that second byte also keeps text such as "0x8444…" from looking like DER.
  const second = input[1] ?? 0;
  if (first === DER_SEQUENCE && second >= 0x81 && second <= 0x84)
    return { kind: 'certificate', encoding: 'der', bytes: input };
  if (!input.every((byte) => byte < 0x80))
    throw formatError('input is neither a COSE_Sign1 (CBOR), base64, hex nor a certificate');
  const text = Buffer.from(input).toString('latin1');
  const pem = PEM_CERTIFICATE.exec(text.trim());
  if (pem !== null)
    return { kind: 'certificate', encoding: 'pem', bytes: Buffer.from(pem[1]!.replace(/\s+/g, ''), 'base64') };
  const compact = text.replace(/\s+/g, '');
  if (compact.length === 0) throw formatError('input is only whitespace');
  const hex = HEX.exec(compact);
  if (hex !== null) return { kind: 'document', encoding: 'hex', bytes: bounded(Buffer.from(hex[1]!, 'hex')) };
  if (BASE64.test(compact) || BASE64URL.test(compact)) {
    const bytes = Buffer.from(compact, BASE64.test(compact) ? 'base64' : 'base64url');
    if (bytes.byteLength > 0) return { kind: 'document', encoding: 'base64', bytes: bounded(bytes) };
  }
  throw formatError('input is neither a COSE_Sign1 (CBOR), base64, hex nor a certificate');
}

function bounded(bytes: Uint8Array): Uint8Array {
  if (bytes.byteLength > MAX_COSE_SIGN1_BYTES) {
    throw formatError(
      `attestation document is ${bytes.byteLength} bytes, more than the ${MAX_COSE_SIGN1_BYTES} allowed`,
    );
  }
  return bytes;
}

function formatError(reason: string): AttestationError {
  return new AttestationError('ERR_ATTESTATION_FORMAT', reason);
}
