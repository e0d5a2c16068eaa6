import { AttestationError } from './attestation-error.js';
import { decodeCbor } from './cose-sign1.js';

/**
 * The payload of an NSM attestation document, checked against the AWS schema
 * (aws-nitro-enclaves-nsm-api docs/attestation_process.md §2.2). Byte fields are private copies.
 */
export interface AttestationDocument {
  moduleId: string;
  digest: 'SHA384';
  /** Milliseconds since the Unix epoch, as the NSM wrote it. */
  timestamp: number;
  /** PCR index → measurement, in ascending index order. */
  pcrs: ReadonlyMap<number, Uint8Array>;
  /** DER of the certificate whose key signed the document. */
  certificate: Uint8Array;
  /** DER certificates, root first, each issuing the next; the last one issues `certificate`. */
  cabundle: readonly Uint8Array[];
  publicKey: Uint8Array | null;
  userData: Uint8Array | null;
  nonce: Uint8Array | null;
}

/** The NSM caps public_key, user_data and nonce at 1024 bytes (real documents reach it, see blocky fixtures). */
export const MAX_OPTIONAL_FIELD_BYTES = 1024;
export const MAX_PCR_COUNT = 32;
export const MAX_CABUNDLE_CERTS = 8;
/** AWS's CDDL: `cert = bytes .size (1..1024)`. */
export const MAX_CERTIFICATE_BYTES = 1024;
/** AWS's CDDL: `module_id: text .size (1..255)`. */
export const MAX_MODULE_ID_LENGTH = 255;
const PCR_LENGTHS: ReadonlySet<number> = new Set([32, 48, 64]);
const DEBUG_PCRS = [0, 1, 2] as const;

const REQUIRED_KEYS = ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle'] as const;
// AWS's CDDL marks these optional; real NSM output carries them as null instead of leaving them out.
const OPTIONAL_KEYS = ['public_key', 'user_data', 'nonce'] as const;
const KNOWN_KEYS: ReadonlySet<string> = new Set<string>([...REQUIRED_KEYS, ...OPTIONAL_KEYS]);

/** Decodes a COSE payload into an AttestationDocument, rejecting anything outside the AWS schema. */
export function decodeAttestationPayload(payload: Uint8Array): AttestationDocument {
  const map = decodeCbor(payload, 'attestation payload');
  if (!(map instanceof Map)) throw schemaError('payload is not a CBOR map');
  for (const key of map.keys()) {
    if (typeof key !== 'string') throw schemaError(`payload has a non-text key (${typeof key})`);
    if (!KNOWN_KEYS.has(key)) throw schemaError(`payload has an unknown key ${JSON.stringify(key.slice(0, 64))}`);
  }
  for (const key of REQUIRED_KEYS) {
    if (!map.has(key)) throw schemaError(`payload has no ${key}`);
  }
  return {
    moduleId: readModuleId(map.get('module_id')),
    digest: readDigest(map.get('digest')),
    timestamp: readTimestamp(map.get('timestamp')),
    pcrs: readPcrs(map.get('pcrs')),
    certificate: readCertificate(map.get('certificate'), 'certificate'),
    cabundle: readCabundle(map.get('cabundle')),
    publicKey: readOptionalBytes(map, 'public_key'),
    userData: readOptionalBytes(map, 'user_data'),
    nonce: readOptionalBytes(map, 'nonce'),
  };
}

/** True when PCR0, PCR1 or PCR2 is all zeros, which only a debug-mode enclave reports. */
export function isDebugDocument(document: AttestationDocument): boolean {
  return DEBUG_PCRS.some((index) => {
    const value = document.pcrs.get(index);
    return value !== undefined && value.every((byte) => byte === 0);
  });
}

/** The document as JSON-ready data with the AWS field names and byte fields in lowercase hex. */
export function attestationDocumentToJson(document: AttestationDocument): Record<string, unknown> {
  // No Buffer: the browser build shares this module.
  const hex = (bytes: Uint8Array | null): string | null =>
    bytes === null ? null : Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
  return {
    module_id: document.moduleId,
    digest: document.digest,
    timestamp: document.timestamp,
    pcrs: Object.fromEntries([...document.pcrs].map(([index, value]) => [String(index), hex(value)])),
    certificate: hex(document.certificate),
    cabundle: document.cabundle.map((cert) => hex(cert)),
    public_key: hex(document.publicKey),
    user_data: hex(document.userData),
    nonce: hex(document.nonce),
  };
}

function readModuleId(value: unknown): string {
  if (typeof value !== 'string') throw schemaError(`module_id is ${kind(value)}, expected text`);
  if (value.length === 0 || value.length > MAX_MODULE_ID_LENGTH) {
    throw schemaError(`module_id has ${value.length} characters, expected 1..${MAX_MODULE_ID_LENGTH}`);
  }
  return value;
}

function readDigest(value: unknown): 'SHA384' {
  if (value !== 'SHA384')
    throw schemaError(
      `digest is ${typeof value === 'string' ? JSON.stringify(value.slice(0, 32)) : kind(value)}, expected "SHA384"`,
    );
  return value;
}

function readTimestamp(value: unknown): number {
  // cbor-x yields bigint for 8-byte integers, which every real timestamp is.
  const n =
    typeof value === 'bigint' && value <= BigInt(Number.MAX_SAFE_INTEGER) && value >= 0n ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n <= 0) {
    throw schemaError(
      `timestamp is ${typeof value === 'number' || typeof value === 'bigint' ? String(value) : kind(value)}, expected a positive integer (ms)`,
    );
  }
  return n;
}

function readPcrs(value: unknown): ReadonlyMap<number, Uint8Array> {
  if (!(value instanceof Map)) throw schemaError(`pcrs is ${kind(value)}, expected a map`);
  if (value.size === 0 || value.size > MAX_PCR_COUNT)
    throw schemaError(`pcrs has ${value.size} entries, expected 1..${MAX_PCR_COUNT}`);
  const entries: [number, Uint8Array][] = [];
  for (const [index, pcr] of value) {
    if (typeof index !== 'number' || !Number.isInteger(index) || index < 0 || index >= MAX_PCR_COUNT) {
      throw schemaError(
        `pcrs has index ${typeof index === 'number' ? index : kind(index)}, expected an integer 0..${MAX_PCR_COUNT - 1}`,
      );
    }
    if (!(pcr instanceof Uint8Array)) throw schemaError(`PCR${index} is ${kind(pcr)}, expected a byte string`);
    if (!PCR_LENGTHS.has(pcr.byteLength))
      throw schemaError(`PCR${index} is ${pcr.byteLength} bytes, expected 32, 48 or 64`);
    entries.push([index, new Uint8Array(pcr)]);
  }
  entries.sort((a, b) => a[0] - b[0]);
  return new Map(entries);
}

function readCertificate(value: unknown, name: string): Uint8Array {
  if (!(value instanceof Uint8Array)) throw schemaError(`${name} is ${kind(value)}, expected a byte string`);
  if (value.byteLength === 0 || value.byteLength > MAX_CERTIFICATE_BYTES) {
    throw schemaError(`${name} is ${value.byteLength} bytes, expected 1..${MAX_CERTIFICATE_BYTES}`);
  }
  return new Uint8Array(value);
}

function readCabundle(value: unknown): Uint8Array[] {
  if (!Array.isArray(value)) throw schemaError(`cabundle is ${kind(value)}, expected an array`);
  if (value.length === 0 || value.length > MAX_CABUNDLE_CERTS) {
    throw schemaError(`cabundle has ${value.length} certificates, expected 1..${MAX_CABUNDLE_CERTS}`);
  }
  return value.map((cert: unknown, i) => readCertificate(cert, `cabundle[${i}]`));
}

function readOptionalBytes(map: Map<unknown, unknown>, name: string): Uint8Array | null {
  if (!map.has(name)) return null;
  const value = map.get(name);
  if (value === null) return null;
  if (!(value instanceof Uint8Array)) throw schemaError(`${name} is ${kind(value)}, expected a byte string or null`);
  if (value.byteLength > MAX_OPTIONAL_FIELD_BYTES) {
    throw schemaError(`${name} is ${value.byteLength} bytes, more than the ${MAX_OPTIONAL_FIELD_BYTES} allowed`);
  }
  return new Uint8Array(value);
}

function kind(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'missing';
  if (value instanceof Uint8Array) return 'a byte string';
  if (Array.isArray(value)) return 'an array';
  if (value instanceof Map) return 'a map';
  return `a ${typeof value}`;
}

function schemaError(reason: string): AttestationError {
  return new AttestationError('ERR_ATTESTATION_SCHEMA', `attestation document schema: ${reason}`);
}
