import type { FleetSettings } from '../../src/fleet/fleet-member.js';

/** A member's [fleet] settings for in-process tests: plain TCP on loopback, no relay, peers by port. */
export function loopbackFleetSettings(
  port: number,
  peers: number[],
  bootstrap: boolean,
  syncIntervalMs: number,
): FleetSettings {
  return {
    enabled: true,
    listen: { transport: 'tcp', host: '127.0.0.1', port },
    peers: peers.map((peer) => `127.0.0.1:${peer}`),
    peerPort: 7790,
    relay: undefined,
    bootstrap,
    syncIntervalMs,
    exchangeTimeoutMs: 5_000,
    allowDebug: false,
    attestationRoot: '',
    maxConnections: 8,
  };
}
