// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
// Types only (erased from the bundle): the repo compiles without the DOM lib.
import type { webcrypto } from 'node:crypto';
import { AttestationError } from '../verify/attestation-error.js';
import { bytesEqual, checkPolicy } from '../attestation/attestation-policy.js';
import {
  certificateLabel,
  chainError,
  checkCabundleLength,
  checkChainShape,
  checkChainValidity,
  readCertificateFacts,
  type CertificateFacts,
} from '../attestation/chain-rules.js';
import {
  checkEs384Outcome,
  decodeCoseSign1,
  es384KeyError,
  sigStructure,
  type CoseSign1,
} from '../verify/cose-sign1.js';
import { decodeAttestationPayload, type AttestationDocument } from '../verify/document.js';
import { policyFromOptions, type ClientPolicyOptions } from '../client/verify-options.js';

/**
 * The attestation verifier with WebCrypto only (browsers, Deno, Workers, Node ≥ 20 alike): the
 * same COSE decoding, document schema, chain rules and policy as the Node verifier (shared
 * modules), with the two signature checks done by crypto.subtle instead of node:crypto.
 */

/** Replaced at bundle time by the bundled AWS Nitro root G1 PEM (checked against its published SHA-256 by the build). */
declare const __ENCLAVE_RUNTIME_AWS_NITRO_ROOT_PEM__: string | undefined;

const MAX_ROOT_PEM_CHARS = 64 * 1024;
const MAX_TRUSTED_ROOTS = 16;

export interface BrowserVerifyOptions extends ClientPolicyOptions {
  /** PEM text (one or more certificates) or DER bytes of the root to pin; default the AWS Nitro root G1 built into the bundle. */
  root?: string | Uint8Array;
}

export interface BrowserVerifiedAttestation {
  document: AttestationDocument;
  /** DER of the certificate whose key signed the document. */
  signingCertificate: Uint8Array;
}

interface WebCertificate extends CertificateFacts {
  readonly der: Uint8Array;
  readonly cert: x509.X509Certificate;
}

function subtle(): webcrypto.SubtleCrypto {
  const value = (globalThis as { crypto?: webcrypto.Crypto }).crypto?.subtle;
  // Browsers only expose crypto.subtle in secure contexts (https, localhost).
  if (value === undefined)
    throw new AttestationError(
      'ERR_ATTESTATION_SIGNATURE',
      'WebCrypto (crypto.subtle) is not available here; pages need a secure context (https or localhost)',
    );
  return value;
}

/**
 * Verifies a raw COSE_Sign1 attestation document: shape and schema, the ES384 signature, the chain
 * to the pinned root at `options.at`, then the policy (debug, PCR sets, nonce, user_data,
 * public_key). Rejects with an AttestationError (`code` ERR_ATTESTATION_*).
 */
export async function verifyAttestationDocument(
  bytes: Uint8Array,
  options: BrowserVerifyOptions = {},
): Promise<BrowserVerifiedAttestation> {
  const policy = policyFromOptions(options);
  const at = policy.at ?? new Date();
  const roots = await resolveRoots(options.root);
  const cose = decodeCoseSign1(bytes);
  const document = decodeAttestationPayload(cose.payload);
  // Signature before chain, as the Node verifier does: a tampered document is reported as tampered.
  const leaf = await parse(document.certificate, 'signing certificate');
  await verifyEs384(cose, leaf);
  checkCabundleLength(document.cabundle.length);
  const chain = [...(await Promise.all(document.cabundle.map((der, i) => parse(der, `cabundle[${i}]`)))), leaf];
  checkChainShape(chain, roots);
  for (let i = 1; i < chain.length; i++)
    await checkLink(chain[i]!, chain[i - 1]!, certificateLabel(i, chain.length - 1, chain[i]!));
  checkChainValidity(chain, at);
  checkPolicy(document, policy);
  return { document, signingCertificate: leaf.der };
}

async function verifyEs384(cose: CoseSign1, leaf: WebCertificate): Promise<void> {
  let key: webcrypto.CryptoKey;
  try {
    // Importing as P-384 fails for any other key type or curve, which is the check ES384 needs.
    key = await subtle().importKey('spki', leaf.cert.publicKey.rawData, { name: 'ECDSA', namedCurve: 'P-384' }, false, [
      'verify',
    ]);
  } catch (error) {
    throw es384KeyError(error);
  }
  // WebCrypto takes ECDSA signatures as raw r‖s, which is exactly COSE's form.
  const settled = await subtle()
    .verify({ name: 'ECDSA', hash: 'SHA-384' }, key, cose.signature, sigStructure(cose.protectedHeader, cose.payload))
    .then(
      (ok) => () => ok,
      (error: unknown) => () => {
        throw error;
      },
    );
  checkEs384Outcome(cose, settled);
}

async function parse(der: Uint8Array, label: string): Promise<WebCertificate> {
  const fingerprint = await sha256Hex(der);
  try {
    const cert = new x509.X509Certificate(der);
    // The ASN.1 parser accepts encodings OpenSSL (the Node verifier) refuses; only DER that
    // re-encodes to itself is taken, and the key must decode, so both refuse the same certificates.
    if (!bytesEqual(new Uint8Array(AsnConvert.serialize(AsnConvert.parse(der, Certificate))), der))
      throw new Error('not DER (it does not re-encode to the same bytes)');
    await cert.publicKey.export();
    return { ...readCertificateFacts(cert, fingerprint), der: new Uint8Array(der), cert };
  } catch (error) {
    throw new AttestationError(
      'ERR_ATTESTATION_CHAIN',
      `${label} is not a valid X.509 certificate: ${(error as Error).message}`,
      { cause: error },
    );
  }
}

/** Issuer name (byte-exact), key identifiers when both carry them, then the signature under the parent's key. */
async function checkLink(child: WebCertificate, parent: WebCertificate, name: string): Promise<void> {
  if (
    !bytesEqual(
      new Uint8Array(child.cert.issuerName.toArrayBuffer()),
      new Uint8Array(parent.cert.subjectName.toArrayBuffer()),
    )
  ) {
    throw chainError(`${name} was not issued by ${parent.subject}`);
  }
  const aki = child.cert.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId;
  const ski = parent.cert.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId;
  if (aki !== undefined && ski !== undefined && aki.toLowerCase() !== ski.toLowerCase())
    throw chainError(`${name} was not issued by ${parent.subject} (key identifiers differ)`);
  let ok: boolean;
  try {
    ok = await child.cert.verify({ publicKey: parent.cert.publicKey, signatureOnly: true });
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_CHAIN', `${name}: signature could not be checked`, { cause: error });
  }
  if (!ok) throw chainError(`${name} signature does not verify with the key of ${parent.subject}`);
}

let defaultRoots: Promise<Map<string, { subject: string }>> | undefined;

async function resolveRoots(root: string | Uint8Array | undefined): Promise<Map<string, { subject: string }>> {
  if (root === undefined) {
    const pem =
      typeof __ENCLAVE_RUNTIME_AWS_NITRO_ROOT_PEM__ === 'string' ? __ENCLAVE_RUNTIME_AWS_NITRO_ROOT_PEM__ : undefined;
    if (pem === undefined)
      throw new AttestationError('ERR_ATTESTATION_ROOT', 'this build has no bundled AWS Nitro root; pass options.root');
    defaultRoots ??= rootsFromPem(pem);
    return defaultRoots;
  }
  if (typeof root === 'string') return rootsFromPem(root);
  if (root instanceof Uint8Array) return rootsFromDer([root]);
  throw new AttestationError('ERR_ATTESTATION_ROOT', 'root must be PEM text or DER bytes');
}

async function rootsFromPem(pem: string): Promise<Map<string, { subject: string }>> {
  if (pem.length > MAX_ROOT_PEM_CHARS)
    throw new AttestationError('ERR_ATTESTATION_ROOT', `the root PEM is larger than ${MAX_ROOT_PEM_CHARS} characters`);
  const blocks = [...pem.matchAll(/-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/g)];
  if (blocks.length === 0)
    throw new AttestationError('ERR_ATTESTATION_ROOT', 'the root PEM holds no CERTIFICATE block');
  if (blocks.length > MAX_TRUSTED_ROOTS)
    throw new AttestationError(
      'ERR_ATTESTATION_ROOT',
      `the root PEM holds ${blocks.length} certificates, at most ${MAX_TRUSTED_ROOTS} are accepted`,
    );
  return rootsFromDer(blocks.map((block) => base64ToBytes(block[1]!.replace(/\s+/g, ''))));
}

async function rootsFromDer(ders: Uint8Array[]): Promise<Map<string, { subject: string }>> {
  const roots = new Map<string, { subject: string }>();
  for (const der of ders) {
    try {
      roots.set(await sha256Hex(der), { subject: new x509.X509Certificate(der).subject });
    } catch (error) {
      throw new AttestationError('ERR_ATTESTATION_ROOT', 'the root is not an X.509 certificate', { cause: error });
    }
  }
  return roots;
}

async function sha256Hex(bytes: Uint8Array): Promise<string> {
  const digest = new Uint8Array(await subtle().digest('SHA-256', bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, '0'))
    .join('')
    .toUpperCase();
}

/** Standard or URL-safe base64, padding optional, without Buffer. */
export function base64ToBytes(text: string): Uint8Array {
  const standard = text.replace(/-/g, '+').replace(/_/g, '/');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(standard) || standard.replace(/=+$/, '').length % 4 === 1) {
    throw new AttestationError('ERR_ATTESTATION_FORMAT', 'not base64');
  }
  const binary = atob(standard.padEnd(Math.ceil(standard.length / 4) * 4, '='));
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}
