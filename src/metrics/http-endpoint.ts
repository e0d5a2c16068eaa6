/**
 * A small read-only HTTP server on any transport address (tcp, unix or vsock), for GET routes
 * whose answer is computed per request: /health for the parent, /metrics for a scraper.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { listen } from '../net/transport.js';
import { errorCode, RuntimeError } from '../core/errors.js';
import { withTimeout } from '../core/http-kit.js';
import type { Logger } from '../core/log.js';

/** Scrapers and health checkers are few; more connections than this are closed at once. */
const MAX_CONNECTIONS = 64;
const HEADERS_TIMEOUT_MS = 5_000;
const REQUEST_TIMEOUT_MS = 10_000;
const KEEP_ALIVE_TIMEOUT_MS = 5_000;
const MAX_HEADER_BYTES = 8 * 1024;
/** A route that does not answer in this time gets 503. */
const ROUTE_TIMEOUT_MS = 5_000;

export interface RouteAnswer {
  status: number;
  type: string;
  body: string;
}

export type Route = () => RouteAnswer | Promise<RouteAnswer>;

export interface HttpEndpoint {
  readonly address: Address;
  close(): Promise<void>;
}

/** Serves `routes` (GET/HEAD by exact path) on `address`; 404 for other paths, 405 for other methods. */
export async function startHttpEndpoint(
  name: string,
  address: Address,
  routes: Readonly<Record<string, Route>>,
  logger: Logger,
): Promise<HttpEndpoint> {
  const server = createServer(
    { maxHeaderSize: MAX_HEADER_BYTES },
    (request, response) => void answer(routes, request, response, logger, name),
  );
  server.headersTimeout = HEADERS_TIMEOUT_MS;
  server.requestTimeout = REQUEST_TIMEOUT_MS;
  server.keepAliveTimeout = KEEP_ALIVE_TIMEOUT_MS;
  const open = new Set<Duplex>();
  let listener;
  try {
    listener = await listen(address, (socket) => {
      if (open.size >= MAX_CONNECTIONS) {
        socket.destroy();
        return;
      }
      open.add(socket);
      socket.once('close', () => open.delete(socket));
      socket.on('error', () => {});
      server.emit('connection', socket);
    });
  } catch (error) {
    const code = errorCode(error) ?? 'ERR_LISTEN';
    throw new RuntimeError(code, `${name} cannot listen on ${formatAddress(address)}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const bound = listener;
  logger.info({ listen: formatAddress(bound.address) }, `${name} listening`);
  return {
    address: bound.address,
    close: async () => {
      await bound.close();
      for (const socket of open) socket.destroy();
      server.close();
    },
  };
}

async function answer(
  routes: Readonly<Record<string, Route>>,
  request: IncomingMessage,
  response: ServerResponse,
  logger: Logger,
  name: string,
): Promise<void> {
  const path = (request.url ?? '/').split('?')[0] ?? '/';
  const route = Object.hasOwn(routes, path) ? routes[path] : undefined;
  let result: RouteAnswer;
  if (route === undefined) {
    result = { status: 404, type: 'application/json', body: JSON.stringify({ error: 'not found' }) };
  } else if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.setHeader('allow', 'GET, HEAD');
    result = { status: 405, type: 'application/json', body: JSON.stringify({ error: 'method not allowed' }) };
  } else {
    try {
      result = await withTimeout(Promise.resolve().then(route), ROUTE_TIMEOUT_MS);
    } catch (error) {
      logger.warn({ path, err: { message: (error as Error).message } }, `${name} could not answer`);
      result = { status: 503, type: 'application/json', body: JSON.stringify({ error: 'unavailable' }) };
    }
  }
  response.writeHead(result.status, {
    'content-type': result.type,
    'content-length': Buffer.byteLength(result.body),
    'cache-control': 'no-store',
  });
  response.end(request.method === 'HEAD' ? undefined : result.body);
}
