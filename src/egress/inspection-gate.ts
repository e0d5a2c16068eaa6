/**
 * Puts a StreamInspector (stream-inspector.ts) between the app's stream and whatever it is
 * relayed to: a Duplex whose readable side yields only the app's bytes the inspector allowed,
 * and whose writable side writes to the app. Used as the app side of relay() by the transparent
 * listener, the proxy's tunnels and the host relay.
 *
 * Time is bounded twice. `firstDecision(peekMs)` lets a caller that must name the destination
 * (the transparent listener) wait for the first bytes; if none come within peekMs it decides on
 * the IP alone and the server may speak first, but the app's bytes, whenever they come, are still
 * inspected before any is forwarded. And bytes held undecided for `inspectTimeoutMs` (a
 * ClientHello or request head trickled in, or never finished) end in a refusal.
 *
 * Not net/stream-peek.ts: a peek reads a head once and hands the stream on, while the gate sits
 * in the byte path for the whole connection (every later request head or ClientHello is judged
 * too) and releases only bytes already allowed, so nothing undecided can reach the relay.
 */
import { Duplex } from 'node:stream';
import {
  INSPECTION_REASONS,
  StreamInspector,
  type InspectionRefusal,
  type InspectorOptions,
  type Sighting,
  type Verdict,
} from './stream-inspector.js';

/** Default bound on bytes held undecided (egress.inspect_timeout_ms). */
export const INSPECT_TIMEOUT_MS = 10_000;

export interface InspectionGateOptions extends InspectorOptions {
  inspectTimeoutMs: number;
  /** Called once on a refusal, before the gate is destroyed: log it and reset the app. */
  onRefusal: (refusal: InspectionRefusal) => void;
}

export type FirstDecision =
  | { kind: 'decided'; sighting: Sighting; verdict: Verdict }
  /** Nothing arrived within the peek window (or the app closed without sending): decide on the IP. */
  | { kind: 'none' }
  /** Refused (already reported through onRefusal), or the app went away. */
  | { kind: 'closed' };

export class InspectionGate extends Duplex {
  readonly #source: Duplex;
  readonly #inspector: StreamInspector;
  readonly #options: InspectionGateOptions;
  #deadline: NodeJS.Timeout | undefined;
  #received = 0;
  #refused = false;
  #sourceEnded = false;
  /** The source is paused because the consumer is slow: held bytes then wait on it, not on the app. */
  #backpressured = false;
  readonly #waiters = new Set<() => void>();

  /**
   * `initial`: bytes already read from `source` (after a relay header, a CONNECT head), inspected
   * first; unshift() would throw if the source's end had been emitted meanwhile.
   */
  constructor(source: Duplex, options: InspectionGateOptions, initial: Buffer = Buffer.alloc(0)) {
    super({ allowHalfOpen: true });
    this.#source = source;
    this.#options = options;
    this.#inspector = new StreamInspector(options);
    if (initial.length > 0) this.#onData(initial);
    if (source.readableEnded) {
      this.#onEnd();
    } else {
      source.on('data', (chunk: Buffer) => this.#onData(chunk));
      source.once('end', () => this.#onEnd());
    }
    source.on('error', (error) => this.destroy(error));
    source.once('close', () => {
      if (!this.#sourceEnded || !this.writableFinished) this.destroy();
      this.#wake();
    });
    source.resume();
  }

  #onData(chunk: Buffer): void {
    this.#received += chunk.length;
    this.#apply(this.#inspector.push(chunk));
  }

  #onEnd(): void {
    this.#sourceEnded = true;
    this.#apply(this.#inspector.end());
    if (!this.#refused) this.push(null);
    this.#wake();
  }

  /** The first verdict, or 'none' when no byte came within `peekMs`, or 'closed'. */
  firstDecision(peekMs: number): Promise<FirstDecision> {
    return new Promise((resolve) => {
      const check = (peekOver: boolean): boolean => {
        const first = this.#inspector.first;
        let result: FirstDecision | undefined;
        if (this.#refused || this.destroyed) result = { kind: 'closed' };
        else if (first?.verdict.allowed) result = { kind: 'decided', ...first };
        else if (this.#sourceEnded || (this.#received === 0 && peekOver)) result = { kind: 'none' };
        if (result === undefined) return false;
        clearTimeout(timer);
        this.#waiters.delete(wake);
        resolve(result);
        return true;
      };
      const wake = () => void check(false);
      const timer = setTimeout(() => check(true), peekMs);
      if (!check(false)) this.#waiters.add(wake);
    });
  }

  override _read(): void {
    this.#backpressured = false;
    if (!this.#source.destroyed) this.#source.resume();
    this.#armDeadline();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.#source.destroyed) return callback();
    this.#source.write(chunk, () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.#source.end();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    clearTimeout(this.#deadline);
    this.#source.destroy();
    this.#wake();
    callback(error);
  }

  #apply(step: { forward: Buffer[]; refusal?: InspectionRefusal }): void {
    for (const bytes of step.forward) {
      if (!this.push(bytes)) {
        this.#backpressured = true;
        this.#source.pause();
      }
    }
    if (step.refusal) return this.#refuse(step.refusal);
    this.#armDeadline();
    this.#wake();
  }

  /** Run the deadline while bytes are held and more could come; from the first byte held, not refreshed, so a trickle cannot keep a head undecided. */
  #armDeadline(): void {
    if (!this.#inspector.holding || this.#backpressured) {
      clearTimeout(this.#deadline);
      this.#deadline = undefined;
    } else if (this.#deadline === undefined && !this.#refused) {
      this.#deadline = setTimeout(
        () =>
          this.#refuse({
            reason: INSPECTION_REASONS.timeout,
            problem: `bytes undecided after ${this.#options.inspectTimeoutMs} ms`,
          }),
        this.#options.inspectTimeoutMs,
      );
    }
  }

  #refuse(refusal: InspectionRefusal): void {
    if (this.#refused) return;
    this.#refused = true;
    clearTimeout(this.#deadline);
    this.#options.onRefusal(refusal);
    this.#wake();
    this.destroy();
  }

  #wake(): void {
    for (const wake of [...this.#waiters]) wake();
  }
}
