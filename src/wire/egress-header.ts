/**
 * The first bytes of every egress relay stream, enclave -> host: where the connection goes.
 * The host answers with a reply before any payload flows, so the enclave can refuse or reset
 * the app's connection (or answer a proxy CONNECT with an error) instead of faking success.
 *
 *   header (6 + 4|16 + n bytes):
 *     0   'E' 'G'                magic
 *     2   0x01                   version
 *     3   4 | 6                  address family, which fixes the address length (4 or 16)
 *     4   port                   uint16 big-endian, 1..65535
 *     6   name length n          uint8, 0..253 (0: no name, the destination was an IP literal)
 *     7   address                4 or 16 bytes, network order
 *     ..  name                   n bytes of ASCII, the normalised name (domain-name.ts)
 *
 *   reply (4 bytes): 'E' 'G' 0x01 status
 *
 * Names must already be normalised, so the host's allowlist check reads what the enclave's did.
 */
import { isIP, SocketAddress } from 'node:net';
import { RuntimeError } from '../core/errors.js';
import { DOMAIN_NAME_MAX_LENGTH, tryNormaliseDomainName } from './domain-name.js';

/** Bytes that cannot be, or are not yet, a valid header or reply. */
export class EgressHeaderError extends RuntimeError {
  constructor(message: string) {
    super('ERR_EGRESS_HEADER', message);
  }
}

export interface EgressHeader {
  /** The normalised destination name, or '' when the app dialled an IP it had not resolved. */
  name: string;
  ip: string;
  port: number;
}

export type EgressHeaderParse = { kind: 'incomplete' } | { kind: 'header'; header: EgressHeader; length: number };

/** What the host did with a header; anything but OK is followed by the end of the stream. */
export const EgressStatus = {
  OK: 0,
  DENIED: 1,
  PRIVATE: 2,
  UNREACHABLE: 3,
  TIMEOUT: 4,
  BAD_HEADER: 5,
  OVERLOADED: 6,
} as const;
export type EgressStatusCode = (typeof EgressStatus)[keyof typeof EgressStatus];

export type EgressReplyParse = { kind: 'incomplete' } | { kind: 'reply'; status: EgressStatusCode; length: number };

const MAGIC = Buffer.from('EG', 'ascii');
export const EGRESS_HEADER_VERSION = 1;
const FIXED = 7;
export const EGRESS_HEADER_MAX_LENGTH = FIXED + 16 + DOMAIN_NAME_MAX_LENGTH;
export const EGRESS_REPLY_LENGTH = 4;
const STATUS_NAMES = new Map<number, string>(Object.entries(EgressStatus).map(([name, code]) => [code, name]));

/** The status's name for logs ('DENIED'), or 'UNKNOWN(n)'. */
export function egressStatusName(status: number): string {
  return STATUS_NAMES.get(status) ?? `UNKNOWN(${status})`;
}

/** Encode a header; throws EgressHeaderError for a bad IP, port or unnormalised name. */
export function encodeEgressHeader(header: EgressHeader): Buffer {
  const address = addressBytes(header.ip);
  if (!address)
    throw new EgressHeaderError(`egress header: ${JSON.stringify(header.ip.slice(0, 64))} is not an IP address`);
  checkPort(header.port);
  checkName(header.name);
  const out = Buffer.alloc(FIXED + address.length + header.name.length);
  MAGIC.copy(out, 0);
  out[2] = EGRESS_HEADER_VERSION;
  out[3] = address.length === 4 ? 4 : 6;
  out.writeUInt16BE(header.port, 4);
  out[6] = header.name.length;
  address.copy(out, FIXED);
  out.write(header.name, FIXED + address.length, 'ascii');
  return out;
}

/** Parse a header at the start of `data`; `length` is how many bytes it took. */
export function parseEgressHeader(data: Buffer): EgressHeaderParse {
  checkMagic(data, 'header');
  if (data.length < FIXED) return { kind: 'incomplete' };
  const family = data[3];
  if (family !== 4 && family !== 6)
    throw new EgressHeaderError(`egress header: address family ${family} is neither 4 nor 6`);
  const addressLength = family === 4 ? 4 : 16;
  const port = data.readUInt16BE(4);
  if (port === 0) throw new EgressHeaderError('egress header: port 0');
  const nameLength = data[6]!;
  if (nameLength > DOMAIN_NAME_MAX_LENGTH)
    throw new EgressHeaderError(`egress header: name of ${nameLength} bytes exceeds ${DOMAIN_NAME_MAX_LENGTH}`);
  const length = FIXED + addressLength + nameLength;
  if (data.length < length) return { kind: 'incomplete' };
  const ip = formatAddressBytes(data.subarray(FIXED, FIXED + addressLength));
  const nameBytes = data.subarray(FIXED + addressLength, length);
  if (nameBytes.some((byte) => byte < 0x21 || byte > 0x7e))
    throw new EgressHeaderError('egress header: name is not printable ASCII');
  const name = nameBytes.toString('ascii');
  checkName(name);
  return { kind: 'header', header: { name, ip, port }, length };
}

/** Encode the host's reply. */
export function encodeEgressReply(status: EgressStatusCode): Buffer {
  return Buffer.from([MAGIC[0]!, MAGIC[1]!, EGRESS_HEADER_VERSION, status]);
}

/** Parse the host's reply at the start of `data`. */
export function parseEgressReply(data: Buffer): EgressReplyParse {
  checkMagic(data, 'reply');
  if (data.length < EGRESS_REPLY_LENGTH) return { kind: 'incomplete' };
  const status = data[3]!;
  if (!STATUS_NAMES.has(status)) throw new EgressHeaderError(`egress reply: unknown status ${status}`);
  return { kind: 'reply', status: status as EgressStatusCode, length: EGRESS_REPLY_LENGTH };
}

/** Magic and version, checked on however many of the first three bytes have arrived. */
function checkMagic(data: Buffer, what: string): void {
  for (let i = 0; i < Math.min(2, data.length); i++) {
    if (data[i] !== MAGIC[i]) throw new EgressHeaderError(`egress ${what}: bad magic (not an egress relay stream)`);
  }
  if (data.length > 2 && data[2] !== EGRESS_HEADER_VERSION)
    throw new EgressHeaderError(`egress ${what}: unsupported version ${data[2]}`);
}

function checkPort(port: number): void {
  if (!(Number.isInteger(port) && port >= 1 && port <= 65535))
    throw new EgressHeaderError(`egress header: port ${port} is not in 1..65535`);
}

function checkName(name: string): void {
  if (name === '') return;
  if (name.length > DOMAIN_NAME_MAX_LENGTH || tryNormaliseDomainName(name) !== name) {
    throw new EgressHeaderError(`egress header: ${JSON.stringify(name.slice(0, 64))} is not a normalised domain name`);
  }
}

function addressBytes(ip: string): Buffer | undefined {
  const version = isIP(ip);
  if (version === 4) return Buffer.from(ip.split('.').map(Number));
  if (version !== 6 || ip.includes('%')) return undefined;
  const full = new SocketAddress({ address: ip, family: 'ipv6' }).address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(full);
  if (mapped) return Buffer.from(mapped[1]!.split('.').map(Number));
  // A trailing dotted quad ("::1.2.3.4") is two more groups.
  const text = full.replace(
    /(\d+)\.(\d+)\.(\d+)\.(\d+)$/,
    (_m, a, b, c, d) => `${((+a << 8) | +b).toString(16)}:${((+c << 8) | +d).toString(16)}`,
  );
  const halves = text.split('::');
  const groups = (part: string | undefined) => (part ? part.split(':') : []);
  const left = groups(halves[0]);
  const right = groups(halves[1]);
  const all = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  const out = Buffer.alloc(16);
  all.forEach((group, i) => out.writeUInt16BE(parseInt(group, 16), i * 2));
  return out;
}

function formatAddressBytes(bytes: Buffer): string {
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  const text = new SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  return mapped ? mapped[1]! : text;
}
