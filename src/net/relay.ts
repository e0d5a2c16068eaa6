import type { Duplex } from 'node:stream';

export type RelayEnd = 'closed' | 'idle' | 'error' | 'aborted';

export interface RelayOutcome {
  end: RelayEnd;
  /** Bytes from `a` to `b`, and from `b` to `a`. */
  aToB: number;
  bToA: number;
  error?: Error;
}

export interface RelayOptions {
  /** Both sides are destroyed after this long with no bytes in either direction. */
  idleTimeoutMs: number;
  signal?: AbortSignal;
}

/**
 * Pipes two byte streams both ways until both are done, with backpressure and half-close: when one
 * side ends (FIN), the other side's write half is ended and the reverse direction goes on. An
 * error, reset or idle timeout on either side destroys both, so nothing lingers half-dead.
 *
 * Not pipe(): pipe() hangs six listeners per direction on the two streams and a byte counter needs
 * a second 'data' listener besides, all on the path of every connection and every chunk. Here one
 * 'data' listener per direction counts, stamps and forwards; 'drain' is listened to only while
 * waiting for it.
 */
export function relay(a: Duplex, b: Duplex, options: RelayOptions): Promise<RelayOutcome> {
  return new Promise((resolve) => {
    const outcome: RelayOutcome = { end: 'closed', aToB: 0, bToA: 0 };
    let settled = false;
    let open = 2;

    // Chunks are only counted. The timer looks every quarter period whether the counts moved since
    // its last look, so an idle relay ends between one and one and a quarter periods after its last
    // byte, and no chunk pays for a clock read or a timer update.
    const checkMs = Math.max(1, Math.ceil(options.idleTimeoutMs / 4));
    let counted = 0;
    let quietSince = performance.now();
    const onIdleTimer = () => {
      const now = performance.now();
      const moved = outcome.aToB + outcome.bToA;
      if (moved !== counted) {
        counted = moved;
        quietSince = now;
      } else if (now - quietSince >= options.idleTimeoutMs) return finish('idle');
      idle = setTimeout(onIdleTimer, Math.min(checkMs, Math.max(1, options.idleTimeoutMs - (now - quietSince))));
    };
    let idle = setTimeout(onIdleTimer, checkMs);
    const finish = (end: RelayEnd, error?: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(idle);
      options.signal?.removeEventListener('abort', onAbort);
      outcome.end = end;
      if (error) outcome.error = error;
      a.destroy();
      b.destroy();
      resolve(outcome);
    };
    const onAbort = () => finish('aborted');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    if (options.signal?.aborted) return finish('aborted');
    // Listening before any return: a side destroyed with an error in this tick still emits it.
    a.on('error', (error) => finish('error', error));
    b.on('error', (error) => finish('error', error));
    // A side destroyed before the relay began has emitted (or is about to emit) its 'close' unheard.
    if (a.destroyed || b.destroyed) return finish('closed');

    // A side that closes after a clean exchange (read ended, writes flushed) leaves the other to
    // finish on its own; one that closes any other way took its data with it, so end the peer too.
    const onClose = (side: Duplex, other: Duplex) => () => {
      if (!(side.readableEnded && side.writableFinished)) other.destroy();
      if (--open === 0) finish('closed');
    };
    a.once('close', onClose(a, b));
    b.once('close', onClose(b, a));

    pump(a, b, (bytes) => (outcome.aToB += bytes));
    pump(b, a, (bytes) => (outcome.bToA += bytes));
  });
}

/**
 * Writes what `from` reads to `to`, pausing `from` while `to`'s buffer is over its high-water mark
 * (the bound on what a fast sender can pile up here), and ends `to` once `from` has ended.
 */
function pump(from: Duplex, to: Duplex, count: (bytes: number) => void): void {
  let waiting = false;
  const onDrain = () => {
    waiting = false;
    from.resume();
  };
  const wait = () => {
    // Paused on every refusal, not only the first: whoever resumed `from` meanwhile (a caller that
    // paused it before the relay) must not turn the wait for 'drain' into unbounded buffering.
    from.pause();
    if (waiting) return;
    waiting = true;
    to.once('drain', onDrain);
  };
  from.on('data', (chunk: Buffer) => {
    count(chunk.length);
    if (!to.write(chunk)) wait();
  });
  // Ended before the relay began (everything read off it already): 'end' will not come again.
  if (from.readableEnded) process.nextTick(() => to.end());
  else from.once('end', () => to.end());
  // A 'data' listener does not resume a stream paused before (a header was read off it).
  if (to.writableNeedDrain) wait();
  else from.resume();
}
