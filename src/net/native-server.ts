/**
 * A listener for AF_VSOCK (`vsock:any:7777`) or AF_UNIX addresses, handing out NativeSockets.
 * Like net.Server it keeps the process alive while listening, unless unref()'ed.
 */
import { EventEmitter } from 'node:events';
import { lstatSync, statSync, unlinkSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import { errorCode, RuntimeError } from '../core/errors.js';
import {
  NativeEvent,
  adoptSocketHandle,
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
import { NativeSocket, type NativeSocketOptions } from './native-socket.js';

export type NativeServerOptions = NativeSocketOptions;

export const DEFAULT_BACKLOG = 511;
export const MAX_BACKLOG = 65535;
/** How long accepting pauses when the process is out of fds (EMFILE) before trying again. */
export const ACCEPT_RETRY_MS = 100;
/** Bound on the probe that decides whether an existing unix socket file is stale. */
const STALE_PROBE_TIMEOUT_MS = 1000;

const EADDRINUSE = negErrno('EADDRINUSE');

type State = 'idle' | 'binding' | 'listening';

/**
 * Events: 'listening', 'connection' (NativeSocket), 'error' (NativeError from the listener itself),
 * 'acceptError' (NativeError EMFILE/ENFILE/...: accepting pauses for ACCEPT_RETRY_MS; not fatal), 'close'.
 */
export class NativeServer extends EventEmitter {
  readonly #socketOptions: NativeSocketOptions;
  #state: State = 'idle';
  #handle: NativeHandle | null = null;
  #address: NativeAddress | null = null;
  #family: NativeAddress['family'] = 'unix';
  #unixFile: { path: string; dev: number; ino: number } | null = null;
  #pendingListen: Promise<void> | null = null;
  #closing: Promise<void> | null = null;
  #acceptTimer: NodeJS.Timeout | null = null;
  #referenced = true;

  constructor(options: NativeServerOptions = {}) {
    super();
    this.#socketOptions = { ...options };
  }

  get listening(): boolean {
    return this.#state === 'listening';
  }

  /**
   * Binds and listens; resolves once listening, rejects with a NativeError (EADDRINUSE, EACCES,
   * EAFNOSUPPORT when the kernel has no vsock, ...). An existing unix socket file is replaced only
   * if it is a socket nobody listens on.
   */
  listen(address: NativeAddress, backlog: number = DEFAULT_BACKLOG): Promise<void> {
    validateNativeAddress(address);
    if (!Number.isInteger(backlog) || backlog < 1 || backlog > MAX_BACKLOG) {
      throw new RuntimeError('ERR_NATIVE_ARGUMENT', `backlog must be an integer in 1..${MAX_BACKLOG}, got ${backlog}`);
    }
    if (this.#state !== 'idle' || this.#closing !== null) {
      throw new RuntimeError('ERR_SERVER_ALREADY_LISTEN', 'this NativeServer is already listening; close() it first');
    }
    this.#state = 'binding';
    const attempt = this.#listen(address, backlog);
    this.#pendingListen = attempt.catch(() => undefined);
    return attempt;
  }

  async #listen(address: NativeAddress, backlog: number): Promise<void> {
    const where = formatNativeAddress(address);
    let handle: NativeHandle;
    try {
      handle = openSocketHandle(address.family);
    } catch (error) {
      this.#state = 'idle';
      throw error;
    }
    try {
      let status = handle.bind(address);
      if (status === EADDRINUSE && address.family === 'unix' && (await isStaleUnixSocket(address.path))) {
        removeFile(address.path);
        status = handle.bind(address);
      }
      if (status < 0) throw errnoError(status, 'bind', where);
      status = handle.listen(backlog);
      if (status < 0) throw errnoError(status, 'listen', where);
    } catch (error) {
      await closeHandle(handle);
      this.#state = 'idle';
      throw error;
    }

    this.#handle = handle;
    this.#family = address.family;
    this.#address = handleAddress(handle.getsockname()) ?? address;
    this.#unixFile = address.family === 'unix' ? fileIdentity(address.path) : null;
    handle.setCallback((type, a, b) => this.#onNative(type, a, b));
    if (!this.#referenced) handle.unref();
    this.#state = 'listening';
    this.emit('listening');
  }

  /**
   * Accepts on a listening socket fd this server now owns (a duplicate of another thread's listener:
   * the kernel hands each connection to one of the fds' pollers). Closing it closes only this fd,
   * and never removes a unix socket file: the listener's creator does.
   */
  adopt(fd: number, family: NativeAddress['family'], backlog: number = DEFAULT_BACKLOG): void {
    if (this.#state !== 'idle' || this.#closing !== null) {
      throw new RuntimeError('ERR_SERVER_ALREADY_LISTEN', 'this NativeServer is already listening; close() it first');
    }
    const handle = adoptSocketHandle(fd, family);
    // listen(2) again on a listening socket only re-arms it; the addon starts polling for accepts.
    const status = handle.listen(Math.min(Math.max(1, backlog), MAX_BACKLOG));
    if (status < 0) {
      handle.close();
      throw errnoError(status, 'listen', `fd ${fd}`);
    }
    this.#handle = handle;
    this.#family = family;
    this.#address = handleAddress(handle.getsockname()) ?? null;
    this.#unixFile = null;
    handle.setCallback((type, a, b) => this.#onNative(type, a, b));
    if (!this.#referenced) handle.unref();
    this.#state = 'listening';
    this.emit('listening');
  }

  /** The bound address (the kernel's choice for VMADDR_PORT_ANY), or null when not listening. */
  address(): NativeAddress | null {
    return this.#state === 'listening' ? this.#address : null;
  }

  /**
   * Stops accepting and closes the listening fd (and removes the unix socket file it created).
   * Connections already handed out stay open: their owners end them. Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close().finally(() => {
      this.#closing = null;
    });
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#state === 'binding') await this.#pendingListen;
    if (this.#acceptTimer !== null) {
      clearTimeout(this.#acceptTimer);
      this.#acceptTimer = null;
    }
    const handle = this.#handle;
    if (handle === null) return;
    this.#handle = null;
    this.#state = 'idle';
    await closeHandle(handle);
    const file = this.#unixFile;
    this.#unixFile = null;
    // Only our own file: another server may have taken the path over in the meantime.
    if (file !== null && sameFile(fileIdentity(file.path), file)) removeFile(file.path);
    this.emit('close');
  }

  /** Let the process exit while listening (net.Server#unref). */
  unref(): this {
    this.#referenced = false;
    this.#handle?.unref();
    this.#acceptTimer?.unref();
    return this;
  }

  ref(): this {
    this.#referenced = true;
    this.#handle?.ref();
    this.#acceptTimer?.ref();
    return this;
  }

  #onNative(type: number, a: unknown, b: unknown): void {
    switch (type) {
      case NativeEvent.Connection:
        this.#onConnection(a as number);
        return;
      case NativeEvent.AcceptPaused:
        this.#pauseAccepting(errnoError(a as number, 'accept'));
        return;
      case NativeEvent.Error:
        this.emit('error', errnoError(a as number, b as string));
        return;
      default:
        return;
    }
  }

  /** Must wrap `fd` before returning (the addon closes an unwrapped one); adoptSocketHandle closes it if wrapping fails. */
  #onConnection(fd: number): void {
    let handle: NativeHandle;
    try {
      handle = adoptSocketHandle(fd, this.#family);
    } catch (error) {
      if (this.listenerCount('acceptError') > 0) this.emit('acceptError', error);
      return;
    }
    const socket = new NativeSocket(handle, this.#socketOptions);
    // Nobody would ever read or close it: an unowned socket is an fd leak.
    if (this.listenerCount('connection') === 0) {
      socket.destroy();
      return;
    }
    this.emit('connection', socket);
  }

  #pauseAccepting(error: Error): void {
    if (this.listenerCount('acceptError') > 0) this.emit('acceptError', error);
    if (this.#acceptTimer !== null) return;
    this.#acceptTimer = setTimeout(() => {
      this.#acceptTimer = null;
      this.#handle?.resumeAccept();
    }, ACCEPT_RETRY_MS);
    if (!this.#referenced) this.#acceptTimer.unref();
  }
}

export function fileIdentity(path: string): { path: string; dev: number; ino: number } | null {
  try {
    const stats = statSync(path);
    return { path, dev: stats.dev, ino: stats.ino };
  } catch {
    return null;
  }
}

export function sameFile(a: { dev: number; ino: number } | null, b: { dev: number; ino: number }): boolean {
  return a !== null && a.dev === b.dev && a.ino === b.ino;
}

export function removeFile(path: string): void {
  try {
    unlinkSync(path);
  } catch (error) {
    if (errorCode(error) !== 'ENOENT') throw error;
  }
}

/**
 * True only for a unix socket file that refuses connections: the leftover of a crashed process.
 * A regular file, a live listener or anything unclear stays untouched (the caller reports EADDRINUSE).
 */
export async function isStaleUnixSocket(path: string): Promise<boolean> {
  try {
    if (!lstatSync(path).isSocket()) return false;
  } catch (error) {
    // Gone between bind and now: binding again will tell.
    return errorCode(error) === 'ENOENT';
  }
  return new Promise((resolve) => {
    const probe = netConnect({ path });
    const done = (stale: boolean): void => {
      clearTimeout(timer);
      probe.destroy();
      resolve(stale);
    };
    const timer = setTimeout(() => done(false), STALE_PROBE_TIMEOUT_MS);
    probe.once('connect', () => done(false));
    probe.once('error', (error: NodeJS.ErrnoException) => done(error.code === 'ECONNREFUSED'));
  });
}
