import { RuntimeError } from '../core/errors.js';

/**
 * A request the provisioner refuses. `status` and `code` go to the client as `{error, code}`;
 * verification failures keep the verifier's ERR_ATTESTATION_* code, the rest are ERR_PROVISIONER_*.
 */
export class ProvisionerRefusal extends RuntimeError {
  readonly status: number;

  constructor(status: number, code: string, message: string, options?: { cause?: unknown }) {
    super(code, message.replace(/\s+/g, ' ').trim(), options);
    this.status = status;
  }
}

/** Why the enclave has no provisioned CA: refused (with the provisioner's reason), unreachable, or a bad answer. */
export type ProvisioningErrorCode =
  'ERR_PROVISIONING_REFUSED' | 'ERR_PROVISIONING_UNREACHABLE' | 'ERR_PROVISIONING_RESPONSE';

/**
 * The enclave side of a failed provisioning. On a refusal, `remoteCode` and `status` are the
 * provisioner's, and the message carries its reason word for word.
 */
export class ProvisioningError extends RuntimeError {
  declare readonly code: ProvisioningErrorCode;
  readonly remoteCode: string | undefined;
  readonly status: number | undefined;

  constructor(
    code: ProvisioningErrorCode,
    message: string,
    details: { remoteCode?: string; status?: number; cause?: unknown } = {},
  ) {
    super(code, message, details.cause === undefined ? undefined : { cause: details.cause });
    this.remoteCode = details.remoteCode;
    this.status = details.status;
  }
}
