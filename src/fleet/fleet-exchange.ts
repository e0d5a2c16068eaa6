/**
 * The attested exchange between two enclaves of one fleet (wire: src/wire/fleet-message.ts). Each
 * side proves itself with a fresh attestation document carrying the other side's nonce, a fresh
 * ECDH P-384 key as public_key and a reserved fleet binding as user_data; each checks the other's
 * chain, nonce, debug flag and PCRs (equal to its own), then the two states travel sealed with
 * AES-256-GCM under keys from HKDF(ECDH secret, transcript hash), the transcript hash as AAD. The
 * parent sees only documents (public) and ciphertext.
 *
 * Nothing here trusts the network: a peer whose PCRs differ, a document with a stale nonce, a
 * debug-mode document (unless allowed) or a tampered ciphertext is refused, and the refusal is sent
 * to the other side (REFUSAL frame), so both log the same ERR_FLEET_* code.
 */
import {
  createCipheriv,
  createDecipheriv,
  createHash,
  createPublicKey,
  diffieHellman,
  generateKeyPairSync,
  hkdfSync,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import type { Duplex } from 'node:stream';
import type { AttestationRequest, Nsm } from '../attestation/nsm.js';
import { bytesEqual } from '../attestation/attestation-policy.js';
import { AttestationError } from '../verify/attestation-error.js';
import { isDebugDocument } from '../verify/document.js';
import { decodeAttestation, verifyAttestation, type AttestationDocument } from '../verify/verifier.js';
import type { RootInput } from '../verify/root-store.js';
import {
  FLEET_IV_BYTES,
  FLEET_NONCE_BYTES,
  FLEET_PROTOCOL_VERSION,
  FLEET_TAG_BYTES,
  FRAME,
  MAX_LISTED_PEERS,
  MAX_SEALED_STATE_BYTES,
} from '../wire/fleet-message.js';
import { FleetChannel } from './fleet-channel.js';
import { FleetError, type FleetRefusalCode } from './fleet-error.js';
import { NonceBook } from './nonce-book.js';

/** What a fleet document's user_data starts with (SPEC "Reserved bindings"); the internal API refuses it to the app. */
export const FLEET_BINDING_PREFIX = 'enclave-runtime/fleet/v1:';

export type FleetRole = 'requester' | 'responder';

/**
 * Fleet NSM calls (both roles) one member runs at once. The NSM queue is shared with the app's
 * /attestation-doc and the TLS certificates (DEFAULT_NSM_MAX_QUEUE = 256 waiting calls), and a HELLO
 * costs an attestation before its sender proved anything; a small fixed share keeps whoever reaches
 * fleet.listen from filling that queue (and /health from counting ERR_NSM_BUSY), while a round with
 * a few peers still runs its exchanges side by side.
 */
export const MAX_FLEET_NSM_CALLS = 4;
/**
 * HELLOs answered in a burst, then per second: a round of the largest fleet (MAX_LISTED_PEERS
 * members) arrives as one burst, and at the default 5 s interval is under 13 per second.
 */
export const HELLO_BURST = MAX_LISTED_PEERS;
export const HELLOS_PER_SECOND = 16;

/** A token bucket: bounded (never holds more than `burst`), refilled by elapsed time. */
export class HelloBucket {
  #tokens: number;
  #at: number;
  readonly #burst: number;
  readonly #perSecond: number;
  readonly #now: () => number;

  constructor(burst = HELLO_BURST, perSecond = HELLOS_PER_SECOND, now: () => number = Date.now) {
    this.#burst = burst;
    this.#perSecond = perSecond;
    this.#now = now;
    this.#tokens = burst;
    this.#at = now();
  }

  take(): boolean {
    const now = this.#now();
    this.#tokens = Math.min(this.#burst, this.#tokens + (Math.max(0, now - this.#at) * this.#perSecond) / 1000);
    this.#at = now;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}

/**
 * A fleet document's user_data: the prefix, the role, then SHA-256 of the exchange key's DER SPKI.
 * The role keeps a responder's document from being played back as a requester's; the reserved
 * prefix keeps the app (which can ask its own NSM for documents with any public_key) from ever
 * holding one, so only the runtime of a same-image enclave can take part.
 */
export function fleetUserData(role: FleetRole, spkiDer: Uint8Array): Uint8Array {
  return new Uint8Array(
    Buffer.concat([
      Buffer.from(`${FLEET_BINDING_PREFIX}${role}:`, 'ascii'),
      createHash('sha256').update(spkiDer).digest(),
    ]),
  );
}

/** The PCRs two members must share: PCR0-2, and PCR8 (the signing certificate; zero when the image is unsigned). */
export type FleetPcrs = Readonly<Record<number, Uint8Array>>;

/**
 * The PCRs of this enclave that peers must match, read from one of its own documents. PCR8 is
 * compared even when zero: an unsigned member must not accept a signed one (or the reverse), as
 * the same image bytes signed by someone else measure equal in PCR0-2.
 */
export function fleetPcrsOf(document: AttestationDocument): FleetPcrs {
  const pcrs: Record<number, Uint8Array> = {};
  for (const index of [0, 1, 2, 8]) pcrs[index] = document.pcrs.get(index) ?? new Uint8Array(48);
  return pcrs;
}

export interface ExchangeContext {
  nsm: Nsm;
  /** The attestation root peers' documents must chain to (the AWS root, or a test root). */
  root?: RootInput | undefined;
  /** This enclave's own PCRs; a peer's must be equal. */
  pcrs: FleetPcrs;
  /** Accept a debug-mode peer (both sides must allow it for an exchange to succeed). */
  allowDebug: boolean;
  /**
   * fleet.debug_psk, mixed into the key derivation when debug is allowed. Debug documents carry
   * all-zero PCRs, so PCR equality no longer names the image; only holders of this secret derive
   * the keys, so a debug enclave of any other image cannot read or write the state.
   */
  debugPsk?: Uint8Array | undefined;
  /** Requester nonces seen by the responder, against a replayed HELLO. */
  seen: NonceBook;
  /**
   * This member's own requester nonces in flight: a HELLO carrying one is this member talking to
   * itself (a DNS name listing every parent lists its own), answered ERR_FLEET_SELF.
   */
  outgoing?: Set<string>;
  /**
   * Own requester nonces this member's responder received: the only evidence of "self" that is
   * trusted. A peer's REFUSAL saying ERR_FLEET_SELF is unauthenticated, so it never counts.
   */
  selfSeen?: Set<string>;
  timeoutMs: number;
  /** Fleet NSM calls in flight (created on first use; shared by every exchange on this context). */
  nsmCalls?: { inFlight: number };
  /** HELLOs this responder still answers (created on first use). */
  hellos?: HelloBucket;
  /** The verification clock; tests move it. */
  now?: () => number;
}

export interface ExchangeResult {
  /** The other side's state, decrypted and authenticated (its format is the state store's). */
  peerState: Buffer;
  /** The peer's module_id, for logs. */
  peerModuleId: string;
}

/** The requester's side: proves itself, sends `ownState`, returns the responder's state. */
export async function requestExchange(
  socket: Duplex,
  context: ExchangeContext,
  ownState: () => Buffer,
  peerName: string,
): Promise<ExchangeResult> {
  const channel = new FleetChannel(socket, context.timeoutMs, peerName);
  let outgoingKey: string | undefined;
  try {
    const nonceR = randomBytes(FLEET_NONCE_BYTES);
    outgoingKey = nonceR.toString('hex');
    context.outgoing?.add(outgoingKey);
    const hello = channel.send(FRAME.HELLO, [Buffer.of(FLEET_PROTOCOL_VERSION), nonceR]);
    const [docS, nonceS] = (await channel.next(FRAME.CHALLENGE)) as [Buffer, Buffer];
    const challenge = frameBytes(FRAME.CHALLENGE, [docS, nonceS]);
    if (nonceS.byteLength !== FLEET_NONCE_BYTES)
      throw refusal(
        channel,
        'ERR_FLEET_FRAME',
        `the responder's nonce is ${nonceS.byteLength} bytes, not ${FLEET_NONCE_BYTES}`,
      );
    const { document: peer, key: peerKey } = checkPeer(channel, context, docS, nonceR, 'responder');

    const own = ecdhKeyPair();
    const docR = await attestLimited(channel, context, {
      nonce: nonceS,
      publicKey: own.spki,
      userData: fleetUserData('requester', own.spki),
    });
    const keys = deriveKeys(own.privateKey, peerKey, hello, challenge, docR, debugPskOf(context));
    const sealedR = seal(keys.toResponder, keys.salt, ownState());
    const proof = channel.send(FRAME.PROOF, [docR, sealedR.iv, sealedR.ciphertext]);

    const [iv, ciphertext] = (await channel.next(FRAME.STATE)) as [Buffer, Buffer];
    const aad = createHash('sha256').update(keys.salt).update(proof).digest();
    const peerState = open(channel, keys.toRequester, aad, iv, ciphertext, 'responder');
    channel.close();
    return { peerState, peerModuleId: peer.moduleId };
  } catch (error) {
    channel.close();
    // Decided here, from what this member's own responder saw, never from the peer's word.
    if (outgoingKey !== undefined && context.selfSeen?.delete(outgoingKey))
      throw new FleetError('ERR_FLEET_SELF', `${peerName} is this member itself`, { cause: error });
    throw error;
  } finally {
    if (outgoingKey !== undefined) context.outgoing?.delete(outgoingKey);
  }
}

/**
 * The responder's side: checks the requester, takes its state, answers with `ownState`. `take`, if
 * given, gets the requester's state before the answer is sent (a failure there fails the exchange).
 */
export async function answerExchange(
  socket: Duplex,
  context: ExchangeContext,
  ownState: () => Buffer,
  peerName: string,
  take?: (peerState: Buffer) => Promise<void>,
): Promise<ExchangeResult> {
  const channel = new FleetChannel(socket, context.timeoutMs, peerName);
  try {
    const [version, nonceR] = (await channel.next(FRAME.HELLO)) as [Buffer, Buffer];
    const hello = frameBytes(FRAME.HELLO, [version, nonceR]);
    if (version.byteLength !== 1 || version[0] !== FLEET_PROTOCOL_VERSION)
      throw refusal(
        channel,
        'ERR_FLEET_FRAME',
        `fleet protocol version ${version.toString('hex')} is not spoken here (version ${FLEET_PROTOCOL_VERSION})`,
      );
    if (nonceR.byteLength !== FLEET_NONCE_BYTES)
      throw refusal(
        channel,
        'ERR_FLEET_FRAME',
        `the requester's nonce is ${nonceR.byteLength} bytes, not ${FLEET_NONCE_BYTES}`,
      );
    if (context.outgoing?.has(nonceR.toString('hex'))) {
      context.selfSeen?.add(nonceR.toString('hex'));
      channel.refuse('ERR_FLEET_SELF', 'this is the requesting member itself');
      throw new FleetError('ERR_FLEET_SELF', 'a HELLO from this member itself');
    }
    if (!context.seen.add(nonceR))
      throw refusal(
        channel,
        'ERR_FLEET_NONCE',
        'the requester nonce was already used in an earlier exchange (a replayed HELLO); each exchange needs a fresh one',
      );

    // Before any key generation or NSM call: the requester has proved nothing yet.
    if (!(context.hellos ??= new HelloBucket()).take())
      throw refusal(channel, 'ERR_FLEET_BUSY', `more than ${HELLOS_PER_SECOND} HELLOs per second; try again later`);
    if ((context.nsmCalls ??= { inFlight: 0 }).inFlight >= MAX_FLEET_NSM_CALLS)
      throw refusal(
        channel,
        'ERR_FLEET_BUSY',
        `${MAX_FLEET_NSM_CALLS} fleet attestations are in flight; try again later`,
      );
    const own = ecdhKeyPair();
    const nonceS = randomBytes(FLEET_NONCE_BYTES);
    const docS = await attestLimited(channel, context, {
      nonce: nonceR,
      publicKey: own.spki,
      userData: fleetUserData('responder', own.spki),
    });
    const challenge = channel.send(FRAME.CHALLENGE, [docS, nonceS]);

    const [docR, ivR, sealedR] = (await channel.next(FRAME.PROOF)) as [Buffer, Buffer, Buffer];
    const proof = frameBytes(FRAME.PROOF, [docR, ivR, sealedR]);
    const { document: peer, key: peerKey } = checkPeer(channel, context, docR, nonceS, 'requester');
    const keys = deriveKeys(own.privateKey, peerKey, hello, challenge, docR, debugPskOf(context));
    const peerState = open(channel, keys.toResponder, keys.salt, ivR, sealedR, 'requester');
    await take?.(peerState);

    const aad = createHash('sha256').update(keys.salt).update(proof).digest();
    const sealed = seal(keys.toRequester, aad, ownState());
    channel.send(FRAME.STATE, [sealed.iv, sealed.ciphertext]);
    channel.close();
    return { peerState, peerModuleId: peer.moduleId };
  } catch (error) {
    channel.close();
    throw error;
  }
}

/** One fleet NSM call, within MAX_FLEET_NSM_CALLS, and not for a peer that already hung up. */
async function attestLimited(
  channel: FleetChannel,
  context: ExchangeContext,
  request: AttestationRequest,
): Promise<Buffer> {
  if (channel.socket.destroyed)
    throw new FleetError('ERR_FLEET_UNREACHABLE', 'the peer closed the connection before the attestation');
  const calls = (context.nsmCalls ??= { inFlight: 0 });
  if (calls.inFlight >= MAX_FLEET_NSM_CALLS)
    throw refusal(
      channel,
      'ERR_FLEET_BUSY',
      `${MAX_FLEET_NSM_CALLS} fleet attestations are in flight; try again later`,
    );
  calls.inFlight += 1;
  try {
    return Buffer.from(await context.nsm.attest(request));
  } finally {
    calls.inFlight -= 1;
  }
}

/**
 * Verifies the peer's document as `role` must have made it; refuses (both sides) on any failure.
 * The cheap checks (nonce, PCRs, debug flag, binding) run on the decoded document first, so a
 * stranger's document costs no chain verification.
 */
function checkPeer(
  channel: FleetChannel,
  context: ExchangeContext,
  raw: Buffer,
  nonce: Buffer,
  role: FleetRole,
): { document: AttestationDocument; key: KeyObject } {
  const notVerified = (error: unknown) => {
    const code = error instanceof AttestationError ? error.code : 'ERR_UNKNOWN';
    return refusal(
      channel,
      'ERR_FLEET_ATTESTATION',
      `the ${role}'s attestation document does not verify (${code}): ${(error as Error).message}`,
    );
  };
  let document: AttestationDocument;
  try {
    document = decodeAttestation(raw);
  } catch (error) {
    throw notVerified(error);
  }
  if (document.nonce === null || !bytesEqual(document.nonce, nonce))
    throw refusal(
      channel,
      'ERR_FLEET_NONCE',
      `the ${role}'s document does not carry the nonce sent in this exchange: a replayed or stale document`,
    );
  if (isDebugDocument(document) && !context.allowDebug)
    throw refusal(
      channel,
      'ERR_FLEET_DEBUG',
      `the ${role} runs in debug mode (PCR0-2 all zero), so its parent can read its memory; set fleet.allow_debug on every member to accept debug enclaves`,
    );
  const differ = Object.entries(context.pcrs)
    .filter(([index, value]) => !bytesEqual(document.pcrs.get(Number(index)) ?? null, value))
    .map(([index]) => `PCR${index}`);
  if (differ.length > 0)
    throw refusal(
      channel,
      'ERR_FLEET_PCR',
      `the ${role} runs another enclave image: ${differ.join(', ')} differ from this enclave's; only enclaves with equal PCRs share a fleet`,
    );
  const spki = document.publicKey;
  let key: KeyObject | undefined;
  try {
    key = spki === null ? undefined : createPublicKey({ key: Buffer.from(spki), format: 'der', type: 'spki' });
  } catch {
    key = undefined;
  }
  if (
    spki === null ||
    key === undefined ||
    key.asymmetricKeyType !== 'ec' ||
    key.asymmetricKeyDetails?.namedCurve !== 'secp384r1' ||
    document.userData === null ||
    !bytesEqual(document.userData, fleetUserData(role, spki))
  )
    throw refusal(
      channel,
      'ERR_FLEET_BINDING',
      `the ${role}'s document does not bind a fleet exchange key: public_key must be a P-384 SPKI and user_data "${FLEET_BINDING_PREFIX}${role}:" + SHA-256 of it`,
    );
  try {
    ({ document } = verifyAttestation(raw, {
      ...(context.root === undefined ? {} : { root: context.root }),
      at: new Date((context.now ?? Date.now)()),
      allowDebug: true,
    }));
  } catch (error) {
    throw notVerified(error);
  }
  return { document, key };
}

function ecdhKeyPair(): { privateKey: KeyObject; spki: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'secp384r1' });
  return { privateKey, spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

interface ExchangeKeys {
  /** The transcript hash up to the requester's document: HKDF salt and the requester's AAD. */
  salt: Buffer;
  toResponder: Buffer;
  toRequester: Buffer;
}

/** The pre-shared key both sides mix in when debug is allowed (a config check requires it then). */
function debugPskOf(context: ExchangeContext): Uint8Array {
  return context.allowDebug && context.debugPsk ? context.debugPsk : new Uint8Array(0);
}

function deriveKeys(
  own: KeyObject,
  peer: KeyObject,
  hello: Buffer,
  challenge: Buffer,
  docR: Buffer,
  psk: Uint8Array,
): ExchangeKeys {
  const ecdh = diffieHellman({ privateKey: own, publicKey: peer });
  const secret = psk.byteLength === 0 ? ecdh : Buffer.concat([ecdh, createHash('sha256').update(psk).digest()]);
  const salt = createHash('sha256').update(hello).update(challenge).update(docR).digest();
  const derive = (info: string) =>
    Buffer.from(hkdfSync('sha256', secret, salt, `enclave-runtime/fleet/v1 ${info}`, 32));
  return { salt, toResponder: derive('requester->responder'), toRequester: derive('responder->requester') };
}

function seal(key: Buffer, aad: Buffer, plaintext: Buffer): { iv: Buffer; ciphertext: Buffer } {
  if (plaintext.byteLength + FLEET_TAG_BYTES > MAX_SEALED_STATE_BYTES)
    throw new FleetError(
      'ERR_FLEET_STATE',
      `the fleet state is ${plaintext.byteLength} bytes, over the ${MAX_SEALED_STATE_BYTES} a frame carries`,
    );
  const iv = randomBytes(FLEET_IV_BYTES);
  const cipher = createCipheriv('aes-256-gcm', key, iv);
  cipher.setAAD(aad);
  const ciphertext = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
  return { iv, ciphertext };
}

function open(channel: FleetChannel, key: Buffer, aad: Buffer, iv: Buffer, sealed: Buffer, role: FleetRole): Buffer {
  try {
    if (iv.byteLength !== FLEET_IV_BYTES || sealed.byteLength < FLEET_TAG_BYTES) throw new Error('short');
    const decipher = createDecipheriv('aes-256-gcm', key, iv);
    decipher.setAAD(aad);
    decipher.setAuthTag(sealed.subarray(sealed.byteLength - FLEET_TAG_BYTES));
    return Buffer.concat([decipher.update(sealed.subarray(0, sealed.byteLength - FLEET_TAG_BYTES)), decipher.final()]);
  } catch {
    throw refusal(
      channel,
      'ERR_FLEET_DECRYPT',
      `the ${role}'s sealed state does not authenticate (AES-256-GCM): tampered with on the way, or not sealed for this exchange`,
    );
  }
}

/** The frame's bytes as the sender wrote them, for the transcript. */
function frameBytes(type: (typeof FRAME)[keyof typeof FRAME], fields: readonly Buffer[]): Buffer {
  const size = fields.reduce((sum, field) => sum + 4 + field.byteLength, 0);
  const out = Buffer.allocUnsafe(5 + size);
  out.writeUInt8(type, 0);
  out.writeUInt32BE(size, 1);
  let at = 5;
  for (const field of fields) {
    out.writeUInt32BE(field.byteLength, at);
    field.copy(out, at + 4);
    at += 4 + field.byteLength;
  }
  return out;
}

/** Sends the refusal to the peer and returns the error to throw here. */
function refusal(channel: FleetChannel, code: FleetRefusalCode, message: string): FleetError {
  channel.refuse(code, message);
  return new FleetError(code, message);
}
