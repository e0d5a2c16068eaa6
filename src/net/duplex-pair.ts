import { Duplex } from 'node:stream';

/**
 * Two Duplex ends wired back to back, like Node 22's stream.duplexPair (absent from Node 20): what
 * one writes the other reads, its end is the other's end and destroying one destroys both. A socket
 * in memory: the TLS context self-test handshakes over it, and tests hand it where the ingress takes
 * a native vsock or unix Duplex. `onFirstToSecond` is told the length of each chunk the first end writes.
 */
export function duplexPair(onFirstToSecond?: (bytes: number) => void): [Duplex, Duplex] {
  const ends: Duplex[] = [];
  const make = (index: number) =>
    new Duplex({
      allowHalfOpen: true,
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        if (index === 0) onFirstToSecond?.(chunk.length);
        ends[1 - index]!.push(chunk);
        callback();
      },
      final(callback) {
        ends[1 - index]!.push(null);
        callback();
      },
      destroy(err, callback) {
        const other = ends[1 - index]!;
        if (!other.destroyed) other.destroy();
        callback(err);
      },
    });
  ends.push(make(0), make(1));
  return [ends[0]!, ends[1]!];
}
