import type { X509Certificate } from 'node:crypto';
import { isIP } from 'node:net';
import { checkServerIdentity, TLSSocket, type PeerCertificate } from 'node:tls';
import { Agent, buildConnector } from 'undici';
import { verifyCertificateAttestation } from '../verify/certificate-binding.js';
import type { VerifiedAttestation, VerifyOptions } from '../verify/verifier.js';
import { formatNonceServerName, generateSniNonce, parseNonceLabel, type SniNonceEncoding } from './nonce-label.js';
import { TlsError } from './tls-error.js';

/** What a verified peer proved: the decoded document and its signing certificate. */
export type PeerAttestation = VerifiedAttestation;

export interface PeerVerifyOptions extends VerifyOptions {
  /** The nonce this client put in SNI; the document must carry exactly it. */
  expectedNonce?: Uint8Array | undefined;
}

/** Default size of a per-connection fresh nonce: 32 hex digits, well inside a DNS label. */
export const FRESH_NONCE_BYTES = 16;
/** In base64 mode: 24 digits of [a-z0-9] (see generateSniNonce), 124 random bits. */
export const FRESH_BASE64_NONCE_BYTES = 18;

/** The default fresh nonce size for an SNI encoding. */
export function freshNonceBytes(encoding: SniNonceEncoding): number {
  return encoding === 'base64' ? FRESH_BASE64_NONCE_BYTES : FRESH_NONCE_BYTES;
}

/**
 * The nonce a server will read out of `servername`: DNS is case-insensitive, so the label is read
 * as lowercased, as curl, browsers and undici send it. A client requires this nonce in the
 * document, so a label that lowercasing would change fails closed (ERR_TLS_NONCE_LABEL) instead
 * of accepting a document made for other bytes.
 */
export function nonceSentInSni(servername: string, nonce: Uint8Array, encoding: SniNonceEncoding): Uint8Array {
  const sent = parseNonceLabel(servername.toLowerCase(), encoding);
  if (sent === undefined || !Buffer.from(sent).equals(Buffer.from(nonce))) {
    throw new TlsError(
      'ERR_TLS_NONCE_LABEL',
      `the ${encoding} nonce label in ${JSON.stringify(servername.slice(0, 96))} names other bytes once lowercased, as DNS clients may send it; use a nonce whose label is lowercase`,
    );
  }
  return sent;
}
const MAX_FRESH_NONCE_BYTES = 64;
const DEFAULT_CONNECT_TIMEOUT_MS = 10_000;

/**
 * Verify the attestation embedded in a peer's TLS certificate: the document in the longest SAN's
 * first label must verify (chain to the root, PCRs, debug policy, nonce) and its `user_data` must
 * be the certificate's own SPKI. Throws AttestationError (ERR_ATTESTATION_*; a missing or wrong
 * nonce is ERR_ATTESTATION_NONCE) or TlsError otherwise.
 *
 * On a TLSSocket this is only meaningful after the handshake: the handshake proved the peer holds
 * the certificate's key, and the document proves that key lives in the attested enclave.
 */
export function verifyPeerAttestation(
  peer: TLSSocket | X509Certificate | Uint8Array,
  options: PeerVerifyOptions = {},
): PeerAttestation {
  const certificate = peer instanceof TLSSocket ? peerCertificateDer(peer) : peer;
  const { expectedNonce, ...verifyOptions } = options;
  if (
    expectedNonce !== undefined &&
    verifyOptions.nonce !== undefined &&
    !Buffer.from(expectedNonce).equals(Buffer.from(verifyOptions.nonce))
  ) {
    throw new TlsError('ERR_TLS_NONCE_CONFLICT', 'nonce and expectedNonce differ');
  }
  return verifyCertificateAttestation(certificate, {
    ...verifyOptions,
    ...(expectedNonce ? { nonce: expectedNonce } : {}),
  });
}

export interface AttestedConnectorOptions {
  /** How to verify each peer's document. */
  verify?: VerifyOptions;
  /**
   * Put a fresh random nonce in SNI (`<nonce>.attest.<host>`) on every connection and require it in
   * the document: proves the document was made for this connection, not replayed.
   */
  freshNonce?: boolean;
  /**
   * Bytes of a fresh nonce, 1 to 64; default 16. Up to 31 the hex label fits a 63-character DNS
   * label; longer ones still work with Node servers, as SNI only caps the whole name at 255 bytes.
   */
  freshNonceBytes?: number;
  /** How the server decodes nonce labels (its `tls.sni_nonce_encoding`). Default hex. */
  sniNonceEncoding?: SniNonceEncoding;
  /** The base host name to send in SNI and to check the certificate against; default the URL's host. */
  servername?: string;
  /**
   * Trust comes from the attestation: a certificate whose document verifies and binds its key is
   * accepted whoever signed it. The CA check is an extra, optional layer: give `ca` (e.g. the
   * runtime's `<state-dir>/ca.pem`) or set `verifyChain`, and the chain and host name are checked too.
   */
  ca?: string | Buffer | Array<string | Buffer>;
  /** Check the chain (against `ca`, or Node's roots) and the host name. Default: true when `ca` is given. */
  verifyChain?: boolean;
  /** TCP connect plus TLS handshake, in ms. Default 10 s. */
  timeoutMs?: number;
  /**
   * TLS sessions kept for resumption. Default 0: a resumed session shows the certificate of an
   * older handshake, which cannot carry this connection's fresh nonce.
   */
  maxCachedSessions?: number;
  /** Offer h2 as well as http/1.1. */
  allowH2?: boolean;
  /** Called with each verified connection's attestation, before the socket is handed to undici. */
  onAttested?: (event: { host: string; servername: string; attestation: PeerAttestation }) => void;
}

export interface AttestedAgentOptions extends AttestedConnectorOptions {
  /** Other undici Agent options (pool sizes, timeouts); `connect` is ours. */
  agent?: Omit<Agent.Options, 'connect'>;
}

/**
 * An undici connector that hands a socket to undici only after its peer's attestation verified.
 * On failure the socket is destroyed and the request fails, so no request byte leaves the client.
 */
export function createAttestedConnector(options: AttestedConnectorOptions = {}): buildConnector.connector {
  const encoding = options.sniNonceEncoding ?? 'hex';
  const nonceBytes = options.freshNonceBytes ?? freshNonceBytes(encoding);
  if (!Number.isInteger(nonceBytes) || nonceBytes < 1 || nonceBytes > MAX_FRESH_NONCE_BYTES)
    throw new RangeError(`freshNonceBytes must be 1 to ${MAX_FRESH_NONCE_BYTES}`);
  const verifyChain = options.verifyChain ?? options.ca !== undefined;
  const inner = buildConnector({
    // Node's own check would refuse a private CA before we could look at the attestation; the
    // equivalent checks run below when verifyChain asks for them.
    rejectUnauthorized: false,
    // Node would check the name against the SNI, which may be a nonce name; checkChainAndName
    // checks it against the base host instead. Without this, `authorized` would be false for
    // every fresh-nonce connection.
    checkServerIdentity: () => undefined,
    ...(options.ca === undefined ? {} : { ca: options.ca }),
    timeout: options.timeoutMs ?? DEFAULT_CONNECT_TIMEOUT_MS,
    maxCachedSessions: options.maxCachedSessions ?? 0,
    allowH2: options.allowH2 ?? false,
  });

  return (connectOptions, callback) => {
    if (connectOptions.protocol !== 'https:') {
      callback(
        new TlsError('ERR_TLS_NOT_TLS', `attested connections need https:, not ${connectOptions.protocol}`),
        null,
      );
      return;
    }
    const baseHost = options.servername ?? connectOptions.servername ?? stripBrackets(connectOptions.hostname);
    let nonce: Uint8Array | undefined;
    let servername: string | undefined;
    try {
      nonce = options.freshNonce ? generateSniNonce(encoding, nonceBytes) : undefined;
      // RFC 6066 forbids an IP address as SNI (Node warns); a nonce name built on one is fine.
      servername = nonce ? formatNonceServerName(nonce, baseHost, encoding) : isIP(baseHost) ? undefined : baseHost;
      // What the document must carry is what the server reads from the SNI, not what we meant.
      if (nonce && servername) nonce = nonceSentInSni(servername, nonce, encoding);
    } catch (error) {
      callback(error as Error, null);
      return;
    }
    inner({ ...connectOptions, ...(servername === undefined ? {} : { servername }) }, (err, socket) => {
      if (err || !socket) {
        callback(err ?? new TlsError('ERR_TLS_CONNECT', 'connection failed'), null);
        return;
      }
      try {
        if (!(socket instanceof TLSSocket)) throw new TlsError('ERR_TLS_NOT_TLS', 'the connection is not TLS');
        if (verifyChain) checkChainAndName(socket, servername ?? baseHost);
        const attestation = verifyPeerAttestation(socket, { ...options.verify, expectedNonce: nonce });
        options.onAttested?.({ host: connectOptions.hostname, servername: servername ?? baseHost, attestation });
      } catch (verifyError) {
        socket.destroy();
        callback(verifyError as Error, null);
        return;
      }
      callback(null, socket);
    });
  };
}

/** An undici Agent (a Dispatcher for fetch/request) whose every connection is attested before use. */
export function createAttestedAgent(options: AttestedAgentOptions = {}): Agent {
  return new Agent({ ...options.agent, connect: createAttestedConnector(options) });
}

/**
 * The peer's leaf as DER. Read through getPeerCertificate(): on Node 20 a client socket's
 * getPeerX509Certificate() works once, then returns undefined and empties getPeerCertificate()
 * for the rest of the connection (seen on 20.20), which would break undici and later callers.
 */
export function peerCertificateDer(socket: TLSSocket): Uint8Array {
  const raw = (socket.getPeerCertificate() as Partial<PeerCertificate>).raw;
  if (!raw || raw.length === 0) throw new TlsError('ERR_TLS_NO_PEER_CERTIFICATE', 'the peer presented no certificate');
  return new Uint8Array(raw);
}

function checkChainAndName(socket: TLSSocket, host: string): void {
  if (!socket.authorized) {
    throw new TlsError(
      'ERR_TLS_UNTRUSTED_CHAIN',
      `the certificate chain does not verify: ${String(socket.authorizationError)}`,
    );
  }
  const identityError = checkServerIdentity(host, socket.getPeerCertificate() as PeerCertificate);
  if (identityError) throw new TlsError('ERR_TLS_HOST_MISMATCH', identityError.message, { cause: identityError });
}

function stripBrackets(hostname: string): string {
  return hostname.startsWith('[') && hostname.endsWith(']') ? hostname.slice(1, -1) : hostname;
}
