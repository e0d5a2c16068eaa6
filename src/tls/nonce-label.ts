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
export function parseNonceServerName(serverName: string | undefined | null, encoding: SniNonceEncoding = 'hex'): NonceServerName {
  if (!serverName) return { kind: 'base' };
  const first = serverName.indexOf('.');
  if (first <= 0) return { kind: 'base' };
  const second = serverName.indexOf('.', first + 1);
  if (second < 0 || serverName.slice(first + 1, second).toLowerCase() !== 'attest') return { kind: 'base' };
  const baseHost = serverName.slice(second + 1);
  if (baseHost.length === 0) return { kind: 'base' };
  const label = serverName.slice(0, first);
  const decoded = encoding === 'base64' ? decodeBase64Label(label) : decodeHexLabel(label);
  return typeof decoded === 'string' ? { kind: 'invalid', reason: decoded, baseHost } : { kind: 'nonce', nonce: decoded, baseHost };
}

/** The nonce bytes an SNI asks for, or undefined for a base-certificate request or a label that does not decode. */
export function parseNonceLabel(serverName: string | undefined | null, encoding: SniNonceEncoding = 'hex'): Uint8Array | undefined {
  const parsed = parseNonceServerName(serverName, encoding);
  return parsed.kind === 'nonce' ? parsed.nonce : undefined;
}

/** The SNI a client sends to ask for a certificate carrying `nonce`: `<label>.attest.<baseHost>`. */
export function formatNonceServerName(nonce: Uint8Array, baseHost: string, encoding: SniNonceEncoding = 'hex'): string {
  if (nonce.length === 0 || nonce.length > SNI_NONCE_MAX_BYTES) throw new RangeError(`a nonce is 1 to ${SNI_NONCE_MAX_BYTES} bytes`);
  // base64url without padding: the only base64 spelling that is also a valid host name label.
  const label = Buffer.from(nonce.buffer, nonce.byteOffset, nonce.byteLength).toString(encoding === 'base64' ? 'base64url' : 'hex');
  return `${label}.attest.${baseHost}`;
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
  if (label.length > Math.ceil(SNI_NONCE_MAX_BYTES / 3) * 4) return `nonce label longer than ${SNI_NONCE_MAX_BYTES} bytes`;
  if (!BASE64_LABEL.test(label)) return 'nonce label is not base64';
  const body = label.replace(/=+$/, '');
  const padding = label.length - body.length;
  if (body.length % 4 === 1) return 'nonce label has an impossible base64 length';
  if (padding > 0 && (body.length + padding) % 4 !== 0) return 'nonce label has wrong base64 padding';
  const bytes = Buffer.from(body.replace(/-/g, '+').replace(/_/g, '/'), 'base64');
  if (bytes.length === 0) return 'nonce label is empty';
  if (bytes.length > SNI_NONCE_MAX_BYTES) return `nonce label longer than ${SNI_NONCE_MAX_BYTES} bytes`;
  if (bytes.toString('base64url') !== body.replace(/\+/g, '-').replace(/\//g, '_')) return 'nonce label has non-canonical base64 bits';
  return new Uint8Array(bytes);
}
