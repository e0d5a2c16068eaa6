/**
 * Opens the CMS EnvelopedData (RFC 5652) that AWS KMS returns as `CiphertextForRecipient`:
 * one KeyTransRecipientInfo with RSAES-OAEP (SHA-256, MGF1-SHA-256, no label) wrapping an
 * AES-256-CBC content key. KMS writes it as BER with indefinite lengths and the content in chunks;
 * OpenSSL's `cms -encrypt` writes DER or the same BER. Both parse here.
 */
import { constants, createDecipheriv, privateDecrypt, randomBytes, type KeyObject } from 'node:crypto';
import { ContentInfo, EnvelopedData, id_data, id_envelopedData } from '@peculiar/asn1-cms';
import { id_mgf1, id_pSpecified, id_RSAES_OAEP, id_sha256, RsaEsOaepParams } from '@peculiar/asn1-rsa';
import { AsnParser, OctetString } from '@peculiar/asn1-schema';
import { AlgorithmIdentifier } from '@peculiar/asn1-x509';
import { SecretError } from './secret-error.js';

/** KMS plaintexts are at most 4 KiB; this leaves room for 16 KiB RSA keys and BER chunking. */
export const MAX_ENVELOPE_BYTES = 64 * 1024;
/** The largest encrypted content accepted, a multiple of the AES block. */
export const MAX_ENCRYPTED_CONTENT_BYTES = 32 * 1024;
/** Plain RSA below this is not accepted as a recipient key. */
export const MIN_RSA_BITS = 2048;
const MAX_RSA_BITS = 16384;
const AES_BLOCK = 16;
const CEK_BYTES = 32;
const ID_AES256_CBC = '2.16.840.1.101.3.4.1.42';

/** The one message for every way a well-formed envelope fails to open, so failures cannot be told apart. */
const DECRYPT_MESSAGE = "the ciphertext could not be decrypted with this enclave's key";

/** What opening needs from an envelope, after every structural and algorithm check. */
export interface EnvelopeParts {
  /** The RSAES-OAEP-wrapped content-encryption key. */
  encryptedKey: Uint8Array;
  /** The AES-256-CBC IV, 16 bytes. */
  iv: Uint8Array;
  /** The AES-256-CBC ciphertext, a non-empty multiple of 16 bytes. */
  encryptedContent: Uint8Array;
}

/** Parses and checks a CMS EnvelopedData addressed to one RSAES-OAEP-SHA-256 recipient; throws ERR_SECRET_CMS. */
export function parseEnvelope(input: Uint8Array): EnvelopeParts {
  if (!(input instanceof Uint8Array) || input.byteLength === 0) throw cmsError('the envelope is empty');
  if (input.byteLength > MAX_ENVELOPE_BYTES)
    throw cmsError(`the envelope is ${input.byteLength} bytes; at most ${MAX_ENVELOPE_BYTES} are accepted`);
  const contentInfo = parse(input, ContentInfo, 'ContentInfo');
  if (contentInfo.contentType !== id_envelopedData)
    throw cmsError(`the content type is ${oid(contentInfo.contentType)}, not envelopedData`);
  const enveloped = parse(new Uint8Array(contentInfo.content), EnvelopedData, 'EnvelopedData');

  // KMS addresses its answer to exactly one key; more recipients would mean guessing which is ours.
  if (enveloped.recipientInfos.length !== 1)
    throw cmsError(`the envelope has ${enveloped.recipientInfos.length} recipients; exactly 1 is accepted`);
  const recipient = enveloped.recipientInfos[0]!.ktri;
  if (recipient === undefined) throw cmsError('the recipient is not a KeyTransRecipientInfo (RSA key transport)');
  checkOaepSha256(recipient.keyEncryptionAlgorithm);
  const encryptedKey = new Uint8Array(recipient.encryptedKey.buffer);
  if (encryptedKey.byteLength < MIN_RSA_BITS / 8 || encryptedKey.byteLength > MAX_RSA_BITS / 8) {
    throw cmsError(
      `the encrypted key is ${encryptedKey.byteLength} bytes; an RSA ${MIN_RSA_BITS}-${MAX_RSA_BITS} bit key wraps to ${MIN_RSA_BITS / 8}-${MAX_RSA_BITS / 8}`,
    );
  }

  const info = enveloped.encryptedContentInfo;
  if (info.contentType !== id_data) throw cmsError(`the encrypted content type is ${oid(info.contentType)}, not data`);
  const algorithm = info.contentEncryptionAlgorithm;
  if (algorithm.algorithm !== ID_AES256_CBC)
    throw cmsError(`the content cipher is ${oid(algorithm.algorithm)}, not AES-256-CBC`);
  if (!algorithm.parameters) throw cmsError('the AES-256-CBC parameters (the IV) are missing');
  const iv = new Uint8Array(parse(new Uint8Array(algorithm.parameters), OctetString, 'AES-256-CBC IV').buffer);
  if (iv.byteLength !== AES_BLOCK) throw cmsError(`the IV is ${iv.byteLength} bytes, not ${AES_BLOCK}`);

  const content = info.encryptedContent;
  const chunks = content?.value ? [content.value] : (content?.constructedValue ?? []);
  const size = chunks.reduce((sum, chunk) => sum + chunk.byteLength, 0);
  if (size === 0) throw cmsError('the envelope carries no encrypted content');
  if (size > MAX_ENCRYPTED_CONTENT_BYTES)
    throw cmsError(`the encrypted content is ${size} bytes; at most ${MAX_ENCRYPTED_CONTENT_BYTES} are accepted`);
  if (size % AES_BLOCK !== 0)
    throw cmsError(`the encrypted content is ${size} bytes, not a multiple of the ${AES_BLOCK}-byte AES block`);
  const encryptedContent = Buffer.concat(chunks.map((chunk) => new Uint8Array(chunk.buffer)));
  return { encryptedKey, iv, encryptedContent };
}

/**
 * Opens an envelope with the recipient's RSA private key and returns the plaintext (the caller
 * zeroes it when done). A wrong key, a corrupted wrapped key and bad CBC padding all end in the
 * same ERR_SECRET_DECRYPT after the same work, so the outcome is no padding oracle.
 */
export function openEnvelope(input: Uint8Array, privateKey: KeyObject): Buffer {
  const parts = parseEnvelope(input);
  const bits = privateKey.asymmetricKeyType === 'rsa' ? (privateKey.asymmetricKeyDetails?.modulusLength ?? 0) : 0;
  if (privateKey.type !== 'private' || bits < MIN_RSA_BITS)
    throw new RangeError(`the recipient key must be an RSA private key of at least ${MIN_RSA_BITS} bits`);

  // Every failure below sets a flag instead of returning, and a failed unwrap continues with a
  // random key (RFC 3218 §2.3), so each path does one RSA and one AES operation.
  let ok = parts.encryptedKey.byteLength === Math.ceil(bits / 8);
  let cek: Buffer | undefined;
  if (ok) {
    try {
      cek = privateDecrypt(
        { key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
        parts.encryptedKey,
      );
    } catch {
      ok = false;
    }
  }
  if (cek === undefined || cek.byteLength !== CEK_BYTES) {
    cek?.fill(0);
    cek = randomBytes(CEK_BYTES);
    ok = false;
  }
  let plaintext: Buffer | undefined;
  try {
    const decipher = createDecipheriv('aes-256-cbc', cek, parts.iv);
    plaintext = Buffer.concat([decipher.update(parts.encryptedContent), decipher.final()]);
  } catch {
    ok = false;
  } finally {
    cek.fill(0);
  }
  if (!ok || plaintext === undefined) {
    plaintext?.fill(0);
    throw new SecretError('ERR_SECRET_DECRYPT', DECRYPT_MESSAGE);
  }
  return plaintext;
}

/** RSAES-OAEP with SHA-256 for both the hash and MGF1, and an empty label: what KMS's RSAES_OAEP_SHA_256 means. */
function checkOaepSha256(algorithm: AlgorithmIdentifier): void {
  if (algorithm.algorithm !== id_RSAES_OAEP)
    throw cmsError(`the key transport is ${oid(algorithm.algorithm)}, not RSAES-OAEP`);
  // Absent parameters mean SHA-1 everywhere (RFC 8017 A.2.1), which KMS never uses.
  if (!algorithm.parameters) throw cmsError('the RSAES-OAEP parameters are absent (SHA-1); SHA-256 is required');
  const params = parse(new Uint8Array(algorithm.parameters), RsaEsOaepParams, 'RSAES-OAEP parameters');
  if (params.hashAlgorithm.algorithm !== id_sha256)
    throw cmsError(`the OAEP hash is ${oid(params.hashAlgorithm.algorithm)}, not SHA-256`);
  if (params.maskGenAlgorithm.algorithm !== id_mgf1 || !params.maskGenAlgorithm.parameters)
    throw cmsError('the OAEP mask generation is not MGF1');
  const mgfHash = parse(new Uint8Array(params.maskGenAlgorithm.parameters), AlgorithmIdentifier, 'MGF1 parameters');
  if (mgfHash.algorithm !== id_sha256) throw cmsError(`the MGF1 hash is ${oid(mgfHash.algorithm)}, not SHA-256`);
  // When pSourceAlgorithm is absent the parser leaves its own default (an odd 20-byte label); an explicit one must
  // be the empty label. Anything else the parser's default stands for fails OAEP, i.e. closed.
  const source = params.pSourceAlgorithm;
  if (isDefaultLabel(source)) return;
  if (source.algorithm !== id_pSpecified || !source.parameters)
    throw cmsError('the OAEP label source is not pSpecified');
  const label = parse(new Uint8Array(source.parameters), OctetString, 'OAEP label');
  if (label.byteLength !== 0) throw cmsError('the OAEP label is not empty');
}

function isDefaultLabel(source: AlgorithmIdentifier): boolean {
  const fallback = new RsaEsOaepParams().pSourceAlgorithm;
  if (source.algorithm !== fallback.algorithm || !source.parameters || !fallback.parameters) return false;
  return Buffer.from(source.parameters).equals(Buffer.from(fallback.parameters));
}

function parse<T>(bytes: Uint8Array, target: new () => T, what: string): T {
  try {
    return AsnParser.parse(bytes, target);
  } catch {
    // asn1js messages can quote input; the reason given is ours alone.
    throw cmsError(`the ${what} is not valid ASN.1 (truncated or malformed)`);
  }
}

/** An OID for a message: only digits and dots, short. */
function oid(value: unknown): string {
  return typeof value === 'string' && /^[0-9.]{1,64}$/.test(value) ? value : '(unreadable)';
}

function cmsError(reason: string): SecretError {
  return new SecretError('ERR_SECRET_CMS', `CiphertextForRecipient is not an envelope this enclave accepts: ${reason}`);
}
