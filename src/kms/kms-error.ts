import { RuntimeError } from '../core/errors.js';

export type KmsErrorCode =
  /** KMS answered with an error; `kmsCode` is its exception name (AccessDeniedException, ...). */
  | 'ERR_KMS_REQUEST'
  /** No answer: connection refused or reset, the proxy refused, or the timeout passed. */
  | 'ERR_KMS_UNREACHABLE'
  /** An answer that is not what the KMS JSON protocol promises (too big, not JSON, fields missing). */
  | 'ERR_KMS_RESPONSE'
  /** Region, endpoint or credentials are missing or unusable. */
  | 'ERR_KMS_CONFIG'
  /** kms.credentials = "host": the parent's credentials server could not be reached or gave no usable credentials. */
  | 'ERR_KMS_CREDENTIALS';

/** Longest KMS message kept: enough to read the reason, not enough to flood a log line. */
const MAX_MESSAGE_CHARS = 300;

/** A KMS call that failed. Messages carry KMS's reason and codes, never request bodies or credentials. */
export class KmsError extends RuntimeError {
  declare readonly code: KmsErrorCode;
  /** KMS's exception name, for ERR_KMS_REQUEST. */
  readonly kmsCode: string | undefined;
  /** The HTTP status, when there was an answer. */
  readonly status: number | undefined;

  constructor(
    code: KmsErrorCode,
    message: string,
    options?: { cause?: unknown; kmsCode?: string | undefined; status?: number | undefined },
  ) {
    super(code, clean(message), options?.cause === undefined ? undefined : { cause: options.cause });
    this.kmsCode = options?.kmsCode;
    this.status = options?.status;
  }
}

/** One line, printable, bounded: KMS messages are text from the network. */
function clean(message: string): string {
  const line = message.replace(/[\u0000-\u001f\u007f]+/g, ' ').trim();
  return line.length > MAX_MESSAGE_CHARS ? `${line.slice(0, MAX_MESSAGE_CHARS - 1)}…` : line;
}
