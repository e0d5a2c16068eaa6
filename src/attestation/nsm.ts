import { RuntimeError } from '../core/errors.js';

/** Real NSM output caps each of these fields at 1024 bytes; we enforce the same everywhere. */
export const NSM_MAX_FIELD_BYTES = 1024;

/** What an attestation document may carry besides the PCRs: all optional, each at most 1024 bytes. */
export interface AttestationRequest {
  userData?: Uint8Array | undefined;
  nonce?: Uint8Array | undefined;
  publicKey?: Uint8Array | undefined;
}

export interface PcrReading {
  locked: boolean;
  data: Uint8Array;
}

/**
 * The Nitro Secure Module as the runtime sees it: the real /dev/nsm device in `run`,
 * the simulated one in `dev` and tests. Both return untagged COSE_Sign1 bytes.
 */
export interface Nsm {
  readonly kind: 'device' | 'simulated';
  attest(request: AttestationRequest): Promise<Uint8Array>;
  describePcr(index: number): Promise<PcrReading>;
  getRandom(): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Fields of AttestationRequest in the names the NSM API and documents use. */
export const ATTESTATION_FIELDS = [
  ['nonce', 'nonce'],
  ['userData', 'user_data'],
  ['publicKey', 'public_key'],
] as const;

/** An NSM operation failed; `code` says why (ERR_NSM_*), so callers map it to a status without parsing text. */
export class NsmError extends RuntimeError {
  constructor(code: `ERR_NSM_${string}`, message: string, options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

/** Rejects a request the real NSM would reject (InputTooLarge), so the simulator and the device agree. */
export function assertAttestationRequest(request: AttestationRequest): void {
  for (const [key, name] of ATTESTATION_FIELDS) {
    const value = request[key];
    if (value !== undefined && value.byteLength > NSM_MAX_FIELD_BYTES) {
      throw new NsmError(
        'ERR_NSM_INPUT_TOO_LARGE',
        `${name} is ${value.byteLength} bytes; the NSM accepts at most ${NSM_MAX_FIELD_BYTES}`,
      );
    }
  }
}
