/**
 * Inspection of the bytes an app sends on one egress connection, shared by the transparent
 * listener, the HTTP proxy's CONNECT tunnels and the host relay: bytes are held until a parser
 * decides what they are and the caller's judge has allowed the host they name, and only then
 * released for forwarding. Nothing is forwarded undecided, however late or slowly it comes.
 *
 *   - TLS: any record starting 0x16 0x03, whatever the minor version. The ClientHello is
 *     reassembled across records and segments (bounded, client-hello.ts); its SNI is judged;
 *     one carrying encrypted_client_hello is refused unless `allowEch` (its real SNI is hidden).
 *     After an allowed ClientHello the rest is encrypted and passes as it is.
 *   - HTTP/1.x: every request head on the connection is judged, not only the first. Empty lines
 *     before a request line are skipped (servers ignore them); bodies are stepped over by their
 *     framing (Content-Length, or chunked parsed chunk by chunk) to find the next head. After a
 *     CONNECT the tunnelled bytes are inspected from the start again. Upgrade requests (WebSocket,
 *     h2c) are refused: after one, a server may or may not switch protocols, and we cannot tell
 *     which without reading its answers. HTTP/2 in the clear (`PRI * HTTP/2.0`) is refused too.
 *   - Anything else ("other") is refused on ports where TLS or HTTP is expected
 *     (EXPECTS_TLS_OR_HTTP); elsewhere it is judged without a host name (on the IP) and passes.
 *
 * This file is pure (no sockets, no timers): inspection-gate.ts drives it and bounds the wait.
 */
import { ClientHelloError, parseClientHello } from './client-hello.js';
import { HttpHostError, HTTP_HEAD_MAX_LENGTH, parseHttpHost } from './http-host.js';

export type InspectedProtocol = 'tls' | 'http' | 'other';

/** What a parser found: the protocol, and the host the bytes name (SNI, Host, CONNECT target). */
export interface Sighting {
  protocol: InspectedProtocol;
  hostname?: string;
}

/** The caller's answer for one sighting: egress-policy's ConnectionDecision fits. */
export interface Verdict {
  allowed: boolean;
  reason: string;
  name?: string;
  rule?: string;
}

export interface InspectionRefusal {
  /** For the audit line: the judge's reason, or one of INSPECTION_REASONS. */
  reason: string;
  sighting?: Sighting;
  verdict?: Verdict;
  /** The parser's message, for a debug line (never payload bytes). */
  problem?: string;
}

/** Refusal reasons of the inspection itself (the judge adds egress-policy's). */
export const INSPECTION_REASONS = {
  /** The first bytes look like TLS or HTTP but cannot be read (malformed, or incomplete at the end). */
  unreadableFirstBytes: 'unreadable-first-bytes',
  /** A later request head (keep-alive, after CONNECT) or a chunked body cannot be read. */
  unreadableRequest: 'unreadable-request',
  /** Bytes held undecided for longer than the inspection timeout (inspection-gate.ts). */
  timeout: 'inspection-timeout',
  /** A ClientHello with encrypted_client_hello while egress.allow_ech is off. */
  ech: 'encrypted-client-hello',
  /** Neither TLS nor HTTP on a port that expects one of them. */
  notTlsOrHttp: 'not-tls-or-http',
  /** An HTTP Upgrade request. */
  upgrade: 'http-upgrade',
} as const;

/** Ports where only TLS or HTTP/1.x is accepted: opaque bytes there could be either, unread. */
export const EXPECTS_TLS_OR_HTTP: ReadonlySet<number> = new Set([80, 443, 8080, 8443]);

export interface InspectorOptions {
  /** The destination port (decides whether "other" bytes may pass). */
  port: number;
  allowEch: boolean;
  judge: (sighting: Sighting) => Verdict;
}

export interface InspectStep {
  /** Bytes now allowed, in order. */
  forward: Buffer[];
  refusal?: InspectionRefusal;
}

/** How far a method (and a scheme) is scanned to tell a text protocol from HTTP; bounds on held chunk lines and trailers. */
const METHOD_SCAN_MAX = 32;
const CHUNK_LINE_MAX = 1024;
const TRAILER_MAX = 8192;
const CR = 0x0d;
const LF = 0x0a;

type Mode =
  | { kind: 'start' }
  | { kind: 'http-head' }
  | { kind: 'length'; remaining: number }
  | { kind: 'chunk-size' }
  | { kind: 'chunk-data'; remaining: number }
  | { kind: 'chunk-end' }
  | { kind: 'trailer' }
  | { kind: 'opaque' }
  | { kind: 'refused' };

export class StreamInspector {
  readonly #options: InspectorOptions;
  #held: Buffer = Buffer.alloc(0);
  #mode: Mode = { kind: 'start' };
  #judged = 0;
  /** The first sighting judged and its verdict (the transparent listener names the relay stream after it). */
  first?: { sighting: Sighting; verdict: Verdict };

  constructor(options: InspectorOptions) {
    this.#options = options;
  }

  /** Whether bytes are held waiting for a decision (the gate runs its deadline while they are). */
  get holding(): boolean {
    return this.#held.length > 0 && this.#mode.kind !== 'refused';
  }

  /** Whether any verdict has been given yet. */
  get decided(): boolean {
    return this.#judged > 0;
  }

  /** Feed bytes from the app. */
  push(chunk: Buffer): InspectStep {
    if (this.#mode.kind === 'refused') return { forward: [] };
    this.#held = this.#held.length === 0 ? chunk : Buffer.concat([this.#held, chunk]);
    return this.#run(false);
  }

  /** The app ended its side: decide on what is held, as no more bytes will come. */
  end(): InspectStep {
    if (this.#mode.kind === 'refused') return { forward: [] };
    return this.#run(true);
  }

  #run(final: boolean): InspectStep {
    const forward: Buffer[] = [];
    for (;;) {
      const before = this.#held.length;
      const modeBefore = this.#mode.kind;
      let result: Buffer | InspectionRefusal | undefined;
      try {
        result = this.#step(final);
      } catch (error) {
        if (!(error instanceof ClientHelloError || error instanceof HttpHostError)) throw error;
        result = {
          reason: this.#judged === 0 ? INSPECTION_REASONS.unreadableFirstBytes : INSPECTION_REASONS.unreadableRequest,
          problem: error.message,
        };
      }
      if (result !== undefined && !Buffer.isBuffer(result)) {
        this.#mode = { kind: 'refused' };
        this.#held = Buffer.alloc(0);
        return { forward, refusal: result };
      }
      if (result !== undefined && result.length > 0) forward.push(result);
      // Stop once a step neither consumed bytes nor changed what it expects next.
      if (this.#held.length === before && this.#mode.kind === modeBefore) return { forward };
      if (this.#held.length === 0 && !final) return { forward };
    }
  }

  /** One step: bytes released (possibly none), or a refusal; throws parser errors. */
  #step(final: boolean): Buffer | InspectionRefusal | undefined {
    const held = this.#held;
    const mode = this.#mode;
    switch (mode.kind) {
      case 'opaque':
        return this.#take(held.length);
      case 'start':
        return this.#classify(final);
      case 'http-head':
        return this.#httpHead(final);
      case 'length': {
        const n = Math.min(mode.remaining, held.length);
        mode.remaining -= n;
        if (mode.remaining === 0) this.#mode = { kind: 'http-head' };
        return this.#take(n);
      }
      case 'chunk-size': {
        const end = held.subarray(0, CHUNK_LINE_MAX).indexOf('\r\n');
        if (end < 0) {
          if (held.length >= CHUNK_LINE_MAX || held.subarray(0, CHUNK_LINE_MAX).includes(LF))
            throw new HttpHostError('chunk size line is malformed or too long');
          return undefined;
        }
        const line = held.toString('latin1', 0, end);
        const match = /^([0-9A-Fa-f]{1,12})(?:[ \t]*;[\x20-\x7e\t]*)?$/.exec(line);
        if (!match) throw new HttpHostError(`chunk size line ${JSON.stringify(line.slice(0, 40))} is malformed`);
        const size = parseInt(match[1]!, 16);
        this.#mode = size === 0 ? { kind: 'trailer' } : { kind: 'chunk-data', remaining: size };
        return this.#take(end + 2);
      }
      case 'chunk-data': {
        const n = Math.min(mode.remaining, held.length);
        mode.remaining -= n;
        if (mode.remaining === 0) this.#mode = { kind: 'chunk-end' };
        return this.#take(n);
      }
      case 'chunk-end':
        if (held.length < 2) return held.length === 1 && held[0] !== CR ? chunkError() : undefined;
        if (held[0] !== CR || held[1] !== LF) return chunkError();
        this.#mode = { kind: 'chunk-size' };
        return this.#take(2);
      case 'trailer': {
        // Trailer fields up to an empty line; bare LF is as ambiguous here as in a head.
        const end = held[0] === CR && held[1] === LF ? 0 : held.subarray(0, TRAILER_MAX).indexOf('\r\n\r\n');
        const scan = held.subarray(0, end < 0 ? TRAILER_MAX : end + 2);
        for (let i = 0; i < scan.length; i++)
          if (scan[i] === LF && scan[i - 1] !== CR) throw new HttpHostError('chunked trailer has a bare LF');
        if (end < 0) {
          if (held.length >= TRAILER_MAX) throw new HttpHostError(`chunked trailer exceeds ${TRAILER_MAX} bytes`);
          return undefined;
        }
        this.#mode = { kind: 'http-head' };
        return this.#take(end === 0 ? 2 : end + 4);
      }
      case 'refused':
        return undefined;
    }
  }

  #classify(final: boolean): Buffer | InspectionRefusal | undefined {
    const held = this.#held;
    if (held.length === 0) return undefined;
    if (held[0] === 0x16 && (held.length < 2 || held[1] === 0x03)) {
      if (held.length < 2 && !final) return undefined;
      if (held.length >= 2) return this.#tls(final);
    }
    const http = looksLikeHttp(held, final);
    if (http === undefined) return undefined;
    if (http) {
      this.#mode = { kind: 'http-head' };
      return Buffer.alloc(0);
    }
    if (EXPECTS_TLS_OR_HTTP.has(this.#options.port))
      return { reason: INSPECTION_REASONS.notTlsOrHttp, sighting: { protocol: 'other' } };
    const refusal = this.#judge({ protocol: 'other' });
    if (refusal) return refusal;
    this.#mode = { kind: 'opaque' };
    return this.#take(held.length);
  }

  #tls(final: boolean): Buffer | InspectionRefusal | undefined {
    const hello = parseClientHello(this.#held);
    if (hello.kind === 'incomplete') {
      if (final) throw new ClientHelloError('the app ended the connection inside its ClientHello');
      return undefined;
    }
    if (hello.kind === 'not-tls') throw new ClientHelloError('not a TLS handshake record');
    const sighting: Sighting =
      hello.serverName === undefined ? { protocol: 'tls' } : { protocol: 'tls', hostname: hello.serverName };
    if (hello.ech && !this.#options.allowEch) return { reason: INSPECTION_REASONS.ech, sighting };
    const refusal = this.#judge(sighting);
    if (refusal) return refusal;
    this.#mode = { kind: 'opaque' };
    return this.#take(this.#held.length);
  }

  #httpHead(final: boolean): Buffer | InspectionRefusal | undefined {
    const held = this.#held;
    // Empty lines before a request line are ignored by servers (RFC 9112 2.2), so skipped here too.
    let skip = 0;
    while (skip < held.length && skip <= HTTP_HEAD_MAX_LENGTH) {
      if (held[skip] === LF) skip++;
      else if (held[skip] === CR && held[skip + 1] === LF) skip += 2;
      else break;
    }
    if (skip > HTTP_HEAD_MAX_LENGTH) throw new HttpHostError(`more than ${HTTP_HEAD_MAX_LENGTH} bytes of empty lines`);
    if (skip === held.length || (held[skip] === CR && skip + 1 === held.length)) {
      if (final && skip < held.length) throw new HttpHostError('the app ended the connection inside a request head');
      return this.#take(skip);
    }
    // A finished request line that is not HTTP/1.x (HTTP/0.9 "GET http://host/", HTTP/2's preface) is refused at once.
    const lineEnd = held.indexOf(LF, skip);
    if (lineEnd >= 0 && !/^[!-~]+ [!-~]+ HTTP\/1\.[01]\r$/.test(held.toString('latin1', skip, lineEnd + 0))) {
      throw new HttpHostError(
        `request line ${JSON.stringify(held.toString('latin1', skip, Math.min(lineEnd, skip + 100)))} is not METHOD TARGET HTTP/1.x`,
      );
    }
    const head = parseHttpHost(held.subarray(skip));
    if (head.kind === 'not-http')
      throw new HttpHostError('bytes that are not an HTTP/1.x request where one was expected');
    if (head.kind === 'incomplete') {
      if (final) throw new HttpHostError('the app ended the connection inside a request head');
      return undefined;
    }
    const sighting: Sighting =
      head.host === undefined ? { protocol: 'http' } : { protocol: 'http', hostname: head.host };
    if (head.upgrade !== undefined)
      return { reason: INSPECTION_REASONS.upgrade, sighting, problem: `Upgrade: ${head.upgrade.slice(0, 40)}` };
    const refusal = this.#judge(sighting);
    if (refusal) return refusal;
    if (head.method === 'CONNECT') this.#mode = { kind: 'start' };
    else if (head.chunked) this.#mode = { kind: 'chunk-size' };
    else if (head.contentLength) this.#mode = { kind: 'length', remaining: head.contentLength };
    else this.#mode = { kind: 'http-head' };
    return this.#take(skip + head.headLength);
  }

  #judge(sighting: Sighting): InspectionRefusal | undefined {
    const verdict = this.#options.judge(sighting);
    this.#judged++;
    this.first ??= { sighting, verdict };
    return verdict.allowed ? undefined : { reason: verdict.reason, sighting, verdict };
  }

  #take(n: number): Buffer {
    const out = this.#held.subarray(0, n);
    this.#held = this.#held.subarray(n);
    return out;
  }
}

function chunkError(): never {
  throw new HttpHostError('chunk data is not followed by CRLF');
}

/**
 * Whether bytes that are not TLS are HTTP: true, false, or undefined while they could still go
 * either way. Generous on purpose: whatever a lenient server could take for the start of a
 * request line (a method token, whitespace, then `/`, `*`, `[`, `scheme://` or `host:PORT`; or a
 * leading empty line) is read as HTTP, and then parsed strictly, so no request passes as "other" unread. The
 * answer comes as soon as the bytes stop fitting that pattern, so a client-first text protocol
 * (SMTP's "HELO x", "through the relay") is not held waiting for a line end; binary is "other" on
 * its first byte.
 */
export function looksLikeHttp(data: Buffer, final: boolean): boolean | undefined {
  if (data[0] === CR || data[0] === LF) return true;
  let i = 0;
  const more = () => (final ? false : undefined);
  const isLetter = (byte: number) => (byte | 0x20) >= 0x61 && (byte | 0x20) <= 0x7a;
  const isDigit = (byte: number) => byte >= 0x30 && byte <= 0x39;
  // RFC 9112 3: recipients may split the request line on any whitespace, so accept it all here.
  const isSpace = (byte: number) => byte === 0x20 || byte === 0x09 || byte === 0x0b || byte === 0x0c || byte === CR;
  // method: a letter, then token characters
  if (i === data.length) return more();
  if (!isLetter(data[i]!)) return false;
  for (
    i++;
    i < data.length &&
    i < METHOD_SCAN_MAX &&
    (isLetter(data[i]!) || isDigit(data[i]!) || data[i] === 0x2d || data[i] === 0x5f);
    i++
  );
  if (i === data.length) return more();
  if (!isSpace(data[i]!)) return false;
  for (; i < data.length && i < METHOD_SCAN_MAX * 2 && isSpace(data[i]!); i++);
  if (i === data.length) return more();
  // target: origin-form, asterisk-form, an IPv6 authority, an absolute URI's scheme followed by "://",
  // or a name followed by ":PORT" (CONNECT's authority-form)
  if (data[i] === 0x2f || data[i] === 0x2a || data[i] === 0x5b) return true;
  if (!isLetter(data[i]!) && !isDigit(data[i]!)) return false;
  const nameEnd = Math.min(data.length, i + 256);
  for (
    i++;
    i < nameEnd &&
    (isLetter(data[i]!) ||
      isDigit(data[i]!) ||
      data[i] === 0x2b ||
      data[i] === 0x2e ||
      data[i] === 0x2d ||
      data[i] === 0x5f);
    i++
  );
  if (i === data.length) return more();
  if (data[i] !== 0x3a) return false;
  if (++i === data.length) return more();
  if (isDigit(data[i]!)) return true;
  if (data[i] !== 0x2f) return false;
  if (++i === data.length) return more();
  return data[i] === 0x2f;
}
