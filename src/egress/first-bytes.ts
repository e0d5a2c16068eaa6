/**
 * Reads the first bytes of an outbound connection, without answering, to learn the host the app
 * means: the TLS ClientHello's SNI or the HTTP request's Host. It waits at most `timeoutMs`:
 * server-first protocols (SMTP, MySQL, SSH banners) send nothing until the server speaks, and
 * are then decided on the IP alone.
 *
 * The bytes read are returned so the caller forwards them first; the stream is left paused.
 */
import type { Duplex } from 'node:stream';
import { ClientHelloError, CLIENT_HELLO_MAX_LENGTH, parseClientHello } from './client-hello.js';
import { HttpHostError, HTTP_HEAD_MAX_LENGTH, parseHttpHost } from './http-host.js';

export type FirstBytesProtocol = 'tls' | 'http' | 'other' | 'none';

export interface FirstBytes {
  /** Everything read, to be forwarded before the rest of the stream. */
  data: Buffer;
  /** 'none': nothing arrived in time (server-first); 'other': bytes that are neither TLS nor HTTP. */
  protocol: FirstBytesProtocol;
  /** The SNI or Host, as sent. */
  hostname?: string;
  /**
   * Why the bytes could not be trusted to name a host: a malformed ClientHello or request head,
   * or one still incomplete at the deadline or the size bound. The caller refuses such a connection,
   * since the SNI it has not seen yet could name anything.
   */
  problem?: string;
  /** The app closed its sending side while we read (its FIN was consumed here). */
  ended: boolean;
}

/** Enough for the largest ClientHello we parse, in records of at most 16 KiB plus their headers. */
export const FIRST_BYTES_MAX = CLIENT_HELLO_MAX_LENGTH + 32 * 5 + 64;

/** Peek at the start of `socket` for up to `timeoutMs`; resolves once the host is known or cannot be. */
export function readFirstBytes(socket: Duplex, timeoutMs: number, maxBytes: number = FIRST_BYTES_MAX): Promise<FirstBytes> {
  return new Promise((resolve) => {
    let data: Buffer = Buffer.alloc(0);
    let ended = false;
    let settled = false;

    const finish = (result: Omit<FirstBytes, 'data' | 'ended'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.pause();
      resolve({ data, ended, ...result });
    };

    /** Classify what has arrived; undefined while more bytes could still change the answer. */
    const classify = (final: boolean): Omit<FirstBytes, 'data' | 'ended'> | undefined => {
      if (data.length === 0) return final ? { protocol: 'none' } : undefined;
      try {
        const hello = parseClientHello(data);
        if (hello.kind === 'client-hello') return hello.serverName === undefined ? { protocol: 'tls' } : { protocol: 'tls', hostname: hello.serverName };
        if (hello.kind === 'incomplete') return final ? { protocol: 'tls', problem: 'incomplete TLS ClientHello' } : undefined;
      } catch (error) {
        if (error instanceof ClientHelloError) return { protocol: 'tls', problem: error.message };
        throw error;
      }
      try {
        const head = parseHttpHost(data, HTTP_HEAD_MAX_LENGTH);
        if (head.kind === 'http-request') return head.host === undefined ? { protocol: 'http' } : { protocol: 'http', hostname: head.host };
        if (head.kind === 'incomplete') return final ? { protocol: 'http', problem: 'incomplete HTTP request head' } : undefined;
      } catch (error) {
        if (error instanceof HttpHostError) return { protocol: 'http', problem: error.message };
        throw error;
      }
      return { protocol: 'other' };
    };

    const onData = (chunk: Buffer) => {
      data = data.length === 0 ? chunk : Buffer.concat([data, chunk]);
      const result = classify(data.length >= maxBytes);
      if (result) finish(result);
    };
    const onEnd = () => {
      ended = true;
      finish(classify(true)!);
    };
    const onClose = () => finish(classify(true)!);
    const timer = setTimeout(() => finish(classify(true)!), timeoutMs);

    socket.on('data', onData);
    socket.once('end', onEnd);
    socket.once('close', onClose);
    socket.resume();
  });
}
