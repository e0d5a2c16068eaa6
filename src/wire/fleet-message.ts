/**
 * The fleet wire format, spoken enclave <-> enclave (through both parents' relays) and enclave ->
 * its own host (to pick a peer): frames of one type byte, a 4-byte big-endian body length and the
 * body. A body is a sequence of fields, each a 4-byte big-endian length and that many bytes, in the
 * order the type defines. Every type has its own byte bound, checked on the length prefix before a
 * byte of the body is buffered, so a peer cannot make the reader hold more than that.
 *
 * Exchange (R the requester, S the responder; see src/fleet/fleet-exchange.ts):
 *   R -> S  HELLO      [version, nonceR]
 *   S -> R  CHALLENGE  [docS(nonce=nonceR, public_key=ecdhS, user_data=binding), nonceS]
 *   R -> S  PROOF      [docR(nonce=nonceS, public_key=ecdhR, user_data=binding), iv, sealed state of R]
 *   S -> R  STATE      [iv, sealed state of S]
 *   either  REFUSAL    [code, message]   (then the connection closes)
 *
 * Route (enclave -> its host's fleet relay, before any exchange bytes):
 *   E -> H  PEERS_ASK  []                 H -> E  PEERS [ "host:port", ... ]
 *   E -> H  CONNECT    ["host:port"]      H -> E  CONNECTED [] then raw bytes, or REFUSAL
 */
import { RuntimeError } from '../core/errors.js';

export const FLEET_PROTOCOL_VERSION = 1;
export const FLEET_NONCE_BYTES = 32;
export const FLEET_IV_BYTES = 12;
export const FLEET_TAG_BYTES = 16;

/** The app's blob may be this large (the internal API answers 413 beyond). */
export const MAX_APP_STATE_BYTES = 1024 * 1024;
/** A sealed state: the blob in base64 (4/3), the ACME keys and chains, JSON framing; 2 MiB bounds it with room. */
export const MAX_SEALED_STATE_BYTES = 2 * 1024 * 1024;
/** A Nitro document is under 16 KiB; 32 KiB bounds it with room for a longer chain. */
export const MAX_DOCUMENT_BYTES = 32 * 1024;
const MAX_SMALL_FRAME_BYTES = 4 * 1024;
/** Peers a host lists for its enclave; more are cut (a DNS name behind a big target group). */
export const MAX_LISTED_PEERS = 64;
const MAX_HEADER_BYTES = 5;

export const FRAME = {
  HELLO: 1,
  CHALLENGE: 2,
  PROOF: 3,
  STATE: 4,
  REFUSAL: 5,
  PEERS_ASK: 16,
  PEERS: 17,
  CONNECT: 18,
  CONNECTED: 19,
} as const;

export type FrameType = (typeof FRAME)[keyof typeof FRAME];

const FRAME_NAMES = new Map<number, string>(Object.entries(FRAME).map(([name, type]) => [type, name]));

/** Largest body each type may have. */
const MAX_BODY_BYTES: Record<FrameType, number> = {
  [FRAME.HELLO]: 64,
  [FRAME.CHALLENGE]: MAX_DOCUMENT_BYTES + 64,
  [FRAME.PROOF]: MAX_DOCUMENT_BYTES + MAX_SEALED_STATE_BYTES + 64,
  [FRAME.STATE]: MAX_SEALED_STATE_BYTES + 64,
  [FRAME.REFUSAL]: MAX_SMALL_FRAME_BYTES,
  [FRAME.PEERS_ASK]: 0,
  [FRAME.PEERS]: MAX_LISTED_PEERS * (4 + 270),
  [FRAME.CONNECT]: 300,
  [FRAME.CONNECTED]: 0,
};

/** Fields each type carries. */
const FIELD_COUNT: Record<FrameType, number | 'any'> = {
  [FRAME.HELLO]: 2,
  [FRAME.CHALLENGE]: 2,
  [FRAME.PROOF]: 3,
  [FRAME.STATE]: 2,
  [FRAME.REFUSAL]: 2,
  [FRAME.PEERS_ASK]: 0,
  [FRAME.PEERS]: 'any',
  [FRAME.CONNECT]: 1,
  [FRAME.CONNECTED]: 0,
};

/** A malformed, oversized or unexpected frame. */
export class FleetFrameError extends RuntimeError {
  constructor(message: string) {
    super('ERR_FLEET_FRAME', message);
  }
}

export interface Frame {
  type: FrameType;
  fields: Buffer[];
}

export function frameName(type: number): string {
  return FRAME_NAMES.get(type) ?? `type ${type}`;
}

/** One frame's bytes; throws when the body would exceed the type's bound (a bug on our side). */
export function encodeFrame(type: FrameType, fields: readonly Uint8Array[]): Buffer {
  const size = fields.reduce((sum, field) => sum + 4 + field.byteLength, 0);
  if (size > MAX_BODY_BYTES[type])
    throw new FleetFrameError(`a ${frameName(type)} frame of ${size} bytes is over its bound ${MAX_BODY_BYTES[type]}`);
  const out = Buffer.allocUnsafe(MAX_HEADER_BYTES + size);
  out.writeUInt8(type, 0);
  out.writeUInt32BE(size, 1);
  let at = MAX_HEADER_BYTES;
  for (const field of fields) {
    out.writeUInt32BE(field.byteLength, at);
    out.set(field, at + 4);
    at += 4 + field.byteLength;
  }
  return out;
}

/** A body's bytes as its fields, checked against the type's field count. */
export function decodeFields(type: FrameType, body: Buffer): Buffer[] {
  const fields: Buffer[] = [];
  let at = 0;
  while (at < body.byteLength) {
    if (at + 4 > body.byteLength) throw new FleetFrameError(`a ${frameName(type)} frame ends inside a field length`);
    const length = body.readUInt32BE(at);
    if (at + 4 + length > body.byteLength)
      throw new FleetFrameError(`a ${frameName(type)} frame has a field longer than the frame`);
    fields.push(body.subarray(at + 4, at + 4 + length));
    at += 4 + length;
  }
  const expected = FIELD_COUNT[type];
  if (expected !== 'any' && fields.length !== expected)
    throw new FleetFrameError(`a ${frameName(type)} frame has ${fields.length} fields, expected ${expected}`);
  return fields;
}

/**
 * Splits a byte stream into frames, one at a time, holding at most one frame's bound (plus what
 * arrived with it). Chunks are kept in a list and joined once per frame, so a body trickled in
 * small pieces costs linear, not quadratic, copying.
 */
export class FrameReader {
  #chunks: Buffer[] = [];
  #size = 0;

  /** Bytes held, not yet returned as frames. */
  get buffered(): number {
    return this.#size;
  }

  append(chunk: Buffer): void {
    if (chunk.byteLength === 0) return;
    this.#chunks.push(chunk);
    this.#size += chunk.byteLength;
  }

  /**
   * The next complete frame, or undefined while it is incomplete. With `expected`, a frame of any
   * other type (a REFUSAL excepted) is refused from its header, before its body is buffered.
   */
  take(expected?: readonly FrameType[]): Frame | undefined {
    if (this.#size < MAX_HEADER_BYTES) return undefined;
    if (this.#chunks[0]!.byteLength < MAX_HEADER_BYTES) this.#chunks = [Buffer.concat(this.#chunks)];
    const head = this.#chunks[0]!;
    const type = head.readUInt8(0);
    const size = head.readUInt32BE(1);
    if (!FRAME_NAMES.has(type)) throw new FleetFrameError(`unknown fleet frame type ${type}`);
    const bound = MAX_BODY_BYTES[type as FrameType];
    if (size > bound)
      throw new FleetFrameError(`a ${frameName(type)} frame of ${size} bytes is over its bound of ${bound} bytes`);
    if (expected !== undefined && type !== FRAME.REFUSAL && !expected.includes(type as FrameType))
      throw new FleetFrameError(`expected a ${expected.map(frameName).join(' or ')} frame, got ${frameName(type)}`);
    if (this.#size < MAX_HEADER_BYTES + size) return undefined;
    const all = this.#chunks.length === 1 ? head : Buffer.concat(this.#chunks, this.#size);
    const body = Buffer.from(all.subarray(MAX_HEADER_BYTES, MAX_HEADER_BYTES + size));
    const rest = all.subarray(MAX_HEADER_BYTES + size);
    this.#chunks = rest.byteLength === 0 ? [] : [rest];
    this.#size = rest.byteLength;
    return { type: type as FrameType, fields: decodeFields(type as FrameType, body) };
  }

  /** Every frame completed by `chunk`; bytes after the last complete frame stay buffered (see `rest`). */
  push(chunk: Buffer): Frame[] {
    this.append(chunk);
    const frames: Frame[] = [];
    for (let frame = this.take(); frame; frame = this.take()) frames.push(frame);
    return frames;
  }

  /** Bytes received after the frames returned so far (a relay's first piped bytes). */
  rest(): Buffer {
    const rest = Buffer.concat(this.#chunks, this.#size);
    this.#chunks = [];
    this.#size = 0;
    return rest;
  }
}

/** `host:port` as peers are named on the wire: a DNS name, an IPv4 address or a bracketed IPv6 one. */
export const PEER_ADDRESS = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?):\d{1,5}$/;
