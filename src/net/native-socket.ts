/**
 * A stream.Duplex over an AF_VSOCK or AF_UNIX socket of the native addon, usable wherever a
 * net.Socket is piped: backpressure both ways, half-close, one close of the fd.
 */
import { Duplex } from 'node:stream';
import { RuntimeError } from '../core/errors.js';
import {
  NativeEvent,
  closeHandle,
  errnoError,
  formatNativeAddress,
  handleAddress,
  negErrno,
  openSocketHandle,
  validateNativeAddress,
  type NativeAddress,
  type NativeHandle,
} from '../native/native-binding.js';

export interface NativeSocketOptions {
  /** Keep the write side open after the peer's FIN (default true): end() is then up to the caller. */
  allowHalfOpen?: boolean;
  readableHighWaterMark?: number;
  writableHighWaterMark?: number;
}

export interface ConnectNativeOptions extends NativeSocketOptions {
  /** Bound on the whole connect (default 10 s, at most 5 min); NativeError ETIMEDOUT after it. */
  timeoutMs?: number;
}

export const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;
export const MAX_CONNECT_TIMEOUT_MS = 300_000;

const ENOTCONN = negErrno('ENOTCONN');
const ECONNRESET = negErrno('ECONNRESET');
const ECANCELED = negErrno('ECANCELED');

type WriteCallback = (error?: Error | null) => void;

export class NativeSocket extends Duplex {
  /** The peer: `{family:'vsock', cid, port}` or `{family:'unix', path}` (path '' for an unnamed client). */
  readonly remoteAddress: NativeAddress | undefined;
  readonly localAddress: NativeAddress | undefined;

  #handle: NativeHandle | null;
  #reading = false;
  #bytesRead = 0;
  #bytesWritten = 0;
  #pendingWrite: { callback: WriteCallback; bytes: number } | null = null;
  #onClosed: (() => void) | null = null;

  /**
   * Takes ownership of a connected Handle. Applications get sockets from connectNative() or a
   * NativeServer's 'connection' event rather than calling this.
   */
  constructor(handle: NativeHandle, options: NativeSocketOptions = {}) {
    super({
      allowHalfOpen: options.allowHalfOpen ?? true,
      ...(options.readableHighWaterMark === undefined ? {} : { readableHighWaterMark: options.readableHighWaterMark }),
      ...(options.writableHighWaterMark === undefined ? {} : { writableHighWaterMark: options.writableHighWaterMark }),
    });
    this.#handle = handle;
    this.remoteAddress = handleAddress(handle.getpeername());
    this.localAddress = handleAddress(handle.getsockname());
    handle.setCallback((type, a, b) => this.#onNative(type, a, b));
  }

  /** Bytes handed to the reader so far. */
  get bytesRead(): number {
    return this.#bytesRead;
  }

  /** Bytes the kernel accepted so far (not bytes merely queued in this stream). */
  get bytesWritten(): number {
    return this.#bytesWritten;
  }

  /** The socket's fd, or -1 once destroyed. */
  get fd(): number {
    return this.#handle?.fd ?? -1;
  }

  /** Let the process exit even while this socket is reading or writing (like net.Socket#unref). */
  unref(): this {
    this.#handle?.unref();
    return this;
  }

  ref(): this {
    this.#handle?.ref();
    return this;
  }

  override _read(): void {
    if (this.#handle === null || this.#reading) return;
    const status = this.#handle.readStart();
    if (status < 0) {
      this.destroy(errnoError(status, 'read'));
      return;
    }
    this.#reading = true;
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: WriteCallback): void {
    this.#send([chunk], callback);
  }

  override _writev(chunks: Array<{ chunk: Buffer }>, callback: WriteCallback): void {
    this.#send(
      chunks.map((entry) => entry.chunk),
      callback,
    );
  }

  /** end(): FIN to the peer while this side can still read (half-close). */
  override _final(callback: (error?: Error | null) => void): void {
    const status = this.#handle === null ? 0 : this.#handle.shutdown();
    // The peer may be gone already; there is nothing left to shut down then, as net.Socket treats it.
    if (status < 0 && status !== ENOTCONN) {
      callback(errnoError(status, 'shutdown'));
      return;
    }
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    const handle = this.#handle;
    if (handle === null) {
      callback(error);
      return;
    }
    this.#handle = null;
    this.#reading = false;
    // 'close' waits for the native close, so it means the fd really is closed.
    this.#onClosed = () => callback(error);
    handle.close();
  }

  #send(chunks: Buffer[], callback: WriteCallback): void {
    const handle = this.#handle;
    if (handle === null) {
      callback(new RuntimeError('ERR_STREAM_DESTROYED', 'write after the socket was destroyed'));
      return;
    }
    let bytes = 0;
    for (const chunk of chunks) bytes += chunk.length;
    const status = handle.writev(chunks);
    if (status === 0) {
      this.#bytesWritten += bytes;
      callback();
    } else if (status === 1) {
      this.#pendingWrite = { callback, bytes };
    } else {
      callback(errnoError(status, 'write'));
    }
  }

  #onNative(type: number, a: unknown, b: unknown): void {
    switch (type) {
      case NativeEvent.Read: {
        const chunk = a as Buffer;
        this.#bytesRead += chunk.length;
        // Backpressure: stop polling until the consumer asks again through _read().
        if (!this.push(chunk) && this.#handle !== null && this.#reading) {
          this.#reading = false;
          this.#handle.readStop();
        }
        return;
      }
      case NativeEvent.Eof:
        this.#reading = false;
        this.push(null);
        return;
      case NativeEvent.Error:
        this.#reading = false;
        this.destroy(errnoError(a as number, b as string));
        return;
      case NativeEvent.Write: {
        const pending = this.#pendingWrite;
        this.#pendingWrite = null;
        if (pending === null) return;
        if (a === 0) {
          this.#bytesWritten += pending.bytes;
          pending.callback();
        } else {
          pending.callback(errnoError(a as number, 'write'));
        }
        return;
      }
      case NativeEvent.Close: {
        // A write the kernel never took must not leave its callback (and the ones queued behind it) hanging.
        const pending = this.#pendingWrite;
        this.#pendingWrite = null;
        const onClosed = this.#onClosed;
        this.#onClosed = null;
        pending?.callback(errnoError(ECANCELED, 'write'));
        onClosed?.();
        return;
      }
      default:
        return;
    }
  }
}

/**
 * Connects to a vsock or unix listener. Rejects with a NativeError (ECONNREFUSED, ENOENT,
 * ETIMEDOUT, ...); on failure the socket's fd is closed before the promise settles.
 */
export function connectNative(address: NativeAddress, options: ConnectNativeOptions = {}): Promise<NativeSocket> {
  validateNativeAddress(address);
  const timeoutMs = options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS;
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0 || timeoutMs > MAX_CONNECT_TIMEOUT_MS) {
    throw new RuntimeError(
      'ERR_NATIVE_ARGUMENT',
      `connect timeoutMs must be in (0, ${MAX_CONNECT_TIMEOUT_MS}], got ${timeoutMs}`,
    );
  }
  const handle = openSocketHandle(address.family);
  const where = formatNativeAddress(address);

  return new Promise((resolve, reject) => {
    let settled = false;
    const settle = (status: number): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (status === 0) {
        resolve(new NativeSocket(handle, options));
        return;
      }
      const error = connectError(status, address, where);
      closeHandle(handle).then(() => reject(error), reject);
    };
    const timer = setTimeout(() => settle(negErrno('ETIMEDOUT')), timeoutMs);
    handle.setCallback((type, a) => {
      if (type === NativeEvent.Connect) settle(a as number);
    });
    const status = handle.connect(address);
    if (status !== 1) settle(status);
  });
}

/**
 * A failed connect. A vsock connect to a port nobody listens on is reset (ECONNRESET), where TCP and unix
 * sockets say ECONNREFUSED: the message says what that means, the code stays the kernel's.
 */
function connectError(status: number, address: NativeAddress, where: string): Error {
  const error = errnoError(status, 'connect', where);
  if (address.family === 'vsock' && status === ECONNRESET) {
    error.message = `connect ECONNRESET ${where}: nothing listens on ${where} (a vsock connect to an unbound port is reset, not refused)`;
  }
  return error;
}
