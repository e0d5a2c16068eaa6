/**
 * The run's wall-clock bound. Each section gets a share; a section out of time stops taking rounds
 * (keeping those it has) rather than letting a slow, shared machine stretch the run past its limit.
 */
export class Budget {
  readonly #endsAt: number;

  constructor(totalMs: number) {
    this.#endsAt = Date.now() + totalMs;
  }

  get leftMs(): number {
    return this.#endsAt - Date.now();
  }

  /** A deadline for one section: `shareMs` from now, never past the run's own end. */
  section(shareMs: number): Deadline {
    return new Deadline(Math.min(Date.now() + shareMs, this.#endsAt));
  }
}

export class Deadline {
  constructor(readonly at: number) {}

  get passed(): boolean {
    return Date.now() >= this.at;
  }

  get leftMs(): number {
    return Math.max(0, this.at - Date.now());
  }
}

/**
 * Round numbers 0 (the warm-up) to `rounds`, stopping early, with a log line, once the deadline has
 * passed: the rounds already taken are kept.
 */
export function* roundsWithin(options: {
  rounds: number;
  deadline: Deadline;
  log: (line: string) => void;
}): Generator<number> {
  for (let round = 0; round <= options.rounds; round++) {
    if (options.deadline.passed) {
      options.log(`  out of time after ${round - 1} rounds; keeping those`);
      return;
    }
    yield round;
  }
}

/** Rejects with `what timed out` after `ms`; the caller cleans up whatever was in flight. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
