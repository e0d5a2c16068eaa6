import { AttestationError } from '../verify/attestation-error.js';
import { MAX_EXPECTED_PCR_SETS, type AttestationPolicy } from '../attestation/attestation-policy.js';

/** One accepted set of PCR values: index → value as hex text or bytes. */
export type PcrSet = Readonly<Record<number | string, string | Uint8Array>>;

/**
 * The policy options of `enclave-runtime/client` and `enclave-runtime/browser` (SPEC "Client
 * library"). No Node built-ins: both builds normalise them here, so they accept the same input.
 */
export interface ClientPolicyOptions {
  /** One accepted PCR set, or a list of them (rolling deploys: old and new image both accepted). */
  pcrs?: PcrSet | readonly PcrSet[];
  /** The nonce the document must carry (bytes or hex). */
  nonce?: Uint8Array | string;
  /** The user_data the document must carry (bytes or hex). */
  userData?: Uint8Array | string;
  /** The public_key the document must carry (bytes or hex). */
  publicKey?: Uint8Array | string;
  /** Accept debug-mode enclaves (PCR0/1/2 all zero), whose memory the parent can read. Default false. */
  allowDebug?: boolean;
  /** Verification time; default now. */
  at?: Date;
}

const HEX = /^(?:[0-9a-fA-F]{2})*$/;
const MAX_HEX_CHARS = 2 * 1024;

/** The verifier's policy from the client options; a malformed option throws RangeError or TypeError, never a silent pass. */
export function policyFromOptions(options: ClientPolicyOptions): AttestationPolicy & { at?: Date } {
  const policy: AttestationPolicy & { at?: Date } = {};
  if (options.pcrs !== undefined) policy.expectedPcrs = pcrSets(options.pcrs);
  if (options.nonce !== undefined) policy.nonce = bytesOption(options.nonce, 'nonce');
  if (options.userData !== undefined) policy.userData = bytesOption(options.userData, 'userData');
  if (options.publicKey !== undefined) policy.publicKey = bytesOption(options.publicKey, 'publicKey');
  if (options.allowDebug !== undefined) policy.allowDebug = options.allowDebug === true;
  if (options.at !== undefined) {
    if (!(options.at instanceof Date) || !Number.isFinite(options.at.getTime()))
      throw new RangeError('options.at must be a valid Date');
    policy.at = options.at;
  }
  return policy;
}

function pcrSets(input: PcrSet | readonly PcrSet[]): Array<Record<number, Uint8Array>> {
  const sets = Array.isArray(input) ? (input as readonly PcrSet[]) : [input as PcrSet];
  if (sets.length > MAX_EXPECTED_PCR_SETS) {
    throw new AttestationError(
      'ERR_ATTESTATION_PCR',
      `pcrs has ${sets.length} sets, at most ${MAX_EXPECTED_PCR_SETS} are accepted`,
    );
  }
  return sets.map((set, i) => {
    if (set === null || typeof set !== 'object') throw new TypeError(`pcrs[${i}] must be an object of index → value`);
    const out: Record<number, Uint8Array> = {};
    for (const [key, value] of Object.entries(set)) {
      const index = Number(key);
      if (!/^\d{1,2}$/.test(key) || index > 31)
        throw new RangeError(`pcrs[${i}]: ${JSON.stringify(key.slice(0, 16))} is not a PCR index 0..31`);
      const bytes = bytesOption(value, `pcrs[${i}][${index}]`);
      if (![32, 48, 64].includes(bytes.byteLength))
        throw new RangeError(`pcrs[${i}][${index}] is ${bytes.byteLength} bytes, a PCR is 32, 48 or 64`);
      out[index] = bytes;
    }
    return out;
  });
}

/** Bytes from a Uint8Array (copied) or hex text (an optional 0x prefix, either case). */
export function bytesOption(value: Uint8Array | string, name: string): Uint8Array {
  if (value instanceof Uint8Array) return new Uint8Array(value);
  if (typeof value !== 'string') throw new TypeError(`${name} must be bytes or hex text`);
  const hex = value.startsWith('0x') ? value.slice(2) : value;
  if (hex.length > MAX_HEX_CHARS || !HEX.test(hex))
    throw new RangeError(`${name} is not hex of even length (at most ${MAX_HEX_CHARS / 2} bytes)`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** Lowercase hex, without Buffer. */
export function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}
