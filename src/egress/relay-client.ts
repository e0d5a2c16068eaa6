/**
 * The enclave's side of the egress relay protocol (egress-header.ts): connect to the host,
 * send where to, and wait for the host to say it connected before any payload flows.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { connect, type TransportSocket } from '../net/transport.js';
import { errorCode, RuntimeError } from '../core/errors.js';
import type { RelayWatch } from './relay-watch.js';
import {
  EgressStatus,
  egressStatusName,
  encodeEgressHeader,
  parseEgressReply,
  EGRESS_REPLY_LENGTH,
  type EgressHeader,
  type EgressStatusCode,
} from '../wire/egress-header.js';

/** The relay could not be reached or refused the destination; `status` is the host's reply, if any. */
export class EgressRelayError extends RuntimeError {
  readonly status: EgressStatusCode | undefined;

  constructor(
    code: 'ERR_EGRESS_RELAY' | 'ERR_EGRESS_RELAY_REFUSED',
    message: string,
    status?: EgressStatusCode,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.status = status;
  }
}

export interface RelayStreamOptions {
  /** Bound on connecting and on the host's reply, each. */
  timeoutMs: number;
  /** Told whether the connect to the relay succeeded. */
  watch?: RelayWatch | undefined;
}

/** Open a relay stream to `header`'s destination; resolves once the host replied OK. */
export async function openRelayStream(
  relay: Address,
  header: EgressHeader,
  options: RelayStreamOptions,
): Promise<TransportSocket> {
  let stream: TransportSocket;
  try {
    stream = await connect(relay, { timeoutMs: options.timeoutMs });
    options.watch?.reached(relay);
  } catch (error) {
    options.watch?.failed(relay, error);
    const code = errorCode(error) ?? (error as Error).message;
    throw new EgressRelayError(
      'ERR_EGRESS_RELAY',
      `egress relay ${formatAddress(relay)} unreachable: ${code}`,
      undefined,
      { cause: error },
    );
  }
  stream.on('error', () => {});
  stream.write(encodeEgressHeader(header));
  let status: EgressStatusCode;
  try {
    status = await readReply(stream, options.timeoutMs);
  } catch (error) {
    stream.destroy();
    throw error;
  }
  if (status !== EgressStatus.OK) {
    stream.destroy();
    throw new EgressRelayError('ERR_EGRESS_RELAY_REFUSED', `egress relay answered ${egressStatusName(status)}`, status);
  }
  return stream;
}

function readReply(stream: TransportSocket, timeoutMs: number): Promise<EgressStatusCode> {
  return new Promise((resolve, reject) => {
    let data: Buffer = Buffer.alloc(0);
    const done = (error: Error | undefined, status?: EgressStatusCode) => {
      clearTimeout(timer);
      stream.off('data', onData);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onError);
      if (error) reject(error);
      else resolve(status!);
    };
    const onData = (chunk: Buffer) => {
      data = Buffer.concat([data, chunk]);
      try {
        const reply = parseEgressReply(data);
        if (reply.kind === 'incomplete') return;
        stream.pause();
        // The destination may speak first (a banner) right behind the reply.
        if (data.length > EGRESS_REPLY_LENGTH) stream.unshift(data.subarray(EGRESS_REPLY_LENGTH));
        done(undefined, reply.status);
      } catch (error) {
        done(new EgressRelayError('ERR_EGRESS_RELAY', (error as Error).message, undefined, { cause: error }));
      }
    };
    const onEnd = () =>
      done(new EgressRelayError('ERR_EGRESS_RELAY', 'egress relay closed the stream before replying'));
    const onError = (error: Error) =>
      done(
        new EgressRelayError('ERR_EGRESS_RELAY', `egress relay stream failed: ${error.message}`, undefined, {
          cause: error,
        }),
      );
    const timer = setTimeout(
      () => done(new EgressRelayError('ERR_EGRESS_RELAY', `egress relay did not reply within ${timeoutMs} ms`)),
      timeoutMs,
    );
    stream.on('data', onData);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onError);
  });
}

/**
 * Resets `app` the moment the relay stream fails mid-connection (the host relay reset or went
 * away), so the app sees ECONNRESET as it would from a direct connection, not a clean end it
 * could take for a complete answer. Call before relay(), whose own handler would end `app` with a FIN.
 */
export function resetAppOnRelayFailure(
  app: Socket,
  upstream: Duplex,
  onFailure: (error: NodeJS.ErrnoException) => void,
): void {
  upstream.once('error', (error: NodeJS.ErrnoException) => {
    if (app.destroyed) return;
    onFailure(error);
    app.resetAndDestroy();
  });
}
