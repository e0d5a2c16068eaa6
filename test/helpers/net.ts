import { createHash, randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { once } from 'node:events';
import net from 'node:net';
import type { Duplex } from 'node:stream';

export const sha256 = (data: Buffer) => createHash('sha256').update(data).digest('hex');

/** Reads a stream to its end, leaving its write side open (for-await would destroy it at EOF). */
export function readAll(stream: Duplex): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    stream.on('data', (chunk: Buffer) => chunks.push(chunk));
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

/**
 * Whether the other side closed the connection within `ms`: its FIN (end) or a reset (close).
 * A half-open client sees only 'end', so waiting for 'close' alone would wait forever.
 */
export function closesWithin(socket: Duplex, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    if (socket.destroyed || socket.readableEnded) return resolve(true);
    const timer = setTimeout(() => resolve(false), ms);
    const done = () => {
      clearTimeout(timer);
      resolve(true);
    };
    socket.once('end', done);
    socket.once('close', done);
    socket.resume();
  });
}

export interface EchoApp {
  port: number;
  /** Connections the app accepted. */
  accepted: number;
  close: () => void;
}

/** An app that echoes (and ends its side when the client's side ends), or first says `banner`. */
export async function startEchoApp(banner?: string): Promise<EchoApp> {
  const app = { port: 0, accepted: 0, close: () => {} };
  const server = net.createServer((socket) => {
    app.accepted += 1;
    socket.on('error', () => {});
    if (banner !== undefined) socket.write(banner);
    socket.pipe(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  app.port = (server.address() as net.AddressInfo).port;
  app.close = () => server.close();
  return app;
}

/**
 * An app that reads its whole request (up to the client's FIN), then answers with `reply(request)`
 * and closes its side: a byte-exact, half-close-dependent exchange.
 */
export async function startReplyServer(
  reply: (request: Buffer) => Buffer,
): Promise<{ server: net.Server; port: number; received: Buffer[] }> {
  const received: Buffer[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('error', () => {});
    void readAll(socket).then((request) => {
      received.push(request);
      socket.end(reply(request));
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as net.AddressInfo).port, received };
}

/** Sends `payload`, half-closes, and returns everything the other side sent back. */
export async function exchange(socket: Duplex, payload: Buffer): Promise<Buffer> {
  const answer = readAll(socket);
  socket.end(payload);
  return answer;
}

export async function tcpConnect(port: number, host = '127.0.0.1'): Promise<net.Socket> {
  const socket = net.connect({ port, host, allowHalfOpen: true });
  await once(socket, 'connect');
  return socket;
}

export const randomPayload = (bytes: number) => randomBytes(bytes);

/** A loopback port that was free a moment ago, for configs that cannot take port 0. */
export async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** One UDP DNS exchange with 127.0.0.1:`port`; undefined when nothing answers within `timeoutMs`. */
export function udpExchange(port: number, message: Buffer, timeoutMs = 3000): Promise<Buffer | undefined> {
  return new Promise((resolve) => {
    const socket = dgram.createSocket('udp4');
    const timer = setTimeout(() => {
      socket.close();
      resolve(undefined);
    }, timeoutMs);
    socket.on('message', (answer) => {
      clearTimeout(timer);
      socket.close();
      resolve(answer);
    });
    socket.send(message, port, '127.0.0.1');
  });
}
