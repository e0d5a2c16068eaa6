/**
 * The enclave's side of the egress relay protocol (egress-header.ts): connect to the host,
 * send where to, and wait for the host to say it connected before any payload flows.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { formatAddress, type Address } from '../net/address.js';
import { peekStream } from '../net/stream-peek.js';
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

async function readReply(stream: TransportSocket, timeoutMs: number): Promise<EgressStatusCode> {
  // The destination may speak first (a banner) right behind the reply: those bytes go back on the stream.
  const read = await peekStream(
    stream,
    (bytes) => {
      const reply = parseEgressReply(bytes);
      return reply.kind === 'reply' ? { value: reply.status, length: reply.length } : undefined;
    },
    { maxBytes: EGRESS_REPLY_LENGTH, timeoutMs, rest: 'unshift' },
  );
  switch (read.kind) {
    case 'decided':
      return read.value;
    case 'invalid': {
      const message = read.error instanceof Error ? read.error.message : String(read.error);
      throw new EgressRelayError('ERR_EGRESS_RELAY', message, undefined, { cause: read.error });
    }
    case 'bound':
    case 'ended':
      throw new EgressRelayError('ERR_EGRESS_RELAY', 'egress relay closed the stream before replying');
    case 'timeout':
      throw new EgressRelayError('ERR_EGRESS_RELAY', `egress relay did not reply within ${timeoutMs} ms`);
    case 'failed':
      throw new EgressRelayError('ERR_EGRESS_RELAY', `egress relay stream failed: ${read.error.message}`, undefined, {
        cause: read.error,
      });
  }
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
