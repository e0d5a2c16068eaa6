import type { Logger } from '../core/log.js';
import { parseNonceServerName, type SniNonceEncoding } from './nonce-label.js';

// SNI is at most 255 bytes on the wire, but only a prefix is useful in a log line.
const LOGGED_SNI_MAX = 96;

/** Where a handshake's nonce certificate comes from: the engine's cache and its single-flight fetch. */
export interface NonceCertificates<T> {
  encoding: SniNonceEncoding;
  logger: Logger;
  /** The cached certificate of `nonce`, if any, without fetching. */
  peek(nonce: Uint8Array): T | undefined;
  /** The certificate of `nonce`, issued once however many handshakes ask; rejects when it cannot be had. */
  fetch(nonce: Uint8Array): Promise<T>;
}

/**
 * Answers a handshake that asked for `serverName` with `serve(certificate)`, or `serve(undefined)`
 * for the base certificate: for any name that is not `<nonce>.attest.<host>`, for a label that does
 * not decode (logged at debug), and when the nonce's certificate cannot be had (the issuer logged
 * why; the client gets a document without its nonce and can tell). A cached certificate is served
 * synchronously. Both TLS engines answer through this, so they choose alike.
 */
export function chooseNonceCertificate<T>(
  serverName: string,
  certificates: NonceCertificates<T>,
  serve: (certificate: T | undefined) => void,
): void {
  const request = parseNonceServerName(serverName, certificates.encoding);
  if (request.kind !== 'nonce') {
    if (request.kind === 'invalid')
      certificates.logger.debug(
        { sni: serverName.slice(0, LOGGED_SNI_MAX), reason: request.reason },
        'SNI nonce label does not decode; serving the base certificate',
      );
    serve(undefined);
    return;
  }
  const cached = certificates.peek(request.nonce);
  if (cached) {
    serve(cached);
    return;
  }
  certificates.fetch(request.nonce).then(serve, () => serve(undefined));
}
