/**
 * Every error the runtime raises on purpose is a RuntimeError with a stable `code`,
 * so callers, tests and log readers branch on codes, never on message text.
 */
export class RuntimeError extends Error {
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
