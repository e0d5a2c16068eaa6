import net from 'node:net';
import type { Duplex } from 'node:stream';
import { RuntimeError } from '../core/errors.js';
import type { Address } from './address.js';

/** A listening endpoint; `address` is the real one (a tcp port 0 is resolved). */
export interface Listener {
  readonly address: Address;
  /** Stops accepting; connections already accepted stay open. */
  close(): Promise<void>;
}

export interface ListenOptions {
  backlog?: number;
}

export interface ConnectOptions {
  timeoutMs: number;
}

/** Every transport's sockets: byte streams with half-close (end() sends FIN, reading goes on). */
export type TransportSocket = Duplex;

export class ConnectTimeoutError extends RuntimeError {
  constructor(target: string, timeoutMs: number) {
    super('ETIMEDOUT', `connect to ${target} timed out after ${timeoutMs} ms`);
  }
}

type NativeModule = typeof import('./native-server.js') & typeof import('./native-socket.js');
let nativeModule: Promise<NativeModule> | undefined;

/** The addon loads on first use, so tcp-only commands (host, attest) run without it. */
function native(): Promise<NativeModule> {
  nativeModule ??= Promise.all([import('./native-server.js'), import('./native-socket.js')]).then(
    ([server, socket]) => ({
      ...server,
      ...socket,
    }),
  );
  return nativeModule;
}

function nativeAddress(address: Exclude<Address, { transport: 'tcp' }>) {
  return address.transport === 'unix'
    ? ({ family: 'unix', path: address.path } as const)
    : ({ family: 'vsock', cid: address.cid, port: address.port } as const);
}

/** Listens on a tcp, unix or vsock address; unix and vsock go through our addon's stream code. */
export async function listen(
  address: Address,
  onConnection: (socket: TransportSocket) => void,
  options: ListenOptions = {},
): Promise<Listener> {
  if (address.transport === 'tcp') return listenTcp(address, onConnection, options);
  const { NativeServer } = await native();
  const server = new NativeServer();
  server.on('connection', onConnection);
  await server.listen(nativeAddress(address), options.backlog);
  return {
    address,
    close: () => server.close(),
  };
}

function listenTcp(
  address: Address & { transport: 'tcp' },
  onConnection: (socket: TransportSocket) => void,
  options: ListenOptions,
): Promise<Listener> {
  const server = net.createServer({ allowHalfOpen: true, noDelay: true }, onConnection);
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen({ host: address.host, port: address.port, backlog: options.backlog ?? 511 }, () => {
      server.off('error', reject);
      const bound = server.address() as net.AddressInfo;
      resolve({
        address: { transport: 'tcp', host: address.host, port: bound.port },
        // server.close()'s callback waits for every open connection; the caller drains those itself.
        close: async () => void server.close(),
      });
    });
  });
}

/** Connects to a tcp, unix or vsock address, failing with ETIMEDOUT after `timeoutMs`. */
export async function connect(address: Address, options: ConnectOptions): Promise<TransportSocket> {
  if (address.transport !== 'tcp') {
    const { connectNative } = await native();
    return connectNative(nativeAddress(address), { timeoutMs: options.timeoutMs });
  }
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host: address.host, port: address.port, allowHalfOpen: true, noDelay: true });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new ConnectTimeoutError(`tcp:${address.host}:${address.port}`, options.timeoutMs));
    }, options.timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('error', onError);
      resolve(socket);
    });
    const onError = (error: Error) => {
      clearTimeout(timer);
      reject(error);
    };
    socket.once('error', onError);
  });
}
