/**
 * One listening socket served by several event loops (the ingress worker threads). The main thread
 * binds and listens once and keeps one fd of the socket without polling it; each worker polls its
 * own duplicate (dup(2)), and the kernel hands every new connection to exactly one accept() caller.
 * This works for every transport alike (tcp, unix, vsock), needs no SO_REUSEPORT (Node 20 cannot
 * set it) and, unlike SO_REUSEPORT, leaves no window where a restarted worker's queue is lost.
 */
import net from 'node:net';
import { RuntimeError } from '../core/errors.js';
import {
  closeFd,
  closeHandle,
  dupFd,
  errnoError,
  formatNativeAddress,
  negErrno,
  openSocketHandle,
  type NativeHandle,
} from '../native/native-binding.js';
import type { Address } from './address.js';
import type { Listener, TransportSocket } from './transport.js';

export interface SharedListener {
  /** The bound address (the real port when 0 was asked for). */
  readonly address: Address;
  /** A new duplicate of the listening fd, owned by whoever receives it (one worker). */
  dup(): number;
  /** Closes the kept fd (and removes the unix socket file made here); duplicates stay their owners'. */
  close(): Promise<void>;
}

type NativeServerModule = typeof import('./native-server.js');

function nativeServer(): Promise<NativeServerModule> {
  return import('./native-server.js');
}

/** Binds and listens on `address` in this thread, without accepting anything here. */
export async function openSharedListener(address: Address, backlog: number): Promise<SharedListener> {
  const { fd, bound, unixFile } =
    address.transport === 'tcp' ? await bindTcp(address, backlog) : await bindNative(address, backlog);
  let kept: number | undefined = fd;
  return {
    address: bound,
    dup() {
      if (kept === undefined) throw new RuntimeError('ERR_INGRESS_WORKER', 'the shared ingress listener is closed');
      return dupFd(kept);
    },
    async close() {
      if (kept === undefined) return;
      const fdToClose = kept;
      kept = undefined;
      closeFd(fdToClose);
      if (unixFile) {
        const { fileIdentity, sameFile, removeFile } = await nativeServer();
        // Only our own file: another listener may have taken the path over since.
        if (sameFile(fileIdentity(unixFile.path), unixFile)) removeFile(unixFile.path);
      }
    },
  };
}

function bindTcp(
  address: Address & { transport: 'tcp' },
  backlog: number,
): Promise<{ fd: number; bound: Address; unixFile: undefined }> {
  const server = net.createServer();
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: address.host, port: address.port, backlog }, () => {
      server.off('error', reject);
      // 'listening' comes on the next tick, before libuv polls: closing this server now accepts nothing,
      // and the duplicate keeps the socket listening with its queue.
      const handle = (server as unknown as { _handle?: { fd?: number } })._handle;
      const port = (server.address() as net.AddressInfo).port;
      try {
        if (typeof handle?.fd !== 'number' || handle.fd < 0) {
          throw new RuntimeError('ERR_INGRESS_WORKER', 'this platform gives no fd for a tcp listener');
        }
        const fd = dupFd(handle.fd);
        server.close();
        resolve({ fd, bound: { transport: 'tcp', host: address.host, port }, unixFile: undefined });
      } catch (error) {
        server.close();
        reject(error);
      }
    });
  });
}

async function bindNative(
  address: Exclude<Address, { transport: 'tcp' }>,
  backlog: number,
): Promise<{ fd: number; bound: Address; unixFile: { path: string; dev: number; ino: number } | undefined }> {
  const { isStaleUnixSocket, removeFile, fileIdentity } = await nativeServer();
  const native =
    address.transport === 'unix'
      ? ({ family: 'unix', path: address.path } as const)
      : ({ family: 'vsock', cid: address.cid, port: address.port } as const);
  const where = formatNativeAddress(native);
  const handle: NativeHandle = openSocketHandle(native.family);
  try {
    let status = handle.bind(native);
    if (status === negErrno('EADDRINUSE') && native.family === 'unix' && (await isStaleUnixSocket(native.path))) {
      removeFile(native.path);
      status = handle.bind(native);
    }
    if (status < 0) throw errnoError(status, 'bind', where);
    // The addon starts polling on listen; it is closed below in this same tick, before any accept.
    status = handle.listen(backlog);
    if (status < 0) throw errnoError(status, 'listen', where);
    const fd = dupFd(handle.fd);
    const sockname = handle.getsockname();
    const bound: Address =
      typeof sockname === 'object' && sockname.family === 'vsock' && address.transport === 'vsock'
        ? { ...address, port: sockname.port }
        : address;
    return {
      fd,
      bound,
      unixFile: native.family === 'unix' ? (fileIdentity(native.path) ?? undefined) : undefined,
    };
  } finally {
    await closeHandle(handle);
  }
}

/** In a worker: accepts on `fd`, a duplicate from SharedListener.dup(), which the returned Listener owns. */
export async function adoptListener(
  address: Address,
  fd: number,
  onConnection: (socket: TransportSocket) => void,
  backlog: number,
): Promise<Listener> {
  if (address.transport === 'tcp') {
    const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd, backlog }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    // server.close()'s callback waits for every open connection; the ingress drains those itself.
    return { address, close: async () => void server.close() };
  }
  const { NativeServer } = await nativeServer();
  const server = new NativeServer();
  server.on('connection', onConnection);
  server.adopt(fd, address.transport === 'unix' ? 'unix' : 'vsock', backlog);
  return { address, close: () => server.close() };
}
