/**
 * Connections to KMS through an HTTP proxy's CONNECT (the enclave's egress proxy): TLS runs end
 * to end from here to KMS inside the tunnel, so the proxy and the parent see only ciphertext.
 * Our own connector rather than undici's ProxyAgent, which reconnects in a tight loop, deaf to
 * abort signals, when a proxy drops the connection during CONNECT (nodejs/undici#3897).
 */
import net from 'node:net';
import tls from 'node:tls';
import { Agent, type buildConnector } from 'undici';
import { KmsError } from './kms-error.js';

/** A CONNECT answer's header block; a proxy that sends more before the blank line is not one we talk to. */
const MAX_PROXY_HEADER_BYTES = 8 * 1024;
const MAX_REASON_CHARS = 200;

export interface ProxyAddress {
  host: string;
  port: number;
}

/**
 * An undici Agent whose every connection is a CONNECT tunnel through `proxy`, each step bounded by
 * `timeoutMs`. `trust` replaces the default CAs for https targets (tests); default Node's bundle.
 */
export function tunnelAgent(proxy: ProxyAddress, timeoutMs: number, trust?: Pick<tls.ConnectionOptions, 'ca'>): Agent {
  return new Agent({ connect: tunnelConnector(proxy, timeoutMs, trust) });
}

/** The connector behind tunnelAgent: CONNECT host:port, a 200 answer, then TLS for https targets. */
export function tunnelConnector(
  proxy: ProxyAddress,
  timeoutMs: number,
  trust?: Pick<tls.ConnectionOptions, 'ca'>,
): buildConnector.connector {
  const where = `${proxy.host.includes(':') ? `[${proxy.host}]` : proxy.host}:${proxy.port}`;
  return (options, callback) => {
    const port = Number(options.port) || (options.protocol === 'https:' ? 443 : 80);
    const hostname = options.hostname.replace(/^\[|\]$/g, '');
    const authority = `${hostname.includes(':') ? `[${hostname}]` : hostname}:${port}`;
    const socket = net.connect({ host: proxy.host, port: proxy.port });
    let settled = false;
    let header = Buffer.alloc(0);
    const fail = (reason: string, cause?: unknown) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.destroy();
      callback(
        new KmsError(
          'ERR_KMS_UNREACHABLE',
          `the egress proxy at ${where} could not open a tunnel to ${authority}: ${reason}`,
          { cause },
        ),
        null,
      );
    };
    const timer = setTimeout(() => fail(`no tunnel within ${timeoutMs} ms`), timeoutMs);
    socket.once('error', (error: NodeJS.ErrnoException) => fail(error.code ?? 'socket error', error));
    socket.once('close', () => fail('the proxy closed the connection before answering CONNECT'));
    socket.once('connect', () => socket.write(`CONNECT ${authority} HTTP/1.1\r\nhost: ${authority}\r\n\r\n`));
    const onData = (chunk: Buffer) => {
      header = Buffer.concat([header, chunk]);
      const end = header.indexOf('\r\n\r\n');
      if (end < 0) {
        if (header.length > MAX_PROXY_HEADER_BYTES) fail(`the CONNECT answer is over ${MAX_PROXY_HEADER_BYTES} bytes`);
        return;
      }
      socket.off('data', onData);
      const statusLine = header.subarray(0, header.indexOf('\r\n')).toString('latin1');
      const status = /^HTTP\/1\.[01] (\d{3})/.exec(statusLine)?.[1];
      if (status !== '200') {
        const body = printable(header.subarray(end + 4).toString('utf8'));
        fail(`${printable(statusLine)}${body ? ` (${body})` : ''}`);
        return;
      }
      // Bytes after a 200 and before our TLS hello would be the proxy talking for the destination.
      if (header.length > end + 4) {
        fail('the proxy sent data before the tunnel was used');
        return;
      }
      socket.removeAllListeners('close');
      if (options.protocol !== 'https:') return done(socket);
      const servername = options.servername || (net.isIP(hostname) ? undefined : hostname);
      const secure = tls.connect({
        socket,
        ...(servername ? { servername } : {}),
        ALPNProtocols: ['http/1.1'],
        ...(trust?.ca ? { ca: trust.ca } : {}),
      });
      secure.once('error', (error: NodeJS.ErrnoException) => fail(`TLS: ${error.code ?? error.message}`, error));
      secure.once('secureConnect', () => {
        secure.removeAllListeners('error');
        done(secure);
      });
    };
    const done = (connected: net.Socket | tls.TLSSocket) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      callback(null, connected);
    };
    socket.on('data', onData);
  };
}

/** A proxy's words for a message: one line, printable, short. */
function printable(text: string): string {
  const line = text.replace(/[^\x20-\x7e]+/g, ' ').trim();
  return line.length > MAX_REASON_CHARS ? `${line.slice(0, MAX_REASON_CHARS)}…` : line;
}
