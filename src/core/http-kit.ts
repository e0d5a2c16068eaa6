/**
 * The plumbing the runtime's small HTTP servers share (the internal attestation API, the
 * provisioner, the /health and /metrics endpoint): a bounded body read, a JSON answer, a deadline.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';

export interface ReadBodyOptions {
  maxBytes: number;
  /** The error for a body over `maxBytes`; `declared` is the Content-Length when that alone was too large. */
  tooLarge: (declared?: number) => Error;
  /** The error when the client goes away (or the stream fails) before the body's end. */
  gone: (cause?: unknown) => Error;
}

/**
 * Reads a request body of at most `maxBytes`: a larger Content-Length is refused before a byte is
 * read, a body that grows past the bound is refused as soon as it does. After a refusal the rest is
 * read and discarded (the server's request timeout bounds it), so the client can still read the answer.
 */
export function readBody(req: IncomingMessage, { maxBytes, tooLarge, gone }: ReadBodyOptions): Promise<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > maxBytes) {
    req.resume();
    return Promise.reject(tooLarge(declared));
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let settled = false;
    const settle = (error: Error | undefined): void => {
      if (settled) return;
      settled = true;
      req.off('data', onData);
      if (error === undefined) {
        resolve(Buffer.concat(chunks, size));
      } else {
        req.resume();
        reject(error);
      }
    };
    const onData = (chunk: Buffer): void => {
      size += chunk.byteLength;
      if (size > maxBytes) settle(tooLarge());
      else chunks.push(chunk);
    };
    req.on('data', onData);
    req.once('end', () => settle(undefined));
    req.once('error', (error) => settle(gone(error)));
    req.once('close', () => settle(gone()));
  });
}

/** Answers with `body` of `type`; nothing is sent to a client that is gone or already answered. */
export function send(
  res: ServerResponse,
  status: number,
  type: string,
  body: Buffer | undefined,
  length = body?.byteLength ?? 0,
  headers: Record<string, string> = {},
): void {
  if (res.destroyed || res.headersSent) return;
  res.writeHead(status, {
    'content-type': type,
    'content-length': String(length),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    ...headers,
  });
  res.end(body);
}

/** Answers with `body` as JSON. */
export function sendJson(
  res: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
): void {
  send(res, status, 'application/json; charset=utf-8', Buffer.from(JSON.stringify(body)), undefined, headers);
}

/** `promise`, or `error()` if it has not settled within `ms`; the timer never outlives the race. */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  error: () => Error = () => new Error(`no answer within ${ms} ms`),
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(error()), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
