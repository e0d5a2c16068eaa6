import { sign, type KeyObject } from 'node:crypto';
import { derJoin, derNested, derTlv, readDer, type DerElement, type DerParts } from './der.js';
import { TlsError } from './tls-error.js';

// Every part of a leaf that does not change between leaves of one CA, DER-encoded once. The variable
// parts (serial, validity, subject, key, SAN) are plain byte strings spliced in, so issuing a leaf
// costs a few Buffer.concat calls and one signature instead of an ASN.1 schema
// walk on the event loop (what @peculiar/x509 did: 28% of a new-nonce handshake's CPU).

const SEQUENCE = 0x30;
const SET = 0x31;
const INTEGER = 0x02;
const BIT_STRING = 0x03;
const OCTET_STRING = 0x04;
const UTF8_STRING = 0x0c;
const PRINTABLE_STRING = 0x13;
const UTC_TIME = 0x17;
const GENERALIZED_TIME = 0x18;
const DNS_NAME = 0x82; // GeneralName [2] IMPLICIT IA5String
const EXTENSIONS = 0xa3; // TBSCertificate [3] EXPLICIT

// [0] EXPLICIT INTEGER 2: X.509 v3.
const VERSION_V3 = Buffer.from('a003020102', 'hex');
// AttributeType id-at-commonName (2.5.4.3).
const OID_COMMON_NAME = Buffer.from('0603550403', 'hex');
// Extension { extnID id-ce-subjectAltName (2.5.29.17), non-critical } up to its extnValue.
const OID_SUBJECT_ALT_NAME = Buffer.from('0603551d11', 'hex');
/**
 * basicConstraints (critical, cA absent = FALSE), keyUsage (critical, digitalSignature),
 * extKeyUsage (serverAuth): the same in every leaf, in this order, before the SAN.
 */
const FIXED_LEAF_EXTENSIONS = Buffer.from(
  '300c0603551d130101ff04023000' + '300e0603551d0f0101ff040403020780' + '30130603551d25040c300a06082b06010505070301',
  'hex',
);
// X.520 caps a CommonName at 64 characters; longer server names live only in the SAN.
const CN_MAX = 64;
// X.520 PrintableString; a name with anything else (an underscore, say) is a UTF8String.
const PRINTABLE = /^[A-Za-z0-9 '()+,\-./:=?]*$/;
const IA5 = /^[\x00-\x7f]*$/;

/** The signature algorithms a CA may use: ECDSA on P-256 or P-384. */
export type LeafSignatureHash = 'sha256' | 'sha384';
const SIGNATURE_ALGORITHMS: Record<LeafSignatureHash, Buffer> = {
  // AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2), no parameters.
  sha256: Buffer.from('300a06082a8648ce3d040302', 'hex'),
  // ecdsa-with-SHA384 (1.2.840.10045.4.3.3).
  sha384: Buffer.from('300a06082a8648ce3d040303', 'hex'),
};

/** What varies from one leaf to the next. `dnsNames[0]` is the subject CN when it fits. */
export interface LeafFields {
  /** The serial's DER INTEGER content: positive (top bit clear) and minimal. */
  serial: Uint8Array;
  notBefore: Date;
  notAfter: Date;
  dnsNames: readonly string[];
  /** DER SubjectPublicKeyInfo of the leaf key. */
  publicKeySpki: Uint8Array;
}

/** The issuer-side half of a leaf, fixed per CA. */
export interface LeafIssuer {
  /** DER Name of the CA: its certificate's subject, byte for byte. */
  issuerName: Uint8Array;
  /** The whole DER Extension of the authorityKeyIdentifier naming the CA's key. */
  authorityKeyIdExtension: Uint8Array;
  hash: LeafSignatureHash;
  signingKey: KeyObject;
}

/** Issues TLS server leaves for one CA from pre-encoded parts. */
export class LeafTemplate {
  readonly #signatureAlgorithm: Buffer;
  // Everything from the signature AlgorithmIdentifier to the issuer Name: follows the serial.
  readonly #afterSerial: Buffer;
  readonly #authorityKeyIdExtension: Buffer;
  readonly #hash: LeafSignatureHash;
  readonly #signingKey: KeyObject;

  constructor(issuer: LeafIssuer) {
    this.#signatureAlgorithm = SIGNATURE_ALGORITHMS[issuer.hash];
    this.#afterSerial = Buffer.concat([this.#signatureAlgorithm, issuer.issuerName]);
    this.#authorityKeyIdExtension = Buffer.from(issuer.authorityKeyIdExtension);
    this.#hash = issuer.hash;
    this.#signingKey = issuer.signingKey;
  }

  /** The DER TBSCertificate of a leaf with these fields. */
  tbsCertificate(fields: LeafFields): Buffer {
    return derJoin(this.#tbsParts(fields));
  }

  #tbsParts(fields: LeafFields): DerParts {
    const first = fields.dnsNames[0];
    if (first === undefined) throw new TlsError('ERR_TLS_ISSUE', 'a leaf needs at least one DNS name');
    const spki = fields.publicKeySpki;
    if (!isOneSequence(spki))
      throw new TlsError('ERR_TLS_ISSUE', 'the leaf public key is not one DER SubjectPublicKeyInfo');
    const serial = fields.serial;
    if (serial.byteLength === 0 || serial.byteLength > 20 || serial[0]! & 0x80)
      throw new TlsError('ERR_TLS_ISSUE', 'a serial number must be 1-20 bytes and positive');
    const names = fields.dnsNames.map((name) => {
      if (!IA5.test(name)) throw new TlsError('ERR_TLS_ISSUE', 'a DNS name must be ASCII');
      return derNested(DNS_NAME, Buffer.from(name, 'latin1'));
    });
    const subjectAltName = derNested(
      SEQUENCE,
      OID_SUBJECT_ALT_NAME,
      derNested(OCTET_STRING, derNested(SEQUENCE, ...names)),
    );
    return derNested(
      SEQUENCE,
      VERSION_V3,
      derTlv(INTEGER, serial),
      this.#afterSerial,
      derTlv(SEQUENCE, encodeTime(fields.notBefore), encodeTime(fields.notAfter)),
      first.length <= CN_MAX ? commonNameOnly(first) : Buffer.of(SEQUENCE, 0),
      spki,
      derNested(EXTENSIONS, derNested(SEQUENCE, FIXED_LEAF_EXTENSIONS, subjectAltName, this.#authorityKeyIdExtension)),
    );
  }

  /**
   * The signed DER certificate. A P-256 signature (~40 µs) is made inline: a trip to the libuv pool costs
   * about as much CPU again in thread hand-offs, and under load queues the leaf behind the simulated NSM's
   * P-384 signatures (~1 ms each) on the same four threads. A P-384 CA's signatures go to the pool.
   */
  async issue(fields: LeafFields): Promise<Buffer> {
    const tbsParts = this.#tbsParts(fields);
    const tbs = derJoin(tbsParts);
    const options = { key: this.#signingKey, dsaEncoding: 'der' } as const;
    const failed = (err: Error) => new TlsError('ERR_TLS_ISSUE', `signing a leaf: ${err.message}`, { cause: err });
    let signature: Buffer;
    if (this.#hash === 'sha256') {
      try {
        signature = sign(this.#hash, tbs, options);
      } catch (err) {
        throw failed(err as Error);
      }
    } else {
      signature = await new Promise<Buffer>((resolve, reject) => {
        sign(this.#hash, tbs, options, (err, value) => (err ? reject(failed(err)) : resolve(value)));
      });
    }
    // The certificate reuses the TBS's parts rather than copying the joined TBS a second time.
    return derJoin(
      derNested(SEQUENCE, tbsParts, this.#signatureAlgorithm, derTlv(BIT_STRING, Buffer.of(0), signature)),
    );
  }
}

/** The DER subject Name of a DER certificate, byte for byte: what leaves it signs carry as issuer. */
export function certificateSubjectName(certificateDer: Uint8Array): Buffer {
  const field = tbsField(certificateDer, 4);
  if (field.tag !== SEQUENCE) throw new TlsError('ERR_TLS_CA_STATE', 'the certificate has no subject Name');
  return Buffer.from(certificateDer.subarray(field.start, field.end));
}

/** The DER SubjectPublicKeyInfo of a DER certificate, byte for byte. */
export function certificatePublicKeyInfo(certificateDer: Uint8Array): Buffer {
  const field = tbsField(certificateDer, 5);
  if (field.tag !== SEQUENCE) throw new TlsError('ERR_TLS_CA_STATE', 'the certificate has no SubjectPublicKeyInfo');
  return Buffer.from(certificateDer.subarray(field.start, field.end));
}

// TBSCertificate fields after the optional version [0]: serial 0, signature 1, issuer 2, validity 3, subject 4, key 5.
function tbsField(certificateDer: Uint8Array, index: number): DerElement {
  const certificate = readDer(certificateDer, 0);
  const tbs = readDer(certificateDer, certificate.contentStart, certificate.end);
  let field = readDer(certificateDer, tbs.contentStart, tbs.end);
  const skip = field.tag === 0xa0 ? index + 1 : index;
  for (let i = 0; i < skip; i++) field = readDer(certificateDer, field.end, tbs.end);
  return field;
}

/** PEM of a DER certificate, 64 base64 characters a line, ending in a newline. */
export function certificatePem(der: Uint8Array): string {
  const base64 = Buffer.from(der.buffer, der.byteOffset, der.byteLength).toString('base64');
  const lines: string[] = [];
  for (let i = 0; i < base64.length; i += 64) lines.push(base64.slice(i, i + 64));
  return `-----BEGIN CERTIFICATE-----\n${lines.join('\n')}\n-----END CERTIFICATE-----\n`;
}

function isOneSequence(der: Uint8Array): boolean {
  try {
    return der[0] === SEQUENCE && readDer(der, 0).end === der.byteLength;
  } catch {
    return false;
  }
}

function commonNameOnly(name: string): Buffer {
  const value = PRINTABLE.test(name)
    ? derTlv(PRINTABLE_STRING, Buffer.from(name, 'latin1'))
    : derTlv(UTF8_STRING, Buffer.from(name, 'utf8'));
  return derTlv(SEQUENCE, derTlv(SET, derTlv(SEQUENCE, OID_COMMON_NAME, value)));
}

// RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050; whole seconds, Z.
function encodeTime(date: Date): Buffer {
  const year = date.getUTCFullYear();
  const two = (n: number) => String(n).padStart(2, '0');
  const rest =
    two(date.getUTCMonth() + 1) +
    two(date.getUTCDate()) +
    two(date.getUTCHours()) +
    two(date.getUTCMinutes()) +
    two(date.getUTCSeconds()) +
    'Z';
  return year >= 1950 && year <= 2049
    ? derTlv(UTC_TIME, Buffer.from(two(year % 100) + rest, 'latin1'))
    : derTlv(GENERALIZED_TIME, Buffer.from(String(year).padStart(4, '0') + rest, 'latin1'));
}
