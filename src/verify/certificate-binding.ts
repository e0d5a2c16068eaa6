// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { timingSafeEqual, X509Certificate } from 'node:crypto';
import { AttestationError } from './attestation-error.js';
import { MAX_COSE_SIGN1_BYTES } from './cose-sign1.js';
import type { AttestationDocument } from './document.js';
import { verifyAttestation, type VerifiedAttestation, type VerifyOptions } from './verifier.js';

/** A certificate carrying a document in a SAN is ~10 KiB; past this it is not one of ours. */
export const MAX_BINDING_CERTIFICATE_BYTES = 4 * MAX_COSE_SIGN1_BYTES;
const HEX_LABEL = /^(?:[0-9a-fA-F]{2})+$/;

/**
 * The attestation document embedded in a TLS certificate, evervault format (SPEC "Attested TLS
 * certificates"): the first label of the longest DNS SAN is the lowercase hex of the COSE_Sign1.
 * Throws ERR_ATTESTATION_FORMAT when the certificate carries none.
 */
export function extractAttestationFromCertificate(cert: X509Certificate | Uint8Array): Uint8Array {
  const parsed = parseBindingCertificate(cert);
  let san: x509.SubjectAlternativeNameExtension | null;
  try {
    san = parsed.getExtension(x509.SubjectAlternativeNameExtension);
  } catch (error) {
    // Extensions are parsed lazily, so a malformed one surfaces here, as the ASN.1 library's own Error.
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      `the certificate's subject alternative names do not parse: ${(error as Error).message}`,
    );
  }
  const names = (san?.names.items ?? []).filter((name) => name.type === 'dns').map((name) => name.value);
  if (names.length === 0)
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      'the certificate has no DNS subject alternative name to carry an attestation document',
    );
  const longest = names.reduce((a, b) => (b.length > a.length ? b : a));
  const label = longest.split('.', 1)[0] ?? '';
  if (!HEX_LABEL.test(label)) {
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      'the certificate carries no attestation document (the longest DNS SAN does not start with a hex label)',
    );
  }
  if (label.length / 2 > MAX_COSE_SIGN1_BYTES) {
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      `the embedded attestation document is ${label.length / 2} bytes, more than the ${MAX_COSE_SIGN1_BYTES} allowed`,
    );
  }
  return new Uint8Array(Buffer.from(label, 'hex'));
}

/** DER SubjectPublicKeyInfo of the certificate's key, exactly as written in the certificate. */
export function certificateSpki(cert: X509Certificate | Uint8Array): Uint8Array {
  return new Uint8Array(parseBindingCertificate(cert).publicKey.rawData);
}

/** Throws ERR_ATTESTATION_BINDING unless the document's user_data is the certificate's SPKI (SPEC, evervault). */
export function checkCertificateBinding(document: AttestationDocument, cert: X509Certificate | Uint8Array): void {
  const spki = certificateSpki(cert);
  const userData = document.userData;
  if (userData === null)
    throw new AttestationError(
      'ERR_ATTESTATION_BINDING',
      'the document has no user_data, so it does not bind the certificate key',
    );
  if (userData.byteLength !== spki.byteLength || !timingSafeEqual(userData, spki)) {
    throw new AttestationError(
      'ERR_ATTESTATION_BINDING',
      "the document's user_data is not the certificate's SubjectPublicKeyInfo: it attests a different key",
    );
  }
}

/** Extracts the document a certificate embeds, verifies it, and checks that it binds the certificate's key. */
export function verifyCertificateAttestation(
  cert: X509Certificate | Uint8Array,
  options?: VerifyOptions,
): VerifiedAttestation {
  return verifyAttestationForCertificate(extractAttestationFromCertificate(cert), cert, options);
}

/** Verifies a document delivered beside a certificate (evervault GA style) and checks that it binds the certificate's key. */
export function verifyAttestationForCertificate(
  document: Uint8Array,
  cert: X509Certificate | Uint8Array,
  options?: VerifyOptions,
): VerifiedAttestation {
  const verified = verifyAttestation(document, options);
  checkCertificateBinding(verified.document, cert);
  return verified;
}

function parseBindingCertificate(cert: X509Certificate | Uint8Array): x509.X509Certificate {
  const der = cert instanceof X509Certificate ? cert.raw : cert;
  if (der.byteLength > MAX_BINDING_CERTIFICATE_BYTES) {
    throw new AttestationError(
      'ERR_ATTESTATION_FORMAT',
      `the certificate is ${der.byteLength} bytes, more than the ${MAX_BINDING_CERTIFICATE_BYTES} allowed`,
    );
  }
  try {
    return new x509.X509Certificate(der);
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_FORMAT', `not an X.509 certificate: ${(error as Error).message}`, {
      cause: error,
    });
  }
}
