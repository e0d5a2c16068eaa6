/**
 * One contract for the runtime's long-running parts (listeners, relays, renewers, the NSM), and
 * one way to stop them: the closer stack. The composition roots (runtime.ts, egress-service.ts,
 * host-service.ts) push each part as it starts; stopping goes in reverse, and a part that fails
 * to stop is reported without keeping the parts after it open.
 */
import { channels, type StopFailure } from './diagnostics.js';
import { errorCode } from './errors.js';
import type { Logger } from './log.js';

/** A part's own view of its health, for GET /health. */
export interface PartHealth {
  ok: boolean;
  detail?: string | undefined;
}

/** A started part. Parts are made by an async `start(options)` (Ingress.start, startEgress, ...). */
export interface Part {
  /** Names the part in logs ("ingress", "egress relay"). */
  readonly name: string;
  /** Stop accepting; let what is in flight finish for up to `graceMs`; then cut the rest. */
  stop(graceMs: number): Promise<void>;
  health?(): PartHealth;
}

/** How a part is stopped when it predates the contract: `() => relay.close()`. */
export type Stop = (graceMs: number) => Promise<void> | void;

export type { StopFailure };

/** Parts in start order, stopped in reverse; push as each part starts, so a failed start stops exactly what had started. */
export class CloserStack {
  readonly #entries: Array<{ name: string; stop: Stop }> = [];
  readonly #logger: Logger | undefined;
  readonly #what: string;

  /** `what` names the whole in the log line of a failed stop ("runtime", "egress", "host"). */
  constructor(logger?: Logger, what = 'runtime') {
    this.#logger = logger;
    this.#what = what;
  }

  /** Adds how to stop a part that has just started. */
  push(stop: Stop, name = `part ${this.#entries.length + 1}`): void {
    this.#entries.push({ name, stop });
  }

  /** Adds a part of the contract; returns it, for `const x = stack.add(await X.start(...))`. */
  add<P extends Part>(part: P): P {
    this.push((graceMs) => part.stop(graceMs), part.name);
    return part;
  }

  get size(): number {
    return this.#entries.length;
  }

  /**
   * Stops every part, last started first, each with `graceMs`. A failing stop is logged and
   * published on the stopFailed channel, and the next part is stopped all the same. Resolves
   * (never rejects) with the failures; the stack is empty afterwards, so a second call does nothing.
   */
  async closeAll(graceMs = 0): Promise<StopFailure[]> {
    const failures: StopFailure[] = [];
    for (const { name, stop } of this.#entries.splice(0).reverse()) {
      try {
        await stop(graceMs);
      } catch (error) {
        failures.push({ part: name, error });
        this.#logger?.error(
          {
            part: name,
            err: { code: errorCode(error), message: error instanceof Error ? error.message : String(error) },
          },
          `error while stopping ${this.#what}`,
        );
        channels.stopFailed.publish({ part: name, error });
      }
    }
    return failures;
  }
}
