import type { Duplex } from 'node:stream';
import {
  FleetFrameError,
  FrameReader,
  FRAME,
  frameName,
  encodeFrame,
  type Frame,
  type FrameType,
} from '../wire/fleet-message.js';
import { FleetError, type FleetErrorCode } from './fleet-error.js';

const MAX_REFUSAL_MESSAGE_CHARS = 512;

/**
 * One fleet connection as frames: `next` waits for the next frame of an expected type, with the
 * whole exchange under one deadline, so a peer that trickles bytes cannot hold it longer. A REFUSAL
 * from the peer becomes ERR_FLEET_REFUSED carrying the peer's code; any other surprise is ERR_FLEET_FRAME.
 */
export class FleetChannel {
  readonly socket: Duplex;
  readonly #reader = new FrameReader();
  readonly #queue: Frame[] = [];
  #waiter: { resolve: () => void } | undefined;
  #failure: Error | undefined;
  readonly #deadline: NodeJS.Timeout;
  readonly #peer: string;

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
    socket.on('data', (chunk: Buffer) => {
      if (this.#failure) return;
      try {
        this.#queue.push(...this.#reader.push(chunk));
      } catch (error) {
        this.#fail(error as Error);
        return;
      }
      this.#wake();
    });
    socket.once('error', (error) =>
      this.#fail(new FleetError('ERR_FLEET_UNREACHABLE', `the connection to ${peer} failed: ${error.message}`)),
    );
    socket.once('close', () =>
      this.#fail(new FleetError('ERR_FLEET_UNREACHABLE', `${peer} closed the connection mid-exchange`)),
    );
    // A socket handed on by release() was paused explicitly, and a new 'data' listener does not undo that.
    socket.resume();
  }

  /** The next frame, which must be of `type` (a REFUSAL is turned into the error it carries). */
  async next(type: FrameType): Promise<Buffer[]> {
    return (await this.nextOf([type])).fields;
  }

  /** The next frame, which must be of one of `types`. */
  async nextOf(types: readonly FrameType[]): Promise<Frame> {
    for (;;) {
      const frame = this.#queue.shift();
      if (frame) {
        if (types.includes(frame.type)) return frame;
        if (frame.type === FRAME.REFUSAL) {
          const code = frame.fields[0]!.toString('utf8').slice(0, 64);
          const message = frame.fields[1]!.toString('utf8').slice(0, MAX_REFUSAL_MESSAGE_CHARS);
          throw new FleetError('ERR_FLEET_REFUSED', `${this.#peer} refused the exchange (${code}): ${message}`, {
            remoteCode: code,
          });
        }
        throw new FleetFrameError(
          `expected a ${types.map(frameName).join(' or ')} frame from ${this.#peer}, got ${frameName(frame.type)}`,
        );
      }
      if (this.#failure) throw this.#failure;
      await new Promise<void>((resolve) => (this.#waiter = { resolve }));
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
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1_000).unref();
  }

  /** Stops the deadline without closing (a relay hands the socket on). */
  release(): Buffer {
    clearTimeout(this.#deadline);
    // Paused first: a flowing stream with no 'data' listener would drop what arrives next.
    this.socket.pause();
    this.socket.removeAllListeners('data');
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
