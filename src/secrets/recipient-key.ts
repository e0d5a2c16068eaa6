import { generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import type { Nsm } from '../attestation/nsm.js';
import { MIN_RSA_BITS, openEnvelope } from './cms-envelope.js';

const generateRsa = promisify(generateKeyPair);

/** RSA 2048, the size KMS accepts for RSAES_OAEP_SHA_256 recipients; its SPKI (294 bytes) fits public_key's 1024. */
export const RECIPIENT_KEY_BITS = 2048;

/**
 * The enclave's KMS recipient key: an RSA key pair generated in memory at boot, whose public half
 * goes into attestation documents (`public_key`) so KMS encrypts answers to it. The private half
 * never leaves this object: it is not exported, written or logged, and dies with the process.
 */
export class RecipientKey {
  /** DER SubjectPublicKeyInfo, as `public_key` carries it. */
  readonly publicKeySpki: Uint8Array;
  readonly #privateKey: KeyObject;

  private constructor(privateKey: KeyObject, publicKey: KeyObject) {
    this.#privateKey = privateKey;
    this.publicKeySpki = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
  }

  /** Generates a fresh key pair (off the main thread, as node:crypto does for RSA). */
  static async generate(bits = RECIPIENT_KEY_BITS): Promise<RecipientKey> {
    if (!Number.isInteger(bits) || bits < MIN_RSA_BITS || bits > 4096)
      throw new RangeError(`recipient keys are RSA ${MIN_RSA_BITS} to 4096 bits`);
    const { privateKey, publicKey } = await generateRsa('rsa', { modulusLength: bits, publicExponent: 0x10001 });
    return new RecipientKey(privateKey, publicKey);
  }

  /** An attestation document from `nsm` whose public_key is this key, as KMS's Recipient wants. */
  attest(nsm: Nsm): Promise<Uint8Array> {
    return nsm.attest({ publicKey: this.publicKeySpki });
  }

  /** Opens a CiphertextForRecipient addressed to this key; the caller zeroes the result when done. */
  open(ciphertextForRecipient: Uint8Array): Buffer {
    return openEnvelope(ciphertextForRecipient, this.#privateKey);
  }

  /** Keeps the private key out of util.inspect and JSON, so no log or error dump can carry it. */
  toJSON(): Record<string, unknown> {
    return { kind: 'RecipientKey', bits: this.#privateKey.asymmetricKeyDetails?.modulusLength };
  }

  [Symbol.for('nodejs.util.inspect.custom')](): string {
    return `RecipientKey(RSA ${this.#privateKey.asymmetricKeyDetails?.modulusLength ?? '?'})`;
  }
}
