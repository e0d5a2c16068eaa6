import net from 'node:net';
import { once } from 'node:events';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';

/**
 * The customer app every subject forwards to. One byte after connect picks what the connection
 * does, so a probe that connects and leaves (the runtime's health check) costs nothing:
 *   'U' + u64 length: read that many bytes, then answer one 'K' (the upload is in);
 *   'D' + u64 length: send that many bytes (the download);
 *   'E': echo everything back (request/response latency);
 *   'G' (an HTTP/1.1 GET): answer every request head with a small keep-alive 200 (requests/s through TLS).
 * The protocol lives on the wire only, so the app could run in any process.
 */
export const MODE_UPLOAD = 0x55;
export const MODE_DOWNLOAD = 0x44;
export const MODE_ECHO = 0x45;
export const ACK = 0x4b;
export const HEADER_BYTES = 9;
export const MODE_HTTP = 0x47;
/** What every HTTP request gets: small, fixed, keep-alive, so the proxies' per-request work is what is measured. */
export const HTTP_RESPONSE = Buffer.from(
  'HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n',
);
const HEAD_END = Buffer.from('\r\n\r\n');

/** Written in slices of this, the same buffer every time: the generator should cost next to nothing. */
export const CHUNK_BYTES = 1 << 20;
const CHUNK = Buffer.alloc(CHUNK_BYTES, 0x5a);

export function header(mode: number, length: number): Buffer {
  const bytes = Buffer.alloc(HEADER_BYTES);
  bytes[0] = mode;
  bytes.writeBigUInt64BE(BigInt(length), 1);
  return bytes;
}

/** Writes `total` bytes with backpressure; rejects if the socket fails first. */
export async function writeBytes(
  socket: NodeJS.WritableStream & { destroyed?: boolean },
  total: number,
): Promise<void> {
  let left = total;
  while (left > 0) {
    const n = Math.min(left, CHUNK_BYTES);
    left -= n;
    if (!socket.write(n === CHUNK_BYTES ? CHUNK : CHUNK.subarray(0, n)))
      await once(socket as unknown as NodeJS.EventEmitter, 'drain');
  }
}

export interface AppServer {
  readonly port: number;
  /** Connections open right now (the 1,000-idle-connection check waits for them). */
  readonly open: number;
  close(): Promise<void>;
}

export async function startAppServer(onOpen?: (open: number) => void): Promise<AppServer> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer({ noDelay: true }, (socket) => {
    sockets.add(socket);
    onOpen?.(sockets.size);
    socket.once('close', () => {
      sockets.delete(socket);
      onOpen?.(sockets.size);
    });
    socket.on('error', () => socket.destroy());
    serve(socket);
  });
  server.listen({ host: '127.0.0.1', port: 0, backlog: 2048 });
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    get open() {
      return sockets.size;
    },
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function serve(socket: net.Socket): void {
  let head: Buffer = Buffer.alloc(0);
  const onHead = (chunk: Buffer) => {
    head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
    if (head[0] === MODE_HTTP) {
      socket.off('data', onHead);
      serveHttp(socket, head);
      return;
    }
    if (head[0] === MODE_ECHO) {
      socket.off('data', onHead);
      if (head.length > 1) socket.write(head.subarray(1));
      socket.on('data', (data: Buffer) => socket.write(data));
      return;
    }
    if (head.length < HEADER_BYTES) return;
    socket.off('data', onHead);
    const mode = head[0];
    const length = Number(head.readBigUInt64BE(1));
    const rest = head.length - HEADER_BYTES;
    if (mode === MODE_UPLOAD) {
      let received = rest;
      const check = () => {
        if (received >= length) {
          socket.off('data', count);
          socket.write(Buffer.of(ACK));
        }
      };
      const count = (data: Buffer) => {
        received += data.length;
        check();
      };
      socket.on('data', count);
      check();
    } else if (mode === MODE_DOWNLOAD) {
      writeBytes(socket, length).catch(() => socket.destroy());
    } else {
      socket.destroy();
    }
  };
  socket.on('data', onHead);
}

/**
 * Bodiless requests (GET), pipelined or not: one response per blank line that ends a head. A head
 * split across reads is found by keeping the last three bytes of the previous read.
 */
function serveHttp(socket: net.Socket, first: Buffer): void {
  let carry: Buffer = Buffer.alloc(0);
  const onData = (chunk: Buffer) => {
    const data = carry.length === 0 ? chunk : Buffer.concat([carry, chunk]);
    let answers = 0;
    for (let at = data.indexOf(HEAD_END); at !== -1; at = data.indexOf(HEAD_END, at + HEAD_END.length)) answers++;
    carry = data.subarray(Math.max(0, data.length - (HEAD_END.length - 1)));
    if (answers === 1) socket.write(HTTP_RESPONSE);
    else if (answers > 1) socket.write(Buffer.concat(Array.from({ length: answers }, () => HTTP_RESPONSE)));
  };
  socket.on('data', onData);
  onData(first);
}

/**
 * The same app in a thread of its own: while the bench opens thousands of TLS connections, its
 * event loop is busy with their client side, and an app on that loop accepts too slowly (the
 * runtime's app connects time out at the full accept queue: 9,500 idle connections lost a quarter).
 * The open count is read from shared memory, so `open` stays synchronous.
 */
export async function startAppServerThread(): Promise<AppServer> {
  const open = new Int32Array(new SharedArrayBuffer(4));
  const worker = new Worker(new URL(import.meta.url), { workerData: { open } });
  const [port] = (await once(worker, 'message')) as [number];
  return {
    port,
    get open() {
      return Atomics.load(open, 0);
    },
    close: async () => {
      await worker.terminate();
    },
  };
}

if (!isMainThread && parentPort && (workerData as { open?: Int32Array } | undefined)?.open) {
  const open = (workerData as { open: Int32Array }).open;
  const app = await startAppServer((count) => Atomics.store(open, 0, count));
  parentPort.postMessage(app.port);
}
