/**
 * Every error the runtime raises on purpose is a RuntimeError with a stable `code`,
 * so callers, tests and log readers branch on codes, never on message text.
 */
export class RuntimeError extends Error {
  /** An ERR_* code of src/core/error-codes.ts, or the errno name (`ETIMEDOUT`) of a system call that failed. */
  readonly code: string;

  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/** A bad command line, config file or address: the user has to change something. */
export class ConfigError extends RuntimeError {
  /** One line per problem, each naming the key, the bad value and what is allowed. */
  readonly problems: readonly string[];

  constructor(problems: readonly string[], source = 'configuration') {
    super('ERR_CONFIG', `${source} is invalid:\n  - ${problems.join('\n  - ')}`);
    this.problems = problems;
  }
}

/**
 * The `code` of anything thrown: a RuntimeError's ERR_*, Node's errno (`ENOENT`) or ERR_* code;
 * undefined when there is none (a number, as child_process exit codes are, is not a code).
 */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' ? code : undefined;
}
