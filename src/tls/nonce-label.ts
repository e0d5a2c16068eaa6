import { randomBytes } from 'node:crypto';
import { NSM_MAX_FIELD_BYTES } from '../attestation/nsm.js';

/** How the `<nonce>` label of `<nonce>.attest.<base-host>` is encoded (`tls.sni_nonce_encoding`). */
export type SniNonceEncoding = 'hex' | 'base64';

/**
 * The NSM caps a nonce at 1024 bytes, so a label that decodes to more is refused. In practice SNI
 * is far tighter: a DNS label is at most 63 characters (31 bytes of hex, 47 of base64) and OpenSSL
 * sends at most 255 bytes of server name. We do not enforce 63 ourselves, because non-DNS clients
 * (Node, curl --resolve) do send longer labels and the bound that matters here is the NSM's.
 */
export const SNI_NONCE_MAX_BYTES = NSM_MAX_FIELD_BYTES;

/** What an SNI server name asks for. `invalid` means it has the `.attest.` shape but the label does not decode. */
export type NonceServerName =
  | { kind: 'base' }
  | { kind: 'nonce'; nonce: Uint8Array; baseHost: string }
  | { kind: 'invalid'; reason: string; baseHost: string };

const HEX_LABEL = /^(?:[0-9a-f]{2})+$/;
// Standard and URL-safe alphabets both, without mixing being an error: evervault clients send
// whatever their base64 library emits, and a label cannot carry the padding's meaning anyway.
const BASE64_LABEL = /^[A-Za-z0-9+/_-]+={0,2}$/;

/**
 * Split `<nonce>.attest.<base-host>` and decode the nonce label. Only the first label is the
 * nonce and only the second must be `attest` (case-insensitive, as DNS is); the rest is the base host.
 */
export function parseNonceServerName(
  serverName: string | undefined | null,
  encoding: SniNonceEncoding = 'hex',
): NonceServerName {
  if (!serverName) return { kind: 'base' };
  const first = serverName.indexOf('.');
  if (first <= 0) return { kind: 'base' };
  const second = serverName.indexOf('.', first + 1);
  if (second < 0 || serverName.slice(first + 1, second).toLowerCase() !== 'attest') return { kind: 'base' };
  const baseHost = serverName.slice(second + 1);
  if (baseHost.length === 0) return { kind: 'base' };
  const label = serverName.slice(0, first);
  const decoded = encoding === 'base64' ? decodeBase64Label(label) : decodeHexLabel(label);
  return typeof decoded === 'string'
    ? { kind: 'invalid', reason: decoded, baseHost }
    : { kind: 'nonce', nonce: decoded, baseHost };
}

/** The nonce bytes an SNI asks for, or undefined for a base-certificate request or a label that does not decode. */
export function parseNonceLabel(
  serverName: string | undefined | null,
  encoding: SniNonceEncoding = 'hex',
): Uint8Array | undefined {
  const parsed = parseNonceServerName(serverName, encoding);
  return parsed.kind === 'nonce' ? parsed.nonce : undefined;
}

/** The SNI a client sends to ask for a certificate carrying `nonce`: `<label>.attest.<baseHost>`. */
export function formatNonceServerName(nonce: Uint8Array, baseHost: string, encoding: SniNonceEncoding = 'hex'): string {
  if (nonce.length === 0 || nonce.length > SNI_NONCE_MAX_BYTES)
    throw new RangeError(`a nonce is 1 to ${SNI_NONCE_MAX_BYTES} bytes`);
  // base64url without padding: the only base64 spelling that is also a valid host name label.
  const label = Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString(
    encoding === 'base64' ? 'base64url' : 'hex',
  );
  return `${label}.attest.${baseHost}`;
}

/**
 * DNS names are case-insensitive and many clients lowercase them before they go into SNI (curl,
 * URL parsers, undici, Chromium, rustls). A base64 label with capitals then reaches the server as
 * other bytes: the handshake still succeeds, with a document carrying a different nonce. A label
 * is case-stable when lowercasing cannot change it and it is a valid DNS label: [a-z0-9-], no
 * hyphen at either end (base64url's `_` is not a host name character). Hex labels always are.
 */
export function isCaseStableNonce(nonce: Uint8Array, encoding: SniNonceEncoding): boolean {
  if (encoding === 'hex') return true;
  return CASE_STABLE_LABEL.test(Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString('base64url'));
}

const CASE_STABLE_LABEL = /^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$/;
const BASE64URL_ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
/** Base64 digits no client changes: lowercase letters and digits (36 of 64, 5.17 bits each). */
const STABLE_DIGITS = 'abcdefghijklmnopqrstuvwxyz0123456789';

/**
 * A random nonce of `bytes` bytes whose SNI label is case-stable (see isCaseStableNonce). For
 * base64 the label is drawn digit by digit from [a-z0-9] (rejection sampling, no modulo bias) and
 * decoded, so 18 bytes carry 124 random bits; the last digit of a partial group only takes values
 * whose unused low bits are zero, as canonical base64 requires.
 */
export function generateSniNonce(
  encoding: SniNonceEncoding,
  bytes: number,
  random: (n: number) => Uint8Array = randomBytes,
): Uint8Array {
  if (!Number.isInteger(bytes) || bytes < 1 || bytes > SNI_NONCE_MAX_BYTES)
    throw new RangeError(`a nonce is 1 to ${SNI_NONCE_MAX_BYTES} bytes`);
  if (encoding === 'hex') return new Uint8Array(random(bytes));
  const digits = Math.ceil((bytes * 4) / 3);
  // Bits of the last digit beyond the data: 4 when bytes % 3 == 1, 2 when == 2, none otherwise.
  const spareBits = digits * 6 - bytes * 8;
  const lastDigits = [...STABLE_DIGITS]
    .filter((c) => (BASE64URL_ALPHABET.indexOf(c) & ((1 << spareBits) - 1)) === 0)
    .join('');
  let label = '';
  while (label.length < digits) {
    for (const byte of random(digits)) {
      if (label.length === digits) break;
      const pool = label.length === digits - 1 ? lastDigits : STABLE_DIGITS;
      if (byte >= 256 - (256 % pool.length)) continue;
      label += pool[byte % pool.length];
    }
  }
  const nonce = new Uint8Array(Buffer.from(label, 'base64url'));
  // Cannot happen by construction; failing here beats sending a label that names other bytes.
  if (nonce.byteLength !== bytes || Buffer.from(nonce).toString('base64url') !== label)
    throw new Error('generated a non-canonical base64 nonce label');
  return nonce;
}

// Lowercase only: SPEC fixes lowercase hex, and one spelling per nonce keeps cache keys unambiguous.
function decodeHexLabel(label: string): Uint8Array | string {
  if (label.length > SNI_NONCE_MAX_BYTES * 2) return `nonce label longer than ${SNI_NONCE_MAX_BYTES} bytes`;
  if (!HEX_LABEL.test(label)) return 'nonce label is not lowercase hex of even length';
  return new Uint8Array(Buffer.from(label, 'hex'));
}

/**
 * Padding is optional (hosts cannot carry `=`, so most clients drop it), but when present it must
 * be the right amount; stray bits in the last character are refused, since Node's decoder would
 * silently drop them and two labels would then name one nonce.
 */
function decodeBase64Label(label: string): Uint8Array | string {
  if (label.length > Math.ceil(SNI_NONCE_MAX_BYTES / 3) * 4)
    return `nonce label longer than ${SNI_NONCE_MAX_BYTES} bytes`;
  if (!BASE64_LABEL.test(label)) return 'nonce label is not base64';
  const body = label.replace(/=+$/, '');
  const padding = label.length - body.length;
  if (body.length % 4 === 1) return 'nonce label has an impossible base64 length';
  if (padding > 0 && (body.length + padding) % 4 !== 0) return 'nonce label has wrong base64 padding';
  const bytes = Buffer.from(body.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (bytes.length === 0) return 'nonce label is empty';
  if (bytes.length > SNI_NONCE_MAX_BYTES) return `nonce label longer than ${SNI_NONCE_MAX_BYTES} bytes`;
  if (bytes.toString('base64url') !== body.replace(/\+/g, '-').replace(/\//g, '_'))
    return 'nonce label has non-canonical base64 bits';
  return new Uint8Array(bytes);
}
