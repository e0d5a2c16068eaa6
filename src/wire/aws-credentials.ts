/**
 * The AWS role-credentials JSON (IMDS's `security-credentials/<role>` answer, which the host's
 * credentials server passes on to the enclave unchanged): AccessKeyId, SecretAccessKey, Token,
 * Expiration. One reading for both ends, so the enclave refuses exactly what the host refuses:
 * role credentials are temporary and only ever valid with their session token.
 */

export interface AwsRoleCredentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  /** When AWS stops accepting them. */
  expiration: Date;
}

/** Why a credentials document was refused: a field missing or empty, or already expired. */
export type AwsCredentialsProblem = 'incomplete' | 'expired';

/**
 * Reads the credentials from a parsed JSON value. Every one of the four fields must be present
 * and non-empty, and Expiration must be a date later than `nowMs`. Extra fields (Code, Type,
 * LastUpdated) are the caller's to judge.
 */
export function parseAwsCredentials(
  value: unknown,
  nowMs: number,
): { credentials: AwsRoleCredentials } | { problem: AwsCredentialsProblem } {
  if (typeof value !== 'object' || value === null) return { problem: 'incomplete' };
  const { AccessKeyId, SecretAccessKey, Token, Expiration } = value as Record<string, unknown>;
  const expiration = new Date(typeof Expiration === 'string' ? Expiration : NaN);
  if (
    !isNonEmptyString(AccessKeyId) ||
    !isNonEmptyString(SecretAccessKey) ||
    !isNonEmptyString(Token) ||
    Number.isNaN(expiration.getTime())
  ) {
    return { problem: 'incomplete' };
  }
  if (expiration.getTime() <= nowMs) return { problem: 'expired' };
  return {
    credentials: { accessKeyId: AccessKeyId, secretAccessKey: SecretAccessKey, sessionToken: Token, expiration },
  };
}

function isNonEmptyString(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0;
}
