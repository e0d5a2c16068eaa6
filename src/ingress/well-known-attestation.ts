/**
 * GET /.well-known/attestation on HTTP-aware ingress. Only the first request of a connection is
 * looked at: its bytes are read as they arrive and compared with the one request line we answer,
 * so any other request is handed on as soon as its first differing byte arrives, unchanged (the
 * bytes read are pushed back with unshift). HTTP/1.x only: an h2 preface differs at once.
 */
import type { Duplex } from 'node:stream';
import { NSM_MAX_FIELD_BYTES } from '../attestation/nsm.js';
import { peekStream } from '../net/stream-peek.js';

export const WELL_KNOWN_ATTESTATION_PATH = '/.well-known/attestation';
/** A matching request whose head (request line and headers) is longer than this goes to the app. */
export const WELL_KNOWN_HEAD_MAX_BYTES = 8192;

/**
 * A complete `GET /.well-known/attestation` head with no body: answer it here. `nonce` is the
 * `?nonce=HEX` the client asked for; `error` (with the offending parameter) when the query breaks
 * the internal API's rules, to be answered 400.
 */
export type WellKnownRequest =
  { kind: 'well-known'; nonce: Uint8Array | undefined } | { kind: 'well-known'; error: string; field: string };

/** What the first bytes of a connection turned out to be. */
export type FirstRequest =
  | WellKnownRequest
  /** Anything else, or nothing decisive in time: relay to the app (the bytes read were put back). */
  | 'other'
  /** The client closed (or failed) before anything decisive: there is nothing to relay. */
  | 'closed';

const PREFIX = Buffer.from(`GET ${WELL_KNOWN_ATTESTATION_PATH}`, 'latin1');
const HEAD_END = Buffer.from('\r\n\r\n', 'latin1');
const REQUEST_LINE = /^GET \/\.well-known\/attestation(?:\?([\x21-\x7e]*))? HTTP\/1\.[01]$/;
// The internal API's rules (SPEC "Internal API"): hex of either case and even length, empty = absent.
const HEX = /^(?:[0-9a-fA-F]{2})*$/;

/**
 * The query of a well-known request line, by the internal API's rules for `nonce`: hex, at most
 * 1024 bytes (the NSM's cap), given at most once. Other parameters are ignored.
 */
export function parseWellKnownQuery(query: string): WellKnownRequest {
  let nonce: Uint8Array | undefined;
  let seen = false;
  for (const [name, value] of new URLSearchParams(query)) {
    // Other parameters (cache busters) were always accepted and still are.
    if (name !== 'nonce') continue;
    if (seen) return { kind: 'well-known', error: 'nonce is given more than once', field: 'nonce' };
    seen = true;
    if (value === '') continue;
    if (!HEX.test(value))
      return { kind: 'well-known', error: 'nonce must be hex: an even number of digits 0-9, a-f', field: 'nonce' };
    if (value.length / 2 > NSM_MAX_FIELD_BYTES)
      return {
        kind: 'well-known',
        error: `nonce is ${value.length / 2} bytes, at most ${NSM_MAX_FIELD_BYTES}`,
        field: 'nonce',
      };
    nonce = new Uint8Array(Buffer.from(value, 'hex'));
  }
  return { kind: 'well-known', nonce };
}

/** The parsed request of a head classifyFirstRequest called well-known. */
function wellKnownRequest(head: Buffer): WellKnownRequest {
  const requestLine = head.toString('latin1').split('\r\n', 1)[0] ?? '';
  return parseWellKnownQuery(REQUEST_LINE.exec(requestLine)?.[1] ?? '');
}

/** Decide on the bytes so far; undefined while more bytes could change the answer. */
export function classifyFirstRequest(
  data: Buffer,
  maxBytes: number = WELL_KNOWN_HEAD_MAX_BYTES,
): 'well-known' | 'other' | undefined {
  const compared = Math.min(data.length, PREFIX.length);
  if (!data.subarray(0, compared).equals(PREFIX.subarray(0, compared))) return 'other';
  if (data.length > PREFIX.length) {
    const next = data[PREFIX.length];
    // A longer path (/.well-known/attestation2, /.well-known/attestation/x) is the app's.
    if (next !== 0x20 && next !== 0x3f) return 'other';
  }
  const end = data.indexOf(HEAD_END);
  if (end < 0) return data.length >= maxBytes ? 'other' : undefined;
  if (end + HEAD_END.length > maxBytes) return 'other';
  const [requestLine, ...headers] = data.subarray(0, end).toString('latin1').split('\r\n');
  if (!REQUEST_LINE.test(requestLine ?? '')) return 'other';
  for (const header of headers) {
    const colon = header.indexOf(':');
    if (colon <= 0) return 'other';
    const name = header.slice(0, colon).trim().toLowerCase();
    const value = header.slice(colon + 1).trim();
    // A request with a body is not the one we answer; the app can make sense of it.
    if (name === 'transfer-encoding') return 'other';
    if (name === 'content-length' && value !== '0') return 'other';
  }
  return 'well-known';
}

/**
 * Read the start of `stream` until the first request is known to be GET /.well-known/attestation
 * or not, for at most `timeoutMs` and `maxBytes`. Unless it is the well-known request, every byte
 * read is put back before resolving, so the stream is as it was, only paused.
 */
export async function readFirstRequest(
  stream: Duplex,
  options: { timeoutMs: number; maxBytes?: number },
): Promise<FirstRequest> {
  const maxBytes = options.maxBytes ?? WELL_KNOWN_HEAD_MAX_BYTES;
  const read = await peekStream(
    stream,
    (bytes) => {
      const verdict = classifyFirstRequest(bytes, maxBytes);
      if (verdict === undefined) return undefined;
      // The app's request goes back whole; a well-known head is ours, answered and not forwarded.
      return { value: verdict, length: verdict === 'well-known' ? bytes.length : 0 };
    },
    { maxBytes, timeoutMs: options.timeoutMs, rest: 'unshift', restoreOnGiveUp: true },
  );
  switch (read.kind) {
    case 'decided':
      return read.value === 'well-known' ? wellKnownRequest(read.head) : 'other';
    case 'bound':
    case 'timeout':
      return 'other';
    default:
      // A FIN or a failure before the decision means the bytes so far were a cut-off well-known
      // request (or none): nothing the app could answer.
      return 'closed';
  }
}

/** The HTTP/1.1 answer: `{"attestation_doc": "<base64>"}`, then the connection closes. */
export function wellKnownResponse(document: Uint8Array): Buffer {
  return jsonResponse('200 OK', {
    attestation_doc: Buffer.from(document.buffer, document.byteOffset, document.byteLength).toString('base64'),
  });
}

/** The 400 for a bad query, in the internal API's shape `{"error", "field"}`. */
export function wellKnownErrorResponse(error: string, field: string): Buffer {
  return jsonResponse('400 Bad Request', { error, field });
}

function jsonResponse(status: string, value: unknown): Buffer {
  const body = JSON.stringify(value);
  const head = [
    `HTTP/1.1 ${status}`,
    'content-type: application/json',
    // Any page may read it (fetchAttestation in enclave-runtime/browser): the document is public
    // and made on request, and `*` never lets a browser attach cookies or other credentials.
    'access-control-allow-origin: *',
    `content-length: ${Buffer.byteLength(body)}`,
    // Each connection may be served another certificate, so its document must not be shared by caches.
    'cache-control: no-store',
    'connection: close',
    '',
    '',
  ].join('\r\n');
  return Buffer.concat([Buffer.from(head, 'latin1'), Buffer.from(body, 'utf8')]);
}

/**
 * Send the answer and close. Whatever the client still sends is read and dropped until it closes
 * (at most `lingerMs`): closing with unread bytes would reset the connection and could lose the answer.
 */
export function answerWellKnown(client: Duplex, response: Buffer, lingerMs: number): Promise<void> {
  return new Promise((resolve) => {
    if (client.destroyed) return resolve();
    const timer = setTimeout(() => client.destroy(), lingerMs);
    client.once('close', () => {
      clearTimeout(timer);
      resolve();
    });
    client.on('data', () => {});
    client.resume();
    client.end(response);
  });
}
