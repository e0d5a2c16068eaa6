// @peculiar/x509 needs the Reflect metadata polyfill loaded before it (see certificate-authority.ts).
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createPublicKey, webcrypto } from 'node:crypto';
import { MAX_CSR_CHARS } from '../wire/provisioner-protocol.js';
import { ProvisionerRefusal } from './provisioner-error.js';

x509.cryptoProvider.set(webcrypto);

const PEM =
  /^\s*-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----([A-Za-z0-9+/=\s]+)-----END (?:NEW )?CERTIFICATE REQUEST-----\s*$/;
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/;
// The curves an intermediate CA key may use: what our own CA code signs with.
const CURVES: ReadonlySet<string> = new Set(['prime256v1', 'secp384r1']);

/**
 * A PKCS#10 request as the provisioner reads it: only its key and its self-signature matter. The
 * subject and any requested extensions are ignored; the provisioner decides every field it signs.
 */
export class SigningRequest {
  /** DER SubjectPublicKeyInfo of the requested CA key. */
  readonly spkiDer: Uint8Array;
  readonly #csr: x509.Pkcs10CertificateRequest;

  private constructor(csr: x509.Pkcs10CertificateRequest, spkiDer: Uint8Array) {
    this.#csr = csr;
    this.spkiDer = spkiDer;
  }

  /** Parse a CSR given as PEM or base64 DER; refuses (ERR_PROVISIONER_CSR) anything else, and keys other than ECDSA P-256/P-384. */
  static parse(text: string): SigningRequest {
    if (text.length > MAX_CSR_CHARS) throw csrRefusal(`the CSR is more than ${MAX_CSR_CHARS} characters`);
    const pem = PEM.exec(text);
    const base64 = (pem ? pem[1]! : text).replace(/\s+/g, '');
    if (!BASE64.test(base64))
      throw csrRefusal('the CSR is neither PEM ("-----BEGIN CERTIFICATE REQUEST-----") nor base64 DER');
    let csr: x509.Pkcs10CertificateRequest;
    try {
      csr = new x509.Pkcs10CertificateRequest(Buffer.from(base64, 'base64'));
    } catch (error) {
      throw csrRefusal(
        `the CSR is not a PKCS#10 certification request (${(error as Error).message.slice(0, 120)})`,
        error,
      );
    }
    const spkiDer = new Uint8Array(csr.publicKey.rawData);
    let details;
    try {
      const key = createPublicKey({ key: Buffer.from(spkiDer), format: 'der', type: 'spki' });
      details = { type: key.asymmetricKeyType, curve: key.asymmetricKeyDetails?.namedCurve };
    } catch (error) {
      throw csrRefusal("the CSR's public key does not parse", error);
    }
    if (details.type !== 'ec' || details.curve === undefined || !CURVES.has(details.curve)) {
      throw csrRefusal(
        `the CSR's key is ${details.type}${details.curve ? ` ${details.curve}` : ''}; an intermediate CA key must be ECDSA P-256 or P-384`,
      );
    }
    return new SigningRequest(csr, spkiDer);
  }

  /** Refuses (ERR_PROVISIONER_CSR) unless the CSR is signed by its own key: proof the requester holds it. */
  async verifySignature(): Promise<void> {
    let valid: boolean;
    try {
      valid = await this.#csr.verify();
    } catch (error) {
      throw csrRefusal(`the CSR's self-signature cannot be checked (${(error as Error).message.slice(0, 120)})`, error);
    }
    if (!valid)
      throw csrRefusal("the CSR's self-signature does not verify: the requester has not shown it holds the key");
  }
}

function csrRefusal(message: string, cause?: unknown): ProvisionerRefusal {
  return new ProvisionerRefusal(400, 'ERR_PROVISIONER_CSR', message, cause === undefined ? undefined : { cause });
}
