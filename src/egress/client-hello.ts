/**
 * Peek at the first bytes of a TLS connection for the ClientHello's server_name (SNI) and
 * ALPN list, without terminating TLS. A ClientHello spread over several handshake records is
 * reassembled (up to 32 records); the whole handshake message is bounded to 16 KiB, which
 * real ClientHellos, post-quantum key shares included, stay well inside.
 *
 * An encrypted_client_hello extension is reported (`ech`): its real SNI is hidden from us.
 *
 * The SNI comes back as sent (printable ASCII, not normalised): run it through
 * normaliseDomainName before asking the allowlist.
 */
import { RuntimeError } from '../core/errors.js';

/** A connection that starts like TLS but does not carry a well-formed ClientHello. */
export class ClientHelloError extends RuntimeError {
  constructor(message: string) {
    super('ERR_CLIENT_HELLO', message);
  }
}

export type ClientHelloResult =
  | { kind: 'incomplete' }
  | { kind: 'not-tls' }
  | { kind: 'client-hello'; serverName?: string; alpn?: string[]; ech?: true };

/** Bound on the ClientHello handshake message, its 4-byte header included. */
export const CLIENT_HELLO_MAX_LENGTH = 16384;
const MAX_RECORDS = 32;
const RECORD_HEADER = 5;
const CONTENT_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const EXT_SERVER_NAME = 0x0000;
const EXT_ALPN = 0x0010;
/** encrypted_client_hello (RFC 9849) and the older draft ESNI: the real SNI is encrypted inside. */
const EXT_ECH = 0xfe0d;
const EXT_ESNI = 0xffce;
const INCOMPLETE = { kind: 'incomplete' } as const;
const NOT_TLS = { kind: 'not-tls' } as const;

/** Classify the first bytes of a connection and, for TLS, read SNI and ALPN from the ClientHello. */
export function parseClientHello(data: Buffer): ClientHelloResult {
  if (data.length === 0) return INCOMPLETE;
  // A handshake record with major version 3, whatever the minor: servers accept 0x0305 or 0x03ff in
  // the first record's header, so those must be read too. SSLv2 hellos are not ours.
  if (data[0] !== CONTENT_HANDSHAKE || (data.length > 1 && data[1] !== 3)) return NOT_TLS;
  const message = reassemble(data);
  return message ? readClientHello(message) : INCOMPLETE;
}

/** Collect the ClientHello message from consecutive handshake records, or undefined when more bytes are needed. */
function reassemble(data: Buffer): Buffer | undefined {
  const fragments: Buffer[] = [];
  let collected = 0;
  let declared = 0;
  let total = -1;
  let offset = 0;
  for (let record = 0; offset + RECORD_HEADER <= data.length; record++) {
    if (record === MAX_RECORDS) throw new ClientHelloError(`ClientHello spread over more than ${MAX_RECORDS} records`);
    const type = data[offset]!;
    const length = data.readUInt16BE(offset + 3);
    if (type !== CONTENT_HANDSHAKE)
      throw new ClientHelloError(`TLS record of type ${type} arrived before the ClientHello was complete`);
    if (data[offset + 1] !== 3)
      throw new ClientHelloError(`TLS record with version ${data[offset + 1]}.${data[offset + 2]}`);
    if (length === 0) throw new ClientHelloError('empty TLS handshake record');
    if (length > 16384) throw new ClientHelloError(`TLS record of ${length} bytes exceeds 16384`);
    const fragment = data.subarray(offset + RECORD_HEADER, Math.min(data.length, offset + RECORD_HEADER + length));
    fragments.push(fragment);
    collected += fragment.length;
    declared += length;
    if (total < 0 && collected > 0) {
      const head = Buffer.concat(fragments, Math.min(collected, 4));
      if (head[0] !== HANDSHAKE_CLIENT_HELLO)
        throw new ClientHelloError(`first TLS handshake message has type ${head[0]}, not ClientHello`);
      if (head.length === 4) {
        total = 4 + head.readUIntBE(1, 3);
        if (total > CLIENT_HELLO_MAX_LENGTH)
          throw new ClientHelloError(`ClientHello of ${total} bytes exceeds ${CLIENT_HELLO_MAX_LENGTH}`);
      }
    }
    if (total >= 0 && declared >= total) {
      // Bytes after the ClientHello in its last record would be another handshake message the server reads in the clear.
      if (declared > total) throw new ClientHelloError('TLS record carries more than the ClientHello');
      if (collected >= total) return Buffer.concat(fragments, total);
    }
    offset += RECORD_HEADER + length;
  }
  return undefined;
}

/** Bounds-checked reads over one ClientHello; every overrun is a ClientHelloError naming the field. */
class Cursor {
  constructor(
    private readonly data: Buffer,
    public position: number,
    private readonly end: number,
  ) {}

  get remaining(): number {
    return this.end - this.position;
  }

  u8(field: string): number {
    return this.take(1, field)[0]!;
  }

  u16(field: string): number {
    return this.take(2, field).readUInt16BE(0);
  }

  take(length: number, field: string): Buffer {
    if (length > this.remaining) throw new ClientHelloError(`ClientHello ${field} is truncated`);
    const out = this.data.subarray(this.position, this.position + length);
    this.position += length;
    return out;
  }

  /** A sub-cursor over a length-prefixed vector; its bytes are consumed here. */
  vector(lengthBytes: 1 | 2, field: string): Cursor {
    const length = lengthBytes === 1 ? this.u8(field) : this.u16(field);
    const start = this.position;
    this.take(length, field);
    return new Cursor(this.data, start, start + length);
  }
}

function readClientHello(message: Buffer): ClientHelloResult {
  const body = new Cursor(message, 4, message.length);
  body.take(2, 'legacy_version');
  body.take(32, 'random');
  if (body.vector(1, 'session_id').remaining > 32)
    throw new ClientHelloError('ClientHello session_id is longer than 32 bytes');
  const suites = body.vector(2, 'cipher_suites').remaining;
  if (suites === 0 || suites % 2 !== 0) throw new ClientHelloError(`ClientHello cipher_suites has ${suites} bytes`);
  if (body.vector(1, 'compression_methods').remaining === 0)
    throw new ClientHelloError('ClientHello has no compression methods');
  const result: { kind: 'client-hello'; serverName?: string; alpn?: string[]; ech?: true } = { kind: 'client-hello' };
  if (body.remaining === 0) return result;
  const extensions = body.vector(2, 'extensions');
  if (body.remaining !== 0) throw new ClientHelloError(`ClientHello has ${body.remaining} bytes after its extensions`);
  const seen = new Set<number>();
  while (extensions.remaining > 0) {
    const type = extensions.u16('extension type');
    const data = extensions.vector(2, `extension ${type}`);
    if (seen.has(type)) throw new ClientHelloError(`ClientHello repeats extension ${type}`);
    seen.add(type);
    if (type === EXT_SERVER_NAME) {
      const serverName = readServerName(data);
      if (serverName !== undefined) result.serverName = serverName;
    } else if (type === EXT_ALPN) {
      result.alpn = readAlpn(data);
    } else if (type === EXT_ECH || type === EXT_ESNI) {
      result.ech = true;
    }
  }
  return result;
}

function readServerName(extension: Cursor): string | undefined {
  const list = extension.vector(2, 'server_name list');
  if (extension.remaining !== 0 || list.remaining === 0)
    throw new ClientHelloError('ClientHello server_name extension is malformed');
  let hostName: string | undefined;
  while (list.remaining > 0) {
    const nameType = list.u8('server_name type');
    const entry = list.vector(2, 'server_name');
    // host_name (0) is the only type RFC 6066 defines. Servers differ on others (OpenSSL refuses the
    // hello, Go skips the entry), so a name we would not read is refused rather than skipped.
    if (nameType !== 0) throw new ClientHelloError(`ClientHello server_name entry of type ${nameType}, not host_name`);
    if (hostName !== undefined) throw new ClientHelloError('ClientHello carries more than one host_name');
    const bytes = entry.take(entry.remaining, 'host_name');
    if (bytes.length === 0 || bytes.length > 255)
      throw new ClientHelloError(`ClientHello host_name of ${bytes.length} bytes`);
    if (bytes.some((byte) => byte < 0x21 || byte > 0x7e))
      throw new ClientHelloError('ClientHello host_name has bytes outside printable ASCII');
    hostName = bytes.toString('latin1');
  }
  return hostName;
}

function readAlpn(extension: Cursor): string[] {
  const list = extension.vector(2, 'ALPN list');
  if (extension.remaining !== 0 || list.remaining === 0)
    throw new ClientHelloError('ClientHello ALPN extension is malformed');
  const protocols: string[] = [];
  while (list.remaining > 0) {
    const protocol = list.vector(1, 'ALPN protocol');
    if (protocol.remaining === 0) throw new ClientHelloError('ClientHello ALPN list has an empty protocol name');
    protocols.push(protocol.take(protocol.remaining, 'ALPN protocol').toString('latin1'));
  }
  return protocols;
}
