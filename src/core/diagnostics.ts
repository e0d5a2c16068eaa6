/**
 * What the runtime's parts report for others to observe, as named node:diagnostics_channel
 * channels (as undici does in lib/core/diagnostics.js): a part publishes without knowing who
 * listens, metrics and tests subscribe. Publishing to a channel nobody subscribes to costs a check.
 */
import diagnosticsChannel from 'node:diagnostics_channel';

/** A channel whose messages have one shape. */
export interface Channel<T> {
  readonly name: string;
  readonly hasSubscribers: boolean;
  publish(message: T): void;
  subscribe(listener: (message: T) => void): void;
  unsubscribe(listener: (message: T) => void): void;
}

function channel<T>(name: string): Channel<T> {
  // Held here, so the channel (and its subscribers) live as long as the process.
  const inner = diagnosticsChannel.channel(name);
  return {
    name,
    get hasSubscribers() {
      return inner.hasSubscribers;
    },
    publish(message) {
      if (inner.hasSubscribers) inner.publish(message);
    },
    subscribe(listener) {
      diagnosticsChannel.subscribe(name, listener as (message: unknown) => void);
    },
    unsubscribe(listener) {
      diagnosticsChannel.unsubscribe(name, listener as (message: unknown) => void);
    },
  };
}

/** An egress refusal: the path (dns, transparent, proxy) and the reason ("no-rule", "private-ip", ...). */
export interface EgressRefusal {
  path: string;
  reason: string;
}

/** A part of the runtime that failed to stop (the closer stack went on with the others). */
export interface StopFailure {
  part: string;
  error: unknown;
}

/** One fleet exchange: which side this member played, and how it ended (`code` on failure). */
export interface FleetSync {
  role: 'requester' | 'responder';
  outcome: 'ok' | 'refused' | 'failed';
  /** The ERR_FLEET_* code of a refusal or failure (a refusal by the peer: the peer's code). */
  code?: string | undefined;
}

export const channels = {
  egressRefused: channel<EgressRefusal>('enclave-runtime:egress:refused'),
  stopFailed: channel<StopFailure>('enclave-runtime:lifecycle:stop-failed'),
  fleetSync: channel<FleetSync>('enclave-runtime:fleet:sync'),
} as const;
