import { RuntimeError } from '../core/errors.js';

/** The codes one side of an exchange sends the other in a REFUSAL: what it found wrong in what it received. */
export type FleetRefusalCode =
  | 'ERR_FLEET_ATTESTATION'
  | 'ERR_FLEET_PCR'
  | 'ERR_FLEET_DEBUG'
  | 'ERR_FLEET_NONCE'
  | 'ERR_FLEET_BINDING'
  | 'ERR_FLEET_DECRYPT'
  | 'ERR_FLEET_FRAME'
  | 'ERR_FLEET_BUSY';

/** Why a fleet exchange or a fleet part failed; each side of a refused exchange logs the same code. */
export type FleetErrorCode =
  | FleetRefusalCode
  | 'ERR_FLEET_TIMEOUT'
  | 'ERR_FLEET_REFUSED'
  | 'ERR_FLEET_UNREACHABLE'
  | 'ERR_FLEET_RELAY'
  | 'ERR_FLEET_STATE'
  | 'ERR_FLEET_LISTEN'
  | 'ERR_FLEET_SELF';

/**
 * A fleet failure. On ERR_FLEET_REFUSED (the peer refused us), `remoteCode` is the peer's own code,
 * so "the peer has other PCRs" reads the same on both sides.
 */
export class FleetError extends RuntimeError {
  declare readonly code: FleetErrorCode;
  readonly remoteCode: string | undefined;

  constructor(code: FleetErrorCode, message: string, details: { remoteCode?: string; cause?: unknown } = {}) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    this.remoteCode = details.remoteCode;
  }
}
