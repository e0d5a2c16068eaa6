/**
 * One DNS-over-TCP conversation (RFC 1035 4.2.2, RFC 7766): 2-byte length-prefixed messages on a
 * byte stream, each answered in the same framing, several in flight at once. The app's DNS server
 * (TCP) and the host's DNS relay (over the bridge) both serve their streams with this loop; only
 * what a message is answered with differs.
 *
 * Bounds, so a client cannot hold resources: a frame larger than a DNS message ends the stream,
 * at most `maxPending` questions wait for answers at once (one more ends the stream), and a
 * stream with no bytes either way for `idleMs` is destroyed.
 */
import type { Duplex } from 'node:stream';
import { DnsTcpFrameReader, encodeTcpFrame } from './dns-message.js';

export interface DnsStreamOptions {
  /** Answers one message (wire bytes); undefined means no answer is written. */
  answer(message: Buffer): Promise<Buffer | undefined>;
  idleMs: number;
  maxPending: number;
  /** A frame that is not a DNS message length was received; the stream is destroyed after this. */
  onMalformed(): void;
  /** `answer` rejected; the stream goes on. */
  onError(error: Error): void;
}

export function serveDnsStream(stream: Duplex, options: DnsStreamOptions): void {
  const reader = new DnsTcpFrameReader();
  let pending = 0;
  let ended = false;
  const idle = setTimeout(() => stream.destroy(), options.idleMs);
  stream.on('error', () => {});
  stream.once('close', () => clearTimeout(idle));
  stream.on('data', (chunk: Buffer) => {
    idle.refresh();
    let messages: Buffer[];
    try {
      messages = reader.push(chunk);
    } catch {
      options.onMalformed();
      stream.destroy();
      return;
    }
    for (const message of messages) {
      if (++pending > options.maxPending) {
        stream.destroy();
        return;
      }
      // A copy, so the answer does not pin (or see later writes to) the received chunk.
      void options
        .answer(Buffer.from(message))
        .then((response) => {
          if (response && !stream.destroyed) stream.write(encodeTcpFrame(response));
        })
        .catch((error: Error) => options.onError(error))
        .finally(() => {
          pending--;
          if (!stream.destroyed) idle.refresh();
          if (ended && pending === 0) stream.end();
        });
    }
  });
  // A client may send its questions and half-close: answer them all first, then close.
  stream.on('end', () => {
    ended = true;
    if (pending === 0) stream.end();
  });
}
