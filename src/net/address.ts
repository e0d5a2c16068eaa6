import { isIP } from 'node:net';
import { RuntimeError } from '../core/errors.js';

/** VMADDR_CID_ANY: listen on every CID the enclave has. */
export const VMADDR_CID_ANY = 0xffffffff;

export type Address =
  | { readonly transport: 'tcp'; readonly host: string; readonly port: number }
  | { readonly transport: 'unix'; readonly path: string }
  | { readonly transport: 'vsock'; readonly cid: number; readonly port: number };

export type TcpAddress = Extract<Address, { transport: 'tcp' }>;

export class AddressError extends RuntimeError {
  constructor(message: string) {
    super('ERR_ADDRESS', message);
  }
}

const MAX_UNIX_PATH = 107; // sun_path is 108 bytes including the terminating NUL
/** Quotes user input in messages, shortened so a huge value cannot flood a log line. */
const quote = (text: string) => JSON.stringify(text.length > 64 ? `${text.slice(0, 61)}...` : text);

const FORMS = 'expected vsock:CID:PORT, vsock:any:PORT, unix:/path/to.sock or tcp:HOST:PORT';

/** Parses `vsock:CID:PORT`, `unix:PATH` or `tcp:HOST:PORT` (IPv6 hosts in brackets). */
export function parseAddress(text: string): Address {
  if (typeof text !== 'string' || text.length === 0) throw new AddressError(`empty address; ${FORMS}`);
  const colon = text.indexOf(':');
  const scheme = colon < 0 ? text : text.slice(0, colon);
  const rest = colon < 0 ? '' : text.slice(colon + 1);
  switch (scheme) {
    case 'tcp':
      return parseTcp(text, rest);
    case 'unix':
      return parseUnix(text, rest);
    case 'vsock':
      return parseVsock(text, rest);
    default:
      throw new AddressError(`${quote(text)} has an unknown transport ${quote(scheme)}; ${FORMS}`);
  }
}

function parseTcp(text: string, rest: string): Address {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(rest);
  if (!match) throw new AddressError(`${quote(text)} is not tcp:HOST:PORT (IPv6 hosts go in brackets: tcp:[::1]:8443)`);
  const host = (match[1] ?? match[2]) as string;
  if (match[1] !== undefined && isIP(host) !== 6)
    throw new AddressError(`${quote(text)}: ${quote(host)} in brackets is not an IPv6 address`);
  if (match[2] !== undefined && isIP(host) === 0 && !/^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$/.test(host)) {
    throw new AddressError(`${quote(text)}: ${quote(host)} is neither an IP address nor a host name`);
  }
  return { transport: 'tcp', host, port: parsePort(text, match[3] as string, 65535) };
}

function parseUnix(text: string, path: string): Address {
  if (path.length === 0) throw new AddressError(`${quote(text)} has no path; expected unix:/path/to.sock`);
  if (Buffer.byteLength(path) > MAX_UNIX_PATH) {
    throw new AddressError(
      `${quote(text)}: the socket path is longer than ${MAX_UNIX_PATH} bytes, the limit of sun_path`,
    );
  }
  if (path.includes('\0')) throw new AddressError(`${quote(text)}: the socket path contains a NUL byte`);
  return { transport: 'unix', path };
}

function parseVsock(text: string, rest: string): Address {
  const match = /^(any|\d{1,10}):(\d{1,10})$/.exec(rest);
  if (!match) throw new AddressError(`${quote(text)} is not vsock:CID:PORT (CID is a number or "any")`);
  const cid = match[1] === 'any' ? VMADDR_CID_ANY : Number(match[1]);
  if (cid > VMADDR_CID_ANY) throw new AddressError(`${quote(text)}: CID ${cid} is larger than 4294967295`);
  return { transport: 'vsock', cid, port: parsePort(text, match[2] as string, 0xfffffffe) };
}

function parsePort(text: string, digits: string, max: number): number {
  const port = Number(digits);
  if (!Number.isInteger(port) || port > max)
    throw new AddressError(`${quote(text)}: port ${digits} is outside 0..${max}`);
  return port;
}

/** The canonical text form, the inverse of parseAddress. */
export function formatAddress(address: Address): string {
  switch (address.transport) {
    case 'tcp':
      return `tcp:${isIP(address.host) === 6 ? `[${address.host}]` : address.host}:${address.port}`;
    case 'unix':
      return `unix:${address.path}`;
    case 'vsock':
      return `vsock:${address.cid === VMADDR_CID_ANY ? 'any' : address.cid}:${address.port}`;
  }
}
