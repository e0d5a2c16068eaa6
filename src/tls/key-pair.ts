import { generateKeyPair, type KeyObject } from 'node:crypto';
import { inspect, promisify } from 'node:util';

const generateEcKeyPair = promisify(generateKeyPair);

/**
 * A TLS leaf key pair: ECDSA P-256, whose signatures are cheap enough for the per-nonce path.
 * The private half is held only as a KeyObject and PEM for tls.createSecureContext; JSON and
 * util.inspect show the public half only, so a stray log call cannot leak it.
 */
export class TlsKeyPair {
  /** DER SubjectPublicKeyInfo: what the attestation document's `user_data` carries. */
  readonly spkiDer: Uint8Array;
  readonly publicKey: KeyObject;
  readonly #privateKey: KeyObject;
  #privateKeyPem: string | undefined;

  constructor(publicKey: KeyObject, privateKey: KeyObject) {
    this.publicKey = publicKey;
    this.#privateKey = privateKey;
    this.spkiDer = new Uint8Array(publicKey.export({ type: 'spki', format: 'der' }));
  }

  /** The private key, for signing. */
  get privateKey(): KeyObject {
    return this.#privateKey;
  }

  /** PKCS#8 PEM of the private key, the form tls.createSecureContext takes. */
  get privateKeyPem(): string {
    this.#privateKeyPem ??= this.#privateKey.export({ type: 'pkcs8', format: 'pem' }).toString();
    return this.#privateKeyPem;
  }

  /** PKCS#8 DER of the private key. */
  privateKeyPkcs8Der(): Uint8Array {
    return new Uint8Array(this.#privateKey.export({ type: 'pkcs8', format: 'der' }));
  }

  toJSON(): { algorithm: string; spki: string } {
    return { algorithm: 'ECDSA P-256', spki: Buffer.from(this.spkiDer).toString('base64') };
  }

  [inspect.custom](): string {
    return `TlsKeyPair(ECDSA P-256, spki …${Buffer.from(this.spkiDer).toString('hex').slice(-16)})`;
  }
}

/** Generate a fresh ECDSA P-256 key pair off the main thread (libuv pool). */
export async function generateTlsKeyPair(): Promise<TlsKeyPair> {
  const { publicKey, privateKey } = await generateEcKeyPair('ec', { namedCurve: 'prime256v1' });
  return new TlsKeyPair(publicKey, privateKey);
}
