/**
 * Just enough RFC 1035 for a filtering DNS forwarder: read a query's single question, read a
 * response's A/AAAA/CNAME answers (to learn which names an address belongs to), answer with
 * REFUSED/NXDOMAIN/SERVFAIL/FORMERR, and frame messages on TCP.
 *
 * Names are returned in presentation format with the case kept as sent (resolvers using
 * 0x20 randomisation check it in the echo): labels joined by '.', no trailing dot, the root
 * as '.', and '.', '\' and bytes outside printable ASCII escaped as '\.', '\\' and '\DDD'.
 * Such an escaped name never passes normaliseDomainName, so odd labels are denied, not guessed at.
 */
import { SocketAddress } from 'node:net';
import { RuntimeError } from '../core/errors.js';

/** Malformed DNS wire data; a forwarder answers FORMERR when it can, else drops the message. */
export class DnsFormatError extends RuntimeError {
  constructor(message: string) {
    super('ERR_DNS_FORMAT', message);
  }
}

export const DNS_MAX_MESSAGE_LENGTH = 65535;
export const DNS_MAX_NAME_LENGTH = 255;
export const DNS_HEADER_LENGTH = 12;
// A 255-byte name has at most 127 labels; more jumps than that can only be a trick.
const MAX_POINTER_JUMPS = 127;

export const DnsType = {
  A: 1,
  NS: 2,
  CNAME: 5,
  SOA: 6,
  PTR: 12,
  MX: 15,
  TXT: 16,
  AAAA: 28,
  SRV: 33,
  OPT: 41,
  HTTPS: 65,
  ANY: 255,
} as const;
export const DnsRcode = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 } as const;

export interface DnsHeader {
  id: number;
  qr: boolean;
  opcode: number;
  aa: boolean;
  tc: boolean;
  rd: boolean;
  ra: boolean;
  ad: boolean;
  cd: boolean;
  rcode: number;
  qdcount: number;
  ancount: number;
  nscount: number;
  arcount: number;
}

export interface DnsQuestion {
  name: string;
  type: number;
  class: number;
}

/** An answer record; `data` is the address for A/AAAA, the target for CNAME, absent otherwise. */
export interface DnsAnswer {
  name: string;
  type: number;
  class: number;
  ttl: number;
  data?: string;
}

export interface DnsQuery {
  header: DnsHeader;
  question: DnsQuestion;
}

export interface DnsResponse {
  header: DnsHeader;
  questions: DnsQuestion[];
  answers: DnsAnswer[];
}

/** Read the 12-byte header of a DNS message. */
export function parseDnsHeader(message: Buffer): DnsHeader {
  if (message.length > DNS_MAX_MESSAGE_LENGTH)
    throw new DnsFormatError(`DNS message of ${message.length} bytes exceeds ${DNS_MAX_MESSAGE_LENGTH}`);
  if (message.length < DNS_HEADER_LENGTH)
    throw new DnsFormatError(`DNS message of ${message.length} bytes is shorter than the 12-byte header`);
  const flags = message.readUInt16BE(2);
  return {
    id: message.readUInt16BE(0),
    qr: (flags & 0x8000) !== 0,
    opcode: (flags >> 11) & 0x0f,
    aa: (flags & 0x0400) !== 0,
    tc: (flags & 0x0200) !== 0,
    rd: (flags & 0x0100) !== 0,
    ra: (flags & 0x0080) !== 0,
    ad: (flags & 0x0020) !== 0,
    cd: (flags & 0x0010) !== 0,
    rcode: flags & 0x0f,
    qdcount: message.readUInt16BE(4),
    ancount: message.readUInt16BE(6),
    nscount: message.readUInt16BE(8),
    arcount: message.readUInt16BE(10),
  };
}

/** Read a query that can be forwarded: not a response, exactly one question. Later sections are not read. */
export function parseDnsQuery(message: Buffer): DnsQuery {
  const header = parseDnsHeader(message);
  if (header.qr) throw new DnsFormatError('DNS message is a response, not a query');
  if (header.qdcount !== 1)
    throw new DnsFormatError(`DNS query has ${header.qdcount} questions; exactly one is required`);
  return { header, question: readQuestion(message, DNS_HEADER_LENGTH).question };
}

/** Read a response's questions and answer records; authority and additional sections are not read. */
export function parseDnsResponse(message: Buffer): DnsResponse {
  const header = parseDnsHeader(message);
  const questions: DnsQuestion[] = [];
  const answers: DnsAnswer[] = [];
  let offset = DNS_HEADER_LENGTH;
  for (let i = 0; i < header.qdcount; i++) {
    const read = readQuestion(message, offset);
    questions.push(read.question);
    offset = read.end;
  }
  for (let i = 0; i < header.ancount; i++) {
    const read = readAnswer(message, offset);
    answers.push(read.answer);
    offset = read.end;
  }
  return { header, questions, answers };
}

function readQuestion(message: Buffer, offset: number): { question: DnsQuestion; end: number } {
  const { name, end } = readName(message, offset, message.length);
  if (end + 4 > message.length) throw new DnsFormatError(`DNS question for ${name} is truncated`);
  return { question: { name, type: message.readUInt16BE(end), class: message.readUInt16BE(end + 2) }, end: end + 4 };
}

function readAnswer(message: Buffer, offset: number): { answer: DnsAnswer; end: number } {
  const { name, end: nameEnd } = readName(message, offset, message.length);
  if (nameEnd + 10 > message.length) throw new DnsFormatError(`DNS record for ${name} is truncated`);
  const type = message.readUInt16BE(nameEnd);
  const ttl = message.readUInt32BE(nameEnd + 4);
  const rdataStart = nameEnd + 10;
  const end = rdataStart + message.readUInt16BE(nameEnd + 8);
  if (end > message.length) throw new DnsFormatError(`DNS record data for ${name} runs past the end of the message`);
  const answer: DnsAnswer = {
    name,
    type,
    class: message.readUInt16BE(nameEnd + 2),
    // RFC 2181 section 8: a TTL with the top bit set is to be read as zero.
    ttl: ttl > 0x7fffffff ? 0 : ttl,
  };
  if (type === DnsType.A || type === DnsType.AAAA) {
    const size = type === DnsType.A ? 4 : 16;
    if (end - rdataStart !== size)
      throw new DnsFormatError(
        `DNS ${type === DnsType.A ? 'A' : 'AAAA'} record for ${name} has ${end - rdataStart} data bytes, not ${size}`,
      );
    answer.data = formatAddress(message.subarray(rdataStart, end));
  } else if (type === DnsType.CNAME) {
    const target = readName(message, rdataStart, end);
    if (target.end !== end) throw new DnsFormatError(`DNS CNAME record for ${name} has bytes after its target name`);
    answer.data = target.name;
  }
  return { answer, end };
}

/**
 * Read a possibly compressed name at `offset`; its uncompressed bytes must end by `limit`.
 * Every pointer must go strictly backwards from where the current run of labels began, which
 * alone rules out loops; the jump count and the 255-byte name bound are belts and braces.
 */
function readName(message: Buffer, offset: number, limit: number): { name: string; end: number } {
  const labels: string[] = [];
  let position = offset;
  let runStart = offset;
  let end = -1;
  let wireLength = 1;
  let jumps = 0;
  for (;;) {
    if (position >= limit) throw new DnsFormatError(`DNS name at offset ${offset} is truncated`);
    const length = message[position]!;
    if (length === 0) {
      if (end < 0) end = position + 1;
      break;
    }
    if ((length & 0xc0) === 0xc0) {
      if (position + 1 >= limit) throw new DnsFormatError(`DNS compression pointer at offset ${position} is truncated`);
      const target = message.readUInt16BE(position) & 0x3fff;
      if (target < DNS_HEADER_LENGTH)
        throw new DnsFormatError(`DNS compression pointer at offset ${position} points into the header`);
      if (target >= runStart)
        throw new DnsFormatError(
          `DNS compression pointer at offset ${position} does not point backwards (to ${target})`,
        );
      if (++jumps > MAX_POINTER_JUMPS)
        throw new DnsFormatError(
          `DNS name at offset ${offset} has more than ${MAX_POINTER_JUMPS} compression pointers`,
        );
      if (end < 0) end = position + 2;
      position = runStart = target;
      limit = message.length;
      continue;
    }
    if ((length & 0xc0) !== 0)
      throw new DnsFormatError(
        `DNS name at offset ${offset} uses unsupported label type 0x${(length & 0xc0).toString(16)}`,
      );
    wireLength += length + 1;
    if (wireLength > DNS_MAX_NAME_LENGTH)
      throw new DnsFormatError(`DNS name at offset ${offset} is longer than ${DNS_MAX_NAME_LENGTH} bytes`);
    if (position + 1 + length > limit) throw new DnsFormatError(`DNS label at offset ${position} is truncated`);
    labels.push(presentLabel(message.subarray(position + 1, position + 1 + length)));
    position += 1 + length;
  }
  return { name: labels.length === 0 ? '.' : labels.join('.'), end };
}

function presentLabel(bytes: Buffer): string {
  let text = '';
  for (const byte of bytes) {
    if (byte === 0x2e || byte === 0x5c) text += `\\${String.fromCharCode(byte)}`;
    else if (byte < 0x21 || byte > 0x7e) text += `\\${byte.toString().padStart(3, '0')}`;
    else text += String.fromCharCode(byte);
  }
  return text;
}

function formatAddress(bytes: Buffer): string {
  if (bytes.length === 4) return bytes.join('.');
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(bytes.readUInt16BE(i).toString(16));
  return new SocketAddress({ address: groups.join(':'), family: 'ipv6' }).address;
}

/** Encode a presentation-format name (as parse returns it) uncompressed, with the root label. */
export function encodeDnsName(name: string): Buffer {
  if (name.length > 4 * DNS_MAX_NAME_LENGTH)
    throw new DnsFormatError(`DNS name ${JSON.stringify(name.slice(0, 40))}... is too long`);
  const out: number[] = [];
  let label: number[] = [];
  const flush = (): void => {
    if (label.length === 0 || label.length > 63)
      throw new DnsFormatError(`DNS name ${JSON.stringify(name)} has an empty or over-long label`);
    out.push(label.length, ...label);
    label = [];
  };
  if (/[^\x00-\x7e]/.test(name)) throw new DnsFormatError(`DNS name ${JSON.stringify(name)} is not ASCII`);
  // The root is '.'; otherwise a final unescaped '.' is an optional trailing dot.
  let afterDot = false;
  for (let i = 0; name !== '.' && i < name.length; i++) {
    const char = name.charCodeAt(i);
    afterDot = char === 0x2e;
    if (char === 0x2e) {
      flush();
    } else if (char === 0x5c) {
      const digits = /^[0-9]{3}/.exec(name.slice(i + 1, i + 4));
      if (digits && Number(digits[0]) <= 255) {
        label.push(Number(digits[0]));
        i += 3;
      } else if (i + 1 < name.length) {
        label.push(name.charCodeAt(++i));
      } else {
        throw new DnsFormatError(`DNS name ${JSON.stringify(name)} ends in a lone backslash`);
      }
    } else {
      label.push(char);
    }
  }
  if (name !== '.' && name !== '' && !afterDot) flush();
  out.push(0);
  if (out.length > DNS_MAX_NAME_LENGTH)
    throw new DnsFormatError(`DNS name ${JSON.stringify(name)} is longer than ${DNS_MAX_NAME_LENGTH} bytes`);
  return Buffer.from(out);
}

/** REFUSED for a query: the policy does not allow the name. */
export function buildRefused(query: DnsQuery): Buffer {
  return buildErrorResponse(query, DnsRcode.REFUSED);
}

/** NXDOMAIN for a query. */
export function buildNxdomain(query: DnsQuery): Buffer {
  return buildErrorResponse(query, DnsRcode.NXDOMAIN);
}

/** SERVFAIL for a query: the upstream did not answer. */
export function buildServFail(query: DnsQuery): Buffer {
  return buildErrorResponse(query, DnsRcode.SERVFAIL);
}

/** An answerless response echoing ID, opcode, RD, CD and the question, with QR=1 and RA=1. */
export function buildErrorResponse(query: DnsQuery, rcode: number): Buffer {
  const { header, question } = query;
  const fixed = Buffer.alloc(4);
  fixed.writeUInt16BE(question.type, 0);
  fixed.writeUInt16BE(question.class, 2);
  return Buffer.concat([
    responseHeader(header.id, header.opcode, header.rd, header.cd, rcode, 1),
    encodeDnsName(question.name),
    fixed,
  ]);
}

/**
 * FORMERR for raw bytes that did not parse, without a question (it may be what was malformed).
 * Undefined when there is no whole header to answer or the message is itself a response:
 * answering those would let two forwarders bounce errors at each other.
 */
export function buildFormErr(raw: Buffer): Buffer | undefined {
  if (raw.length < DNS_HEADER_LENGTH || (raw[2]! & 0x80) !== 0) return undefined;
  return responseHeader(
    raw.readUInt16BE(0),
    (raw[2]! >> 3) & 0x0f,
    (raw[2]! & 0x01) !== 0,
    (raw[3]! & 0x10) !== 0,
    DnsRcode.FORMERR,
    0,
  );
}

function responseHeader(id: number, opcode: number, rd: boolean, cd: boolean, rcode: number, qdcount: number): Buffer {
  const header = Buffer.alloc(DNS_HEADER_LENGTH);
  header.writeUInt16BE(id, 0);
  header[2] = 0x80 | ((opcode & 0x0f) << 3) | (rd ? 0x01 : 0);
  header[3] = 0x80 | (cd ? 0x10 : 0) | (rcode & 0x0f);
  header.writeUInt16BE(qdcount, 4);
  return header;
}

/** Prefix a message with its two-byte length for DNS over TCP (RFC 1035 section 4.2.2). */
export function encodeTcpFrame(message: Buffer): Buffer {
  if (message.length > DNS_MAX_MESSAGE_LENGTH)
    throw new DnsFormatError(`DNS message of ${message.length} bytes is too long for TCP framing`);
  const prefix = Buffer.alloc(2);
  prefix.writeUInt16BE(message.length, 0);
  return Buffer.concat([prefix, message]);
}

/** Splits a DNS-over-TCP byte stream into messages, holding at most one partial message. */
export class DnsTcpFrameReader {
  private pending = Buffer.alloc(0);

  constructor(private readonly maxMessageLength: number = DNS_MAX_MESSAGE_LENGTH) {
    if (!(maxMessageLength >= DNS_HEADER_LENGTH && maxMessageLength <= DNS_MAX_MESSAGE_LENGTH)) {
      throw new RangeError(`maxMessageLength must be in ${DNS_HEADER_LENGTH}..${DNS_MAX_MESSAGE_LENGTH}`);
    }
  }

  /** Bytes held back as an incomplete message. */
  get buffered(): number {
    return this.pending.length;
  }

  /** Feed received bytes; returns the messages they complete, in order. */
  push(chunk: Buffer): Buffer[] {
    let data = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const messages: Buffer[] = [];
    while (data.length >= 2) {
      const length = data.readUInt16BE(0);
      if (length < DNS_HEADER_LENGTH || length > this.maxMessageLength) {
        throw new DnsFormatError(
          `DNS TCP frame declares ${length} bytes; allowed is ${DNS_HEADER_LENGTH}..${this.maxMessageLength}`,
        );
      }
      if (data.length < 2 + length) break;
      messages.push(data.subarray(2, 2 + length));
      data = data.subarray(2 + length);
    }
    // Copy the remainder so a small partial message does not pin a large chunk.
    this.pending = Buffer.from(data);
    return messages;
  }
}
