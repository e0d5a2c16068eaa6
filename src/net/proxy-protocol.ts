/**
 * PROXY protocol v1 (text) and v2 (binary), as specified by HAProxy's proxy-protocol.txt.
 *
 * Conventions a reader of a ProxyHeader relies on:
 * - No `source`/`destination` means "use the socket's own endpoints": v2 LOCAL, v2 PROXY with
 *   UNSPEC family and v1 `PROXY UNKNOWN` all come out that way (v1 UNKNOWN keeps command 'PROXY').
 * - v2 LOCAL discards the whole address block, TLVs included, as the spec tells receivers to.
 * - Unix-socket addresses carry the path in `address` and port 0.
 * - The CRC32C TLV is returned like any other TLV, not verified.
 */
import { isIP, SocketAddress } from 'node:net';
import type { Duplex } from 'node:stream';
import { RuntimeError } from '../core/errors.js';
import { peekStream } from './stream-peek.js';

export type ProxyProtocolErrorCode = 'ERR_PROXY_PROTOCOL' | 'ERR_PROXY_PROTOCOL_TIMEOUT';

/** A malformed, oversized, unexpected or late PROXY header; the connection should be dropped. */
export class ProxyProtocolError extends RuntimeError {
  constructor(message: string, code: ProxyProtocolErrorCode = 'ERR_PROXY_PROTOCOL', options?: { cause?: unknown }) {
    super(code, message, options);
  }
}

export interface ProxyEndpoint {
  address: string;
  port: number;
}

export interface ProxyTlv {
  type: number;
  value: Buffer;
}

export interface ProxyHeader {
  version: 1 | 2;
  command: 'PROXY' | 'LOCAL';
  family: 'tcp4' | 'tcp6' | 'unix' | 'unknown';
  source?: ProxyEndpoint;
  destination?: ProxyEndpoint;
  tlvs?: ProxyTlv[];
}

export type ProxyAccept = 'v1' | 'v2' | 'any';

export type ProxyParseResult = { kind: 'incomplete' } | { kind: 'header'; header: ProxyHeader; length: number };

/** The v1 line, CRLF included, is at most 107 bytes (spec section 2.1). */
export const PROXY_V1_MAX_LENGTH = 107;
/** Our bound on the v2 address block plus TLVs; real senders (HAProxy, AWS NLB) stay far below it. */
export const PROXY_V2_MAX_PAYLOAD = 1024;
export const PROXY_V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V2_HEADER_LENGTH = 16;
const V2_UNIX_PATH_LENGTH = 108;
const PORT_TEXT = /^(?:0|[1-9][0-9]{0,4})$/;

/** Parse a PROXY header at the start of `buf`, or say that more bytes are needed. */
export function parseProxyHeader(buf: Buffer, accept: ProxyAccept): ProxyParseResult {
  if (buf.length === 0) return { kind: 'incomplete' };
  const looksV2 = buf[0] === PROXY_V2_SIGNATURE[0];
  if (looksV2 && accept === 'v1')
    throw new ProxyProtocolError('expected a PROXY protocol v1 header, got a v2 signature');
  if (!looksV2 && accept === 'v2') {
    if (buf[0] === V1_PREFIX[0]) throw new ProxyProtocolError('expected a PROXY protocol v2 header, got v1 text');
    throw new ProxyProtocolError('bad PROXY protocol v2 signature');
  }
  return looksV2 ? parseV2(buf) : parseV1(buf);
}

function parseV1(buf: Buffer): ProxyParseResult {
  const prefixLength = Math.min(buf.length, V1_PREFIX.length);
  if (!buf.subarray(0, prefixLength).equals(V1_PREFIX.subarray(0, prefixLength))) {
    throw new ProxyProtocolError('not a PROXY protocol header (v1 must start with "PROXY ")');
  }
  const scanLength = Math.min(buf.length, PROXY_V1_MAX_LENGTH);
  let lineEnd = -1;
  for (let i = 0; i < scanLength; i++) {
    const byte = buf[i]!;
    if (byte === 0x0d) {
      if (i + 1 === buf.length) break;
      if (buf[i + 1] !== 0x0a) throw new ProxyProtocolError('PROXY v1 header has a CR not followed by LF');
      lineEnd = i;
      break;
    }
    if (byte < 0x20 || byte > 0x7e)
      throw new ProxyProtocolError(`PROXY v1 header has a non-printable byte 0x${hex(byte)} at offset ${i}`);
  }
  if (lineEnd < 0 || lineEnd + 2 > PROXY_V1_MAX_LENGTH) {
    if (lineEnd >= 0 || buf.length >= PROXY_V1_MAX_LENGTH)
      throw new ProxyProtocolError(`PROXY v1 header has no CRLF within ${PROXY_V1_MAX_LENGTH} bytes`);
    return { kind: 'incomplete' };
  }
  const line = buf.toString('latin1', 0, lineEnd);
  return { kind: 'header', header: parseV1Line(line), length: lineEnd + 2 };
}

function parseV1Line(line: string): ProxyHeader {
  const fields = line.split(' ');
  const protocol = fields[1];
  // The spec tells receivers to ignore whatever follows UNKNOWN.
  if (protocol === 'UNKNOWN') return { version: 1, command: 'PROXY', family: 'unknown' };
  if (protocol !== 'TCP4' && protocol !== 'TCP6') {
    throw new ProxyProtocolError(
      `PROXY v1 protocol must be TCP4, TCP6 or UNKNOWN, got ${JSON.stringify(protocol ?? '')}`,
    );
  }
  if (fields.length !== 6)
    throw new ProxyProtocolError(
      `PROXY v1 ${protocol} line needs 6 single-space separated fields, got ${fields.length}`,
    );
  const ipVersion = protocol === 'TCP4' ? 4 : 6;
  return {
    version: 1,
    command: 'PROXY',
    family: ipVersion === 4 ? 'tcp4' : 'tcp6',
    source: { address: v1Address(fields[2]!, ipVersion, 'source'), port: v1Port(fields[4]!, 'source') },
    destination: { address: v1Address(fields[3]!, ipVersion, 'destination'), port: v1Port(fields[5]!, 'destination') },
  };
}

function v1Address(text: string, ipVersion: 4 | 6, role: string): string {
  // isIP accepts IPv6 zone ids ("fe80::1%eth0"), which have no meaning across hosts.
  if (isIP(text) !== ipVersion || text.includes('%')) {
    throw new ProxyProtocolError(
      `PROXY v1 ${role} address ${JSON.stringify(text)} is not a valid IPv${ipVersion} address`,
    );
  }
  return ipVersion === 6 ? canonicalIPv6(text) : text;
}

function v1Port(text: string, role: string): number {
  const port = PORT_TEXT.test(text) ? Number(text) : NaN;
  if (!(port <= 65535))
    throw new ProxyProtocolError(`PROXY v1 ${role} port ${JSON.stringify(text)} is not a number in 0..65535`);
  return port;
}

function parseV2(buf: Buffer): ProxyParseResult {
  const signatureLength = Math.min(buf.length, PROXY_V2_SIGNATURE.length);
  if (!buf.subarray(0, signatureLength).equals(PROXY_V2_SIGNATURE.subarray(0, signatureLength))) {
    throw new ProxyProtocolError('bad PROXY protocol v2 signature');
  }
  if (buf.length < 13) return { kind: 'incomplete' };
  const versionCommand = buf[12]!;
  if (versionCommand >> 4 !== 2)
    throw new ProxyProtocolError(`unsupported PROXY protocol version ${versionCommand >> 4} in v2 header`);
  const commandBits = versionCommand & 0x0f;
  if (commandBits > 1) throw new ProxyProtocolError(`unknown PROXY v2 command 0x${hex(commandBits)}`);
  if (buf.length < V2_HEADER_LENGTH) return { kind: 'incomplete' };
  const payloadLength = buf.readUInt16BE(14);
  if (payloadLength > PROXY_V2_MAX_PAYLOAD) {
    throw new ProxyProtocolError(
      `PROXY v2 payload of ${payloadLength} bytes exceeds the limit of ${PROXY_V2_MAX_PAYLOAD}`,
    );
  }
  const length = V2_HEADER_LENGTH + payloadLength;
  if (buf.length < length) return { kind: 'incomplete' };
  if (commandBits === 0) return { kind: 'header', header: { version: 2, command: 'LOCAL', family: 'unknown' }, length };
  const payload = buf.subarray(V2_HEADER_LENGTH, length);
  return { kind: 'header', header: parseV2Proxy(buf[13]!, payload), length };
}

function parseV2Proxy(familyByte: number, payload: Buffer): ProxyHeader {
  const addressFamily = familyByte >> 4;
  const transport = familyByte & 0x0f;
  if (familyByte === 0x00) return { version: 2, command: 'PROXY', family: 'unknown', tlvs: parseTlvs(payload) };
  if (transport !== 1 || addressFamily < 1 || addressFamily > 3) {
    throw new ProxyProtocolError(
      `unsupported PROXY v2 family/transport byte 0x${hex(familyByte)} (only STREAM over INET, INET6, UNIX or UNSPEC)`,
    );
  }
  const family = addressFamily === 1 ? 'tcp4' : addressFamily === 2 ? 'tcp6' : 'unix';
  const addressBlock = family === 'tcp4' ? 12 : family === 'tcp6' ? 36 : 2 * V2_UNIX_PATH_LENGTH;
  if (payload.length < addressBlock) {
    throw new ProxyProtocolError(
      `PROXY v2 ${family} needs ${addressBlock} address bytes, the header declares ${payload.length}`,
    );
  }
  let source: ProxyEndpoint;
  let destination: ProxyEndpoint;
  if (family === 'unix') {
    source = { address: unixPath(payload.subarray(0, V2_UNIX_PATH_LENGTH)), port: 0 };
    destination = { address: unixPath(payload.subarray(V2_UNIX_PATH_LENGTH, addressBlock)), port: 0 };
  } else {
    const size = family === 'tcp4' ? 4 : 16;
    source = { address: formatIp(payload.subarray(0, size)), port: payload.readUInt16BE(2 * size) };
    destination = { address: formatIp(payload.subarray(size, 2 * size)), port: payload.readUInt16BE(2 * size + 2) };
  }
  return { version: 2, command: 'PROXY', family, source, destination, tlvs: parseTlvs(payload.subarray(addressBlock)) };
}

function parseTlvs(block: Buffer): ProxyTlv[] {
  const tlvs: ProxyTlv[] = [];
  let offset = 0;
  while (offset < block.length) {
    if (block.length - offset < 3)
      throw new ProxyProtocolError(`truncated PROXY v2 TLV header at offset ${offset} of the TLV block`);
    const type = block[offset]!;
    const length = block.readUInt16BE(offset + 1);
    const end = offset + 3 + length;
    if (end > block.length)
      throw new ProxyProtocolError(
        `PROXY v2 TLV type 0x${hex(type)} declares ${length} bytes, only ${block.length - offset - 3} remain`,
      );
    // Copy, so a kept TLV does not pin the connection's first chunk in memory.
    tlvs.push({ type, value: Buffer.from(block.subarray(offset + 3, end)) });
    offset = end;
  }
  return tlvs;
}

function unixPath(field: Buffer): string {
  const nul = field.indexOf(0);
  return field.toString('utf8', 0, nul < 0 ? field.length : nul);
}

function formatIp(bytes: Buffer): string {
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return canonicalIPv6(groups.join(':'));
}

/** RFC 5952 text for an already validated IPv6 address (libuv's inet_ntop does the work). */
function canonicalIPv6(address: string): string {
  return new SocketAddress({ address, family: 'ipv6' }).address;
}

function hex(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}

/** Encode a PROXY header; `null` means "no addresses" (v1 UNKNOWN, v2 LOCAL). */
export function encodeProxyHeader(
  version: 1 | 2,
  info: { source: ProxyEndpoint; destination: ProxyEndpoint } | null,
): Buffer {
  if (info === null) {
    if (version === 1) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
    return Buffer.concat([PROXY_V2_SIGNATURE, Buffer.from([0x20, 0x00, 0x00, 0x00])]);
  }
  const ipVersion = isIP(info.source.address);
  if (ipVersion === 0 || ipVersion !== isIP(info.destination.address)) {
    throw new ProxyProtocolError(
      `cannot encode PROXY header for ${info.source.address} -> ${info.destination.address}: need two IP addresses of one family`,
    );
  }
  for (const port of [info.source.port, info.destination.port]) {
    if (!Number.isInteger(port) || port < 0 || port > 65535)
      throw new ProxyProtocolError(`cannot encode PROXY header: port ${port} is not in 0..65535`);
  }
  const { source, destination } = info;
  if (version === 1) {
    const src = ipVersion === 6 ? canonicalIPv6(source.address) : source.address;
    const dst = ipVersion === 6 ? canonicalIPv6(destination.address) : destination.address;
    return Buffer.from(`PROXY TCP${ipVersion} ${src} ${dst} ${source.port} ${destination.port}\r\n`, 'latin1');
  }
  const addresses = Buffer.concat([
    ipBytes(source.address, ipVersion),
    ipBytes(destination.address, ipVersion),
    Buffer.alloc(4),
  ]);
  addresses.writeUInt16BE(source.port, addresses.length - 4);
  addresses.writeUInt16BE(destination.port, addresses.length - 2);
  const head = Buffer.from([0x21, ipVersion === 4 ? 0x11 : 0x21, 0, 0]);
  head.writeUInt16BE(addresses.length, 2);
  return Buffer.concat([PROXY_V2_SIGNATURE, head, addresses]);
}

function ipBytes(address: string, ipVersion: number): Buffer {
  if (ipVersion === 4) return Buffer.from(address.split('.').map(Number));
  let text = canonicalIPv6(address);
  if (text.includes('.')) {
    const cut = text.lastIndexOf(':') + 1;
    const v4 = ipBytes(text.slice(cut), 4);
    text = `${text.slice(0, cut)}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
  }
  const [head = '', tail] = text.split('::');
  const headGroups = head === '' ? [] : head.split(':');
  const tailGroups = tail ? tail.split(':') : [];
  const zeros = tail === undefined ? [] : Array<string>(8 - headGroups.length - tailGroups.length).fill('0');
  const out = Buffer.alloc(16);
  [...headGroups, ...zeros, ...tailGroups].forEach((group, i) => out.writeUInt16BE(parseInt(group, 16), 2 * i));
  return out;
}

export interface ReadProxyHeaderOptions {
  /** Give up when no complete header arrived in this time. */
  timeoutMs: number;
  /** Give up when this many bytes arrived without a complete header. */
  maxBytes?: number;
}

/**
 * Read a PROXY header from the start of a stream. On return the stream is paused with no
 * listeners of ours left on it, and `rest` holds the bytes that followed the header: the
 * caller must forward them before anything else it reads (or `unshift` them back), then
 * `resume()` or `pipe()` the stream: a paused stream stays paused when a 'data' listener is added.
 * On failure the stream is left paused and the caller decides whether to destroy it.
 */
export async function readProxyHeader(
  stream: Duplex,
  accept: ProxyAccept,
  { timeoutMs, maxBytes = V2_HEADER_LENGTH + PROXY_V2_MAX_PAYLOAD }: ReadProxyHeaderOptions,
): Promise<{ header: ProxyHeader; rest: Buffer }> {
  const read = await peekStream(
    stream,
    (bytes) => {
      const result = parseProxyHeader(bytes, accept);
      return result.kind === 'header' ? { value: result.header, length: result.length } : undefined;
    },
    { maxBytes, timeoutMs, rest: 'return' },
  );
  switch (read.kind) {
    case 'decided':
      return { header: read.value, rest: read.rest };
    case 'invalid':
      throw read.error;
    case 'bound':
      throw new ProxyProtocolError(`no complete PROXY header within ${maxBytes} bytes`);
    case 'timeout':
      throw new ProxyProtocolError(`no complete PROXY header within ${timeoutMs} ms`, 'ERR_PROXY_PROTOCOL_TIMEOUT');
    case 'ended':
      throw new ProxyProtocolError(`connection ended after ${read.bytes.length} bytes, before a complete PROXY header`);
    case 'failed':
      throw new ProxyProtocolError(
        `connection failed while reading the PROXY header: ${read.error.message}`,
        'ERR_PROXY_PROTOCOL',
        { cause: read.error },
      );
  }
}
