import { RuntimeError } from '../core/errors.js';

/** Every way a boot secret can fail; callers and log readers branch on these, never on messages. */
export type SecretErrorCode =
  /** The envelope is not a CMS EnvelopedData we accept (shape, algorithms, sizes). */
  | 'ERR_SECRET_CMS'
  /** The envelope is well formed but does not open with this enclave's key: one code for every cause. */
  | 'ERR_SECRET_DECRYPT'
  /** The plaintext cannot be an environment variable value (not UTF-8, or a NUL byte). */
  | 'ERR_SECRET_VALUE'
  /** The ciphertext file of a secret could not be read. */
  | 'ERR_SECRET_FILE'
  /** A required secret could not be loaded; `secret` names it and `cause` says why. */
  | 'ERR_SECRET_LOAD';

/**
 * A secret that could not be opened or loaded. Messages name secrets and causes, never values,
 * plaintext or key material.
 */
export class SecretError extends RuntimeError {
  declare readonly code: SecretErrorCode;
  /** The `name` of the [[secrets]] entry, when the error is about one. */
  readonly secret: string | undefined;

  constructor(code: SecretErrorCode, message: string, options?: { cause?: unknown; secret?: string }) {
    super(code, message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.secret = options?.secret;
  }
}
