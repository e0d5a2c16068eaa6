import net from 'node:net';
import tls from 'node:tls';
import { once } from 'node:events';
import { withTimeout } from './budget.js';

/** Every TLS figure is taken with this one suite, pinned by the client, so both servers do the same work. */
export const TLS_CIPHER_SUITE = 'TLS_AES_128_GCM_SHA256';
/** The base certificate's name; `<nonce>.attest.` before it asks for a nonce certificate. */
export const SERVER_NAME = 'localhost';
/** Loopback connects in microseconds; a server that takes this long has stopped answering. */
const CONNECT_TIMEOUT_MS = 10_000;

/** Something a client connects to on loopback: the app itself, the runtime or a peer in front of it. */
export interface Subject {
  /** Short key for JSON and the table: `direct`, `runtime`, `socat`, `nginx`. */
  readonly name: string;
  readonly tls: boolean;
  readonly port: number;
  /** CPU seconds the serving side has used so far (with its children); undefined for `direct`. */
  cpuSeconds?(): number;
  /** Waits until the serving side has finished with closed connections, so its CPU reading is complete. */
  settle?(): Promise<void>;
}

export interface TlsClientOptions {
  /** PEM of the CA both servers' certificates chain to; without it the chain is not checked. */
  ca?: string;
  servername?: string;
}

/** A connected client socket (TLS: handshake done, no session offered, so never resumed). */
export async function connectTo(subject: Subject, options: TlsClientOptions = {}): Promise<net.Socket | tls.TLSSocket> {
  const socket = subject.tls
    ? tls.connect(tlsClientOptions(subject.port, options))
    : net.connect({ host: '127.0.0.1', port: subject.port });
  socket.setNoDelay(true);
  try {
    await withTimeout(
      once(socket, subject.tls ? 'secureConnect' : 'connect'),
      CONNECT_TIMEOUT_MS,
      `connect to ${subject.name}`,
    );
  } catch (error) {
    socket.destroy();
    throw error;
  }
  return socket;
}

export function tlsClientOptions(port: number, options: TlsClientOptions): tls.ConnectionOptions {
  return {
    host: '127.0.0.1',
    port,
    servername: options.servername ?? SERVER_NAME,
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ciphers: TLS_CIPHER_SUITE,
    ...(options.ca ? { ca: options.ca, rejectUnauthorized: true } : { rejectUnauthorized: false }),
  };
}
