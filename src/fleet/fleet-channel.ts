import type { Duplex } from 'node:stream';
import { FleetFrameError, FrameReader, FRAME, encodeFrame, type Frame, type FrameType } from '../wire/fleet-message.js';
import { FleetError, type FleetErrorCode } from './fleet-error.js';

const MAX_REFUSAL_MESSAGE_CHARS = 512;

/**
 * One fleet connection as frames, in lock-step: `next` parses only the one frame the current step
 * expects, and the socket stays paused between steps, so a peer that streams frames nobody asked
 * for fills its own send buffer, not this enclave's heap; an unexpected frame is refused from its
 * header. The whole exchange runs under one deadline, so a peer that trickles bytes cannot hold it
 * longer. A REFUSAL from the peer becomes ERR_FLEET_REFUSED carrying the peer's code; any other
 * surprise is ERR_FLEET_FRAME.
 */
export class FleetChannel {
  readonly socket: Duplex;
  readonly #reader = new FrameReader();
  #waiter: { resolve: () => void } | undefined;
  #failure: Error | undefined;
  readonly #deadline: NodeJS.Timeout;
  readonly #peer: string;
  readonly #onData = (chunk: Buffer): void => {
    if (this.#failure) return;
    this.#reader.append(chunk);
    // Nothing is read ahead of the step that wants it.
    this.socket.pause();
    this.#wake();
  };

  constructor(socket: Duplex, timeoutMs: number, peer: string) {
    this.socket = socket;
    this.#peer = peer;
    this.#deadline = setTimeout(
      () =>
        this.#fail(
          new FleetError('ERR_FLEET_TIMEOUT', `the exchange with ${peer} did not finish within ${timeoutMs} ms`),
        ),
      timeoutMs,
    );
    socket.on('data', this.#onData);
    socket.once('error', (error) =>
      this.#fail(new FleetError('ERR_FLEET_UNREACHABLE', `the connection to ${peer} failed: ${error.message}`)),
    );
    socket.once('close', () =>
      this.#fail(new FleetError('ERR_FLEET_UNREACHABLE', `${peer} closed the connection mid-exchange`)),
    );
    // Paused until a step asks for a frame (a socket handed on by release() is paused already).
    socket.pause();
  }

  /** Bytes received and not yet taken as a frame (bounded by one frame and one chunk). */
  get buffered(): number {
    return this.#reader.buffered;
  }

  /** The next frame, which must be of `type` (a REFUSAL is turned into the error it carries). */
  async next(type: FrameType): Promise<Buffer[]> {
    return (await this.nextOf([type])).fields;
  }

  /** The next frame, which must be of one of `types`. */
  async nextOf(types: readonly FrameType[]): Promise<Frame> {
    for (;;) {
      let frame: Frame | undefined;
      if (!this.#failure) {
        try {
          frame = this.#reader.take(types);
        } catch (error) {
          const failure =
            error instanceof FleetFrameError
              ? new FleetFrameError(`${(error as Error).message} from ${this.#peer}`)
              : error;
          this.#fail(failure as Error);
          throw failure;
        }
      }
      if (frame) {
        if (types.includes(frame.type)) return frame;
        const code = frame.fields[0]!.toString('utf8').slice(0, 64);
        const message = frame.fields[1]!.toString('utf8').slice(0, MAX_REFUSAL_MESSAGE_CHARS);
        throw new FleetError('ERR_FLEET_REFUSED', `${this.#peer} refused the exchange (${code}): ${message}`, {
          remoteCode: code,
        });
      }
      if (this.#failure) throw this.#failure;
      const waiting = new Promise<void>((resolve) => (this.#waiter = { resolve }));
      this.socket.resume();
      await waiting;
    }
  }

  send(type: FrameType, fields: readonly Uint8Array[]): Buffer {
    const bytes = encodeFrame(type, fields);
    this.socket.write(bytes);
    return bytes;
  }

  /** Tells the peer why, so both sides log the same code; then closes. */
  refuse(code: FleetErrorCode | string, message: string): void {
    if (!this.socket.destroyed && this.socket.writable) {
      try {
        this.socket.write(
          encodeFrame(FRAME.REFUSAL, [
            Buffer.from(code, 'utf8'),
            Buffer.from(message.slice(0, MAX_REFUSAL_MESSAGE_CHARS), 'utf8'),
          ]),
        );
      } catch {
        // The refusal is a courtesy; the connection closes either way.
      }
    }
    this.close();
  }

  /** Stops the deadline; ends the socket once written. */
  close(): void {
    clearTimeout(this.#deadline);
    this.#failure ??= new FleetError('ERR_FLEET_UNREACHABLE', `the exchange with ${this.#peer} is closed`);
    this.socket.off('data', this.#onData);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }

  /** Stops the deadline without closing (a relay hands the socket on). */
  release(): Buffer {
    clearTimeout(this.#deadline);
    // Paused first: a flowing stream with no 'data' listener would drop what arrives next.
    this.socket.pause();
    this.socket.off('data', this.#onData);
    return this.#reader.rest();
  }

  #fail(error: Error): void {
    if (this.#failure) return;
    this.#failure = error;
    clearTimeout(this.#deadline);
    if (error instanceof FleetError && error.code === 'ERR_FLEET_TIMEOUT') this.socket.destroy();
    if (error instanceof FleetFrameError) this.refuse(error.code, error.message);
    this.#wake();
  }

  #wake(): void {
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.resolve();
  }
}
