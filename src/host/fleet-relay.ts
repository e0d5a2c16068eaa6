/**
 * The parent's two fleet relays. Inbound (host.fleet_listen -> host.enclave_fleet) is a plain
 * byte relay like the health relay: the exchange it carries is attested and sealed end to end, so
 * the relay needs to trust nothing. Outbound (host.fleet_relay_listen) lets the enclave reach its
 * peers and nothing else: it answers PEERS_ASK with fleet.peers resolved (a DNS name that lists every
 * parent becomes every parent), and dials a CONNECT target only when it is among those addresses
 * right now. It is never an open proxy: the enclave cannot name any other host or port.
 */
import net from 'node:net';
import type { Duplex } from 'node:stream';
import type { RuntimeConfig } from '../config/schema.js';
import { errorCode } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { FleetChannel } from '../fleet/fleet-channel.js';
import { FleetError } from '../fleet/fleet-error.js';
import { resolvePeers, splitPeer } from '../fleet/fleet-member.js';
import { formatAddress, type Address } from '../net/address.js';
import { relay } from '../net/relay.js';
import { listen, type Listener } from '../net/transport.js';
import { FRAME, PEER_ADDRESS } from '../wire/fleet-message.js';
import { classifyAddress, type AddressClass } from './address-class.js';

/**
 * Where a peer parent may be: public or VPC-private addresses (parents of one fleet usually talk
 * over 10.x or fd00::/8). Loopback, link-local (169.254.169.254 is the instance metadata service),
 * unspecified, multicast and reserved addresses are never another parent, so a DNS answer naming
 * them is dropped unless host.allow_private (dev and tests on one machine).
 */
const PEER_CLASSES: ReadonlySet<AddressClass> = new Set(['public', 'private', 'unique-local', 'cgnat']);

/** Whether a resolved `ip:port` may be listed and dialled. */
export function isPeerAddressAllowed(peer: string, allowPrivate: boolean): boolean {
  if (allowPrivate) return true;
  try {
    return PEER_CLASSES.has(classifyAddress(splitPeer(peer, 0).host));
  } catch {
    return false;
  }
}

/** Time for the enclave's first frame and for dialling the peer. */
const ROUTE_TIMEOUT_MS = 10_000;
const MAX_RELAY_CONNECTIONS = 64;

export interface FleetRelayOptions {
  listen: Address;
  peers: readonly string[];
  peerPort: number;
  connectTimeoutMs: number;
  idleTimeoutMs: number;
  logger: Logger;
  /** host.allow_private: also list and dial loopback and link-local peers (dev, tests). */
  allowPrivate?: boolean;
  /** Resolves the peers; tests replace it. */
  resolve?: (peers: readonly string[], port: number) => Promise<string[]>;
}

export interface FleetRelay {
  readonly address: Address;
  readonly stats: { connected: number; refused: number; listed: number };
  close(): Promise<void>;
}

export async function startFleetRelay(options: FleetRelayOptions): Promise<FleetRelay> {
  const { logger } = options;
  const resolve = options.resolve ?? resolvePeers;
  const sockets = new Set<Duplex>();
  const stats = { connected: 0, refused: 0, listed: 0 };

  async function handle(socket: Duplex): Promise<void> {
    const channel = new FleetChannel(socket, ROUTE_TIMEOUT_MS, 'the enclave');
    const frame = await channel.nextOf([FRAME.PEERS_ASK, FRAME.CONNECT]);
    const allowed = (await resolve(options.peers, options.peerPort)).filter((peer) =>
      isPeerAddressAllowed(peer, options.allowPrivate === true),
    );
    if (frame.type === FRAME.PEERS_ASK) {
      stats.listed += 1;
      channel.send(
        FRAME.PEERS,
        allowed.map((peer) => Buffer.from(peer, 'utf8')),
      );
      channel.close();
      return;
    }
    const target = frame.fields[0]!.toString('utf8');
    if (!PEER_ADDRESS.test(target) || !allowed.includes(target)) {
      stats.refused += 1;
      logger.warn(
        { target: target.slice(0, 128), peers: options.peers },
        'fleet relay refused a destination that is not a configured peer',
      );
      channel.refuse('ERR_FLEET_RELAY', `${target.slice(0, 128)} is not one of fleet.peers as resolved now`);
      return;
    }
    const { host, port } = splitPeer(target, options.peerPort);
    let upstream: net.Socket;
    try {
      upstream = await dial(host, port, options.connectTimeoutMs);
    } catch (error) {
      channel.refuse(
        'ERR_FLEET_UNREACHABLE',
        `cannot connect to ${target}: ${errorCode(error) ?? (error as Error).message}`,
      );
      return;
    }
    stats.connected += 1;
    sockets.add(upstream);
    upstream.once('close', () => sockets.delete(upstream));
    channel.send(FRAME.CONNECTED, []);
    const rest = channel.release();
    if (rest.byteLength > 0) upstream.write(rest);
    // release() paused the enclave's socket so no byte was lost; relay() resumes it unless `rest`
    // already filled the upstream's buffer, in which case it waits for 'drain' first.
    await relay(socket, upstream, { idleTimeoutMs: options.idleTimeoutMs });
  }

  let listener: Listener;
  try {
    listener = await listen(options.listen, (socket) => {
      if (sockets.size >= MAX_RELAY_CONNECTIONS) {
        socket.destroy();
        return;
      }
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      socket.on('error', () => {});
      handle(socket).catch((error: unknown) => {
        logger.warn(
          { code: errorCode(error), reason: (error as Error).message },
          'fleet relay: enclave request failed',
        );
        socket.destroy();
      });
    });
  } catch (error) {
    throw new FleetError(
      'ERR_FLEET_LISTEN',
      `the fleet relay cannot listen on ${formatAddress(options.listen)}: ${errorCode(error) ?? (error as Error).message}`,
      { cause: error },
    );
  }
  logger.info({ listen: formatAddress(listener.address), peers: options.peers }, 'fleet relay listening');
  return {
    address: listener.address,
    stats,
    async close() {
      await listener.close();
      for (const socket of sockets) socket.destroy();
    },
  };
}

function dial(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(Object.assign(new Error(`no connection within ${timeoutMs} ms`), { code: 'ETIMEDOUT' }));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
  });
}

/** The relays `host` runs for the fleet; `fleet` is read for its peers. */
export async function startHostFleetRelays(
  config: Pick<RuntimeConfig, 'host' | 'fleet'>,
  logger: Logger,
): Promise<Array<{ name: string; close: () => Promise<void> }>> {
  const started: Array<{ name: string; close: () => Promise<void> }> = [];
  const { host, fleet } = config;
  try {
    if (host.fleetListen) {
      const { Ingress } = await import('../ingress/ingress.js');
      const inbound = await Ingress.start({
        name: 'fleet relay',
        listen: host.fleetListen,
        app: host.enclaveFleet,
        proxyProtocol: 'off',
        sendProxyProtocol: 'off',
        maxConnections: Math.min(MAX_RELAY_CONNECTIONS, host.maxConnections),
        connectTimeoutMs: host.connectTimeoutMs,
        idleTimeoutMs: host.idleTimeoutMs,
        proxyHeaderTimeoutMs: 5_000,
        logger: logger.child({ relay: 'fleet inbound' }),
      });
      started.push({ name: 'fleet inbound relay', close: () => inbound.stop(0) });
    }
    if (host.fleetRelayListen) {
      const outbound = await startFleetRelay({
        listen: host.fleetRelayListen,
        peers: fleet.peers,
        peerPort: fleet.peerPort,
        connectTimeoutMs: host.connectTimeoutMs,
        idleTimeoutMs: host.idleTimeoutMs,
        allowPrivate: host.allowPrivate,
        logger: logger.child({ relay: 'fleet outbound' }),
      });
      started.push({ name: 'fleet outbound relay', close: () => outbound.close() });
    }
    return started;
  } catch (error) {
    for (const part of started) await part.close().catch(() => {});
    throw error;
  }
}
