import { X509Certificate } from 'node:crypto';
import type { SecureContext } from 'node:tls';
import { Tag } from 'cbor-x';
import { COSE_SIGN1_TAG, decodeCbor } from '../verify/cose-sign1.js';
import { decodeAttestationPayload } from '../verify/document.js';
import type { Nsm } from '../attestation/nsm.js';
import type { CertificateSource } from './certificate-source.js';
import type { TlsKeyPair } from './key-pair.js';
import type { ContextCallback, LeafContexts } from './leaf-contexts.js';
import { certificatePem } from './leaf-template.js';
import { TlsError } from './tls-error.js';

/** A leaf whose attestation document binds its key, ready to hand to a TLS handshake. */
export interface AttestedCertificate {
  readonly serverName: string;
  /** The nonce the document carries, or null for the base certificate. */
  readonly nonce: Uint8Array | null;
  /** The untagged COSE_Sign1 embedded in the SAN. */
  readonly document: Uint8Array;
  readonly certPem: string;
  readonly chainPem: string;
  /** A context of its own serving this certificate, built on first use. */
  readonly secureContext: SecureContext;
  /**
   * Answers an SNICallback with a context serving this certificate: the first few times through the key's
   * shared context (no context built: the common case of a nonce used once or twice), then through its own.
   */
  handOver(callback: ContextCallback): void;
  readonly issuedAt: Date;
  /** The leaf's notAfter. */
  readonly certificateNotAfter: Date;
  /** The notAfter of the certificate that signed the document: after it, no client can verify the document. */
  readonly documentNotAfter: Date;
  /** The earlier of the two: when this certificate stops being useful. */
  readonly expiresAt: Date;
}

export interface AttestedCertificateRequest {
  nsm: Nsm;
  source: CertificateSource;
  serverName: string;
  keyPair: TlsKeyPair;
  /** The secure contexts of `keyPair`'s leaves. */
  contexts: LeafContexts;
  nonce?: Uint8Array | undefined;
  /** The clock in ms since the epoch. */
  now?: () => number;
}

/**
 * The SANs SPEC fixes, in the evervault format: `<server name>` and
 * `<lowercase hex of the COSE_Sign1>.<server name>`, the whole hex as one (over-long) label.
 */
export function attestedDnsNames(serverName: string, document: Uint8Array): [string, string] {
  return [
    serverName,
    `${Buffer.from(document.buffer, document.byteOffset, document.byteLength).toString('hex')}.${serverName}`,
  ];
}

/**
 * Build an attested leaf: ask the NSM for a document with `user_data` = the leaf key's DER SPKI
 * (and the nonce, if any), embed it in the SAN, and have the source sign the leaf.
 */
export async function createAttestedCertificate(request: AttestedCertificateRequest): Promise<AttestedCertificate> {
  const { nsm, source, serverName, keyPair, contexts } = request;
  const nonce = request.nonce && request.nonce.length > 0 ? request.nonce : undefined;
  const issuedAt = new Date((request.now ?? Date.now)());
  const document = await nsm.attest({ userData: keyPair.spkiDer, nonce });
  const documentNotAfter = documentSigningCertificateNotAfter(document, issuedAt.getTime());
  const issued = await source.issue({
    serverName,
    dnsNames: attestedDnsNames(serverName, document),
    publicKeySpki: keyPair.spkiDer,
    attestationDocument: document,
  });
  // The context is built when a handshake needs it, so what would make it fail is checked here, where a
  // failure still means "serve the base certificate" rather than a broken handshake.
  // With the DER at hand the PEM served is made from it, so the bytes checked are the bytes served whatever a
  // source returns (the check runs once: the shared contexts and the workers trust it).
  const certPem = issued.certDer ? certificatePem(issued.certDer) : issued.certPem;
  if (!contexts.fits(certPem, issued.certDer))
    throw new TlsError('ERR_TLS_ISSUE', 'the source returned a certificate that is not for the leaf key');
  const serving = servingContexts(certPem, issued.chainPem, contexts, !nonce);
  return {
    serverName,
    nonce: nonce ? new Uint8Array(nonce) : null,
    document,
    certPem,
    chainPem: issued.chainPem,
    get secureContext() {
      return serving.secureContext();
    },
    handOver: serving.handOver,
    issuedAt,
    certificateNotAfter: issued.notAfter,
    documentNotAfter,
    expiresAt: new Date(Math.min(issued.notAfter.getTime(), documentNotAfter.getTime())),
  };
}

/**
 * How one leaf is served: a context of its own, built on first use (at once when `eager`: a base certificate
 * serves every handshake without a nonce), and the first few handshakes of a fresh leaf handed over through
 * the key's shared context instead. The main thread's store and the ingress workers both serve through this.
 * Every leaf served through this was checked against its key by createAttestedCertificate (in an ingress worker,
 * by the main thread's), so the shared context does not check it again.
 */
export function servingContexts(
  certPem: string,
  chainPem: string,
  contexts: LeafContexts,
  eager: boolean,
): { secureContext: () => SecureContext; handOver: (callback: ContextCallback) => void } {
  let own: SecureContext | undefined;
  let handedOver = 0;
  const secureContext = () => (own ??= contexts.create(certPem, chainPem));
  if (eager) secureContext();
  return {
    secureContext,
    handOver(callback) {
      try {
        if (own || handedOver >= SHARED_HANDOVERS) return callback(null, secureContext());
        handedOver += 1;
        contexts.handOver(certPem, chainPem, callback, secureContext, true);
      } catch (err) {
        // Thrown from an SNICallback it would be uncaught; handed to the callback it ends this handshake only.
        callback(new TlsError('ERR_TLS_ISSUE', `no secure context: ${(err as Error).message}`, { cause: err }));
      }
    },
  };
}

// A swap into the shared context costs about a fifth of building a context of its own (a certificate parse
// against a new SSL_CTX and a key parse), so a leaf served more often than this gets its own.
const SHARED_HANDOVERS = 4;

let lastSigningCertificate: { der: Buffer; notAfter: number } | undefined;

/**
 * An emulated NSM (QEMU's virtio-nsm) signs nothing: its documents carry zero bytes where the signing
 * certificate belongs. Their certificates are renewed as often as a real NSM's would be (its signing
 * certificates last about three hours); no client can verify such a document anyway.
 */
export const UNSIGNED_DOCUMENT_LIFETIME_MS = 3 * 60 * 60 * 1000;

/**
 * The notAfter of the document's signing certificate, or `now` + UNSIGNED_DOCUMENT_LIFETIME_MS when that
 * certificate is not X.509 (an emulated NSM). This only reads our own NSM's output to plan renewal; it verifies
 * nothing (clients do), so it reads the COSE_Sign1 without checking its header: a real NSM's says ES384.
 */
export function documentSigningCertificateNotAfter(document: Uint8Array, now: number = Date.now()): Date {
  let certificate: Uint8Array;
  try {
    certificate = decodeAttestationPayload(ownCoseSign1Payload(document)).certificate;
  } catch (err) {
    throw new TlsError(
      'ERR_TLS_ATTESTATION_DOCUMENT',
      `the NSM returned an unreadable attestation document: ${(err as Error).message}`,
      { cause: err },
    );
  }
  // The NSM signs with one certificate for hours, so every nonce document carries the same bytes: parsing them
  // once (8% of a nonce handshake's CPU before) is enough. Keyed by the bytes, so a rotated or different NSM
  // certificate is parsed afresh, never mistaken; each caller gets its own Date.
  const der = Buffer.from(certificate.buffer, certificate.byteOffset, certificate.byteLength);
  if (lastSigningCertificate?.der.equals(der) !== true) {
    let notAfter: number;
    try {
      notAfter = new Date(new X509Certificate(der).validTo).getTime();
    } catch {
      return new Date(now + UNSIGNED_DOCUMENT_LIFETIME_MS);
    }
    lastSigningCertificate = { der: Buffer.from(der), notAfter };
  }
  return new Date(lastSigningCertificate.notAfter);
}

/** The payload of a COSE_Sign1 (untagged or tag 18), with no check of its header or signature. */
function ownCoseSign1Payload(document: Uint8Array): Uint8Array {
  let value = decodeCbor(document, 'attestation document');
  if (value instanceof Tag && value.tag === COSE_SIGN1_TAG) value = value.value;
  if (!Array.isArray(value) || value.length !== 4 || !(value[2] instanceof Uint8Array)) {
    throw new Error('not a COSE_Sign1 array with a payload');
  }
  return value[2];
}
