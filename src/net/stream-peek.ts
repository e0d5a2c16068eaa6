/**
 * Reading the start of a stream until a parser decides what it is, then handing the stream on:
 * the PROXY header before ingress, the first request before the well-known attestation answer,
 * the egress relay's header (host) and reply (enclave). Every such read is bounded in bytes and
 * in time, so a peer that trickles or never finishes a head cannot hold a connection, and leaves
 * the stream paused with none of its listeners on it, with no byte lost: the bytes after the
 * decision are put back (`unshift`) or returned for the caller to forward first.
 *
 * The egress inspection gate (egress/inspection-gate.ts) is not one of these: it judges every
 * byte the app sends for the whole connection, not only a head, and forwards nothing it has not
 * allowed, so it stays a Duplex of its own.
 */
import type { Duplex } from 'node:stream';

/** What `decide` found: the value, and how many of the bytes it read belong to the head. */
export interface PeekDecision<T> {
  value: T;
  /** Head length in bytes (0..bytes.length); the bytes after it are the rest. */
  length: number;
}

export interface PeekOptions {
  /** Give up when this many bytes arrived without a decision. */
  maxBytes: number;
  /** Give up when no decision came within this time. */
  timeoutMs: number;
  /**
   * Where the bytes after the head go: 'unshift' puts them back on the stream before the read
   * settles (so its 'end' cannot be emitted ahead of them); 'return' hands them back as `rest`.
   */
  rest: 'unshift' | 'return';
  /** On the byte bound or the timeout, put every byte read back, so the stream is as it was. */
  restoreOnGiveUp?: boolean;
}

export type PeekResult<T> =
  /** `rest` is empty when it was unshifted. */
  | { kind: 'decided'; value: T; head: Buffer; rest: Buffer }
  | { kind: 'bound'; bytes: Buffer }
  | { kind: 'timeout'; bytes: Buffer }
  /** The stream ended or closed before a decision (or before the read began). */
  | { kind: 'ended'; bytes: Buffer }
  /** The stream failed before a decision. */
  | { kind: 'failed'; error: Error; bytes: Buffer }
  /** `decide` threw: the bytes are not what was expected. */
  | { kind: 'invalid'; error: unknown; bytes: Buffer };

/**
 * Reads `stream` until `decide` returns a decision (undefined: more bytes could change it), the
 * byte bound or the timeout is reached, or the stream ends or fails. Never rejects.
 */
export function peekStream<T>(
  stream: Duplex,
  decide: (bytes: Buffer) => PeekDecision<T> | undefined,
  options: PeekOptions,
): Promise<PeekResult<T>> {
  return new Promise((resolve) => {
    let bytes: Buffer = Buffer.alloc(0);
    let settled = false;
    const finish = (result: PeekResult<T>, putBack?: Buffer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onError);
      stream.pause();
      if (putBack && putBack.length > 0 && !stream.destroyed) stream.unshift(putBack);
      resolve(result);
    };
    const giveUp = (kind: 'bound' | 'timeout'): void =>
      finish({ kind, bytes }, options.restoreOnGiveUp ? bytes : undefined);
    const onData = (chunk: Buffer | string): void => {
      const incoming = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : chunk;
      bytes = bytes.length === 0 ? incoming : Buffer.concat([bytes, incoming]);
      let decision: PeekDecision<T> | undefined;
      try {
        decision = decide(bytes);
      } catch (error) {
        finish({ kind: 'invalid', error, bytes });
        return;
      }
      if (decision) {
        const head = bytes.subarray(0, decision.length);
        const rest = bytes.subarray(decision.length);
        if (options.rest === 'unshift')
          finish({ kind: 'decided', value: decision.value, head, rest: Buffer.alloc(0) }, rest);
        else finish({ kind: 'decided', value: decision.value, head, rest });
      } else if (bytes.length >= options.maxBytes) {
        giveUp('bound');
      }
    };
    const onEnd = (): void => finish({ kind: 'ended', bytes });
    const onError = (error: Error): void => finish({ kind: 'failed', error, bytes });
    const timer = setTimeout(() => giveUp('timeout'), options.timeoutMs);
    if (stream.destroyed || stream.readableEnded) {
      onEnd();
      return;
    }
    stream.on('data', onData);
    stream.on('end', onEnd);
    stream.on('close', onEnd);
    stream.on('error', onError);
    // A stream paused by an earlier read stays paused when a 'data' listener is added.
    stream.resume();
  });
}
