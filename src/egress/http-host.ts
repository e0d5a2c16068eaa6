/**
 * Peek at the head of a plaintext HTTP/1.x request for the host it is meant for: the Host
 * header, or the authority of an absolute-form target (proxy requests) or of a CONNECT.
 *
 * Parsing is strict on purpose, because the policy decision rests on this reading matching the
 * upstream server's: bare CR/LF, folded header lines, whitespace before ':', several Host
 * headers, userinfo in the target and a Host disagreeing with an absolute-form target are
 * all errors rather than something to interpret. `host` comes back as sent (IPv6 without
 * brackets), without its port: run it through the allowlist's allowsName.
 */
import { isIP } from 'node:net';
import { RuntimeError } from '../core/errors.js';

/** A request head that starts like HTTP but cannot be trusted to name its host. */
export class HttpHostError extends RuntimeError {
  constructor(message: string) {
    super('ERR_HTTP_HOST', message);
  }
}

export interface HttpRequestHead {
  kind: 'http-request';
  method: string;
  target: string;
  version: '1.0' | '1.1';
  /** Absent only when an origin-form request has no Host header (legal in HTTP/1.0). */
  host?: string;
  /** The explicit port of the authority, when one was given. */
  port?: number;
  /** Bytes of the head, the blank line included; the body (if any) follows. */
  headLength: number;
  /** The body's framing, so the next request on the connection can be found: Content-Length ... */
  contentLength?: number;
  /** ... or chunked transfer coding (never both). Neither: no body. */
  chunked?: true;
  /** The Upgrade header's value, when the request asks to switch protocols. */
  upgrade?: string;
}

export type HttpHostResult = { kind: 'incomplete' } | { kind: 'not-http' } | HttpRequestHead;

export const HTTP_HEAD_MAX_LENGTH = 8192;
const METHOD_MAX_LENGTH = 16;
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const HOST_NAME = /^[A-Za-z0-9._-]+$/;
const PORT = /^[0-9]{1,5}$/;

/** Classify the first bytes of a connection and, for HTTP/1.x, find the host the request is for. */
export function parseHttpHost(data: Buffer, maxBytes: number = HTTP_HEAD_MAX_LENGTH): HttpHostResult {
  if (!(Number.isInteger(maxBytes) && maxBytes >= 16 && maxBytes <= 65536))
    throw new RangeError('maxBytes must be an integer in 16..65536');
  const methodEnd = data.subarray(0, METHOD_MAX_LENGTH + 1).indexOf(0x20);
  const methodScan = methodEnd < 0 ? Math.min(data.length, METHOD_MAX_LENGTH + 1) : methodEnd;
  for (let i = 0; i < methodScan; i++) {
    const byte = data[i]!;
    if (i === METHOD_MAX_LENGTH || byte < 0x41 || byte > 0x5a) return { kind: 'not-http' };
  }
  if (methodEnd <= 0) return methodEnd === 0 ? { kind: 'not-http' } : { kind: 'incomplete' };

  const window = data.subarray(0, Math.min(data.length, maxBytes));
  const headEnd = window.indexOf('\r\n\r\n');
  // Only the head is checked: a body in the same chunk may hold any bytes.
  const scanEnd = headEnd < 0 ? window.length : headEnd + 4;
  for (let i = 0; i < scanEnd; i++) {
    const byte = data[i]!;
    if (byte === 0x0a && data[i - 1] !== 0x0d)
      throw new HttpHostError(`HTTP request head has a bare LF at offset ${i}`);
    if (byte === 0x0d && i + 1 < data.length && data[i + 1] !== 0x0a)
      throw new HttpHostError(`HTTP request head has a bare CR at offset ${i}`);
    if (byte === 0x00) throw new HttpHostError(`HTTP request head has a NUL byte at offset ${i}`);
  }
  if (headEnd < 0) {
    if (data.length >= maxBytes) throw new HttpHostError(`HTTP request head exceeds ${maxBytes} bytes`);
    return { kind: 'incomplete' };
  }
  const [requestLine = '', ...fieldLines] = data.toString('latin1', 0, headEnd).split('\r\n');
  const request = readRequestLine(requestLine);
  return {
    ...request,
    ...readHost(request.method, request.target, fieldLines),
    headLength: headEnd + 4,
    ...readFraming(request.version, fieldLines),
  };
}

/**
 * Where the body ends, read as strictly as the host: only `chunked` as a transfer coding, one
 * decimal Content-Length, never both, since a server framing the body differently from us would
 * read a request we never saw (smuggling).
 */
function readFraming(
  version: '1.0' | '1.1',
  fieldLines: string[],
): { contentLength?: number; chunked?: true; upgrade?: string } {
  const out: { contentLength?: number; chunked?: true; upgrade?: string } = {};
  for (const line of fieldLines) {
    const colon = line.indexOf(':');
    const name = line.slice(0, colon).toLowerCase();
    const value = trimOws(line.slice(colon + 1));
    if (name === 'content-length') {
      if (out.contentLength !== undefined)
        throw new HttpHostError('HTTP request has more than one Content-Length header');
      if (!/^[0-9]{1,15}$/.test(value))
        throw new HttpHostError(`HTTP Content-Length ${JSON.stringify(value.slice(0, 40))} is not a decimal number`);
      out.contentLength = Number(value);
    } else if (name === 'transfer-encoding') {
      if (out.chunked || value.toLowerCase() !== 'chunked' || version === '1.0')
        throw new HttpHostError(
          `HTTP Transfer-Encoding ${JSON.stringify(value.slice(0, 40))} is not accepted: only one "chunked", in HTTP/1.1`,
        );
      out.chunked = true;
    } else if (name === 'upgrade') {
      out.upgrade = value;
    }
  }
  if (out.chunked && out.contentLength !== undefined)
    throw new HttpHostError('HTTP request has both Transfer-Encoding and Content-Length');
  return out;
}

function readRequestLine(line: string): {
  kind: 'http-request';
  method: string;
  target: string;
  version: '1.0' | '1.1';
} {
  const parts = line.split(' ');
  const [method = '', target = '', protocol = ''] = parts;
  if (parts.length !== 3 || target === '')
    throw new HttpHostError(`HTTP request line ${JSON.stringify(line.slice(0, 100))} is not METHOD TARGET VERSION`);
  if (protocol !== 'HTTP/1.1' && protocol !== 'HTTP/1.0')
    throw new HttpHostError(`unsupported HTTP version ${JSON.stringify(protocol.slice(0, 20))}`);
  if (/[^\x21-\x7e]/.test(target)) throw new HttpHostError('HTTP request target has bytes outside printable ASCII');
  return { kind: 'http-request', method, target, version: protocol === 'HTTP/1.1' ? '1.1' : '1.0' };
}

function readHost(method: string, target: string, fieldLines: string[]): { host?: string; port?: number } {
  let hostValue: string | undefined;
  for (const line of fieldLines) {
    if (line.startsWith(' ') || line.startsWith('\t'))
      throw new HttpHostError('HTTP header line folding (obs-fold) is not accepted');
    const colon = line.indexOf(':');
    const name = colon < 0 ? '' : line.slice(0, colon);
    if (!TOKEN.test(name))
      throw new HttpHostError(`HTTP header line ${JSON.stringify(line.slice(0, 60))} has no valid field name`);
    if (name.toLowerCase() !== 'host') continue;
    if (hostValue !== undefined) throw new HttpHostError('HTTP request has more than one Host header');
    hostValue = trimOws(line.slice(colon + 1));
  }
  const fromHeader = hostValue === undefined ? undefined : readAuthority(hostValue, 'Host header', false);
  let fromTarget: { host: string; port?: number } | undefined;
  if (method === 'CONNECT') {
    fromTarget = readAuthority(target, 'CONNECT target', true);
  } else if (/^https?:\/\//i.test(target)) {
    const authority = target.slice(target.indexOf('//') + 2).split(/[/?#]/, 1)[0]!;
    fromTarget = readAuthority(authority, 'request target authority', false);
  } else if (!target.startsWith('/') && target !== '*') {
    throw new HttpHostError(
      `HTTP request target ${JSON.stringify(target.slice(0, 100))} is not origin-, absolute-, authority- or asterisk-form`,
    );
  }
  if (fromTarget && fromHeader && fromTarget.host.toLowerCase() !== fromHeader.host.toLowerCase()) {
    throw new HttpHostError(
      `Host header ${JSON.stringify(fromHeader.host)} disagrees with the request target's ${JSON.stringify(fromTarget.host)}`,
    );
  }
  return fromTarget ?? fromHeader ?? {};
}

/** Strip optional whitespace (SP and HTAB only), without a regex that backtracks on long runs. */
function trimOws(value: string): string {
  let start = 0;
  let end = value.length;
  while (start < end && (value[start] === ' ' || value[start] === '\t')) start++;
  while (end > start && (value[end - 1] === ' ' || value[end - 1] === '\t')) end--;
  return value.slice(start, end);
}

function readAuthority(text: string, what: string, portRequired: boolean): { host: string; port?: number } {
  let host = text;
  let portText: string | undefined;
  if (text.startsWith('[')) {
    const close = text.indexOf(']');
    host = text.slice(1, close < 0 ? text.length : close);
    const after = close < 0 ? ']' : text.slice(close + 1);
    if (isIP(host) !== 6 || (after !== '' && !after.startsWith(':')))
      throw new HttpHostError(`${what} ${JSON.stringify(text)} has a malformed IPv6 literal`);
    if (after !== '') portText = after.slice(1);
  } else {
    const colon = text.lastIndexOf(':');
    if (colon >= 0) [host, portText] = [text.slice(0, colon), text.slice(colon + 1)];
    if (!HOST_NAME.test(host))
      throw new HttpHostError(`${what} ${JSON.stringify(text.slice(0, 300))} is not a host name or address`);
  }
  // RFC 3986 allows an empty port ("host:"), meaning the scheme's default.
  if (portText === undefined || portText === '') {
    if (portRequired) throw new HttpHostError(`${what} ${JSON.stringify(text)} has no port`);
    return { host };
  }
  const port = PORT.test(portText) ? Number(portText) : NaN;
  if (!(port >= 1 && port <= 65535))
    throw new HttpHostError(`${what} ${JSON.stringify(text)} has port ${JSON.stringify(portText)}, not 1..65535`);
  return { host, port };
}
