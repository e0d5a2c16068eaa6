/**
 * This enclave as a fleet member: serves exchanges to peers on `fleet.listen`, and every
 * `sync_interval_ms` runs one exchange with each peer (push-pull: each side sends its state, each
 * merges the other's), so a change anywhere reaches every reachable member within one interval.
 * Peers are reached through the parent's fleet relay (which alone resolves `fleet.peers` and dials
 * only those), or directly over TCP when `fleet.relay` is "off" (dev and tests).
 *
 * No consensus: membership is whoever answers with equal PCRs; state converges by the merge rules
 * of FleetState. A split (two members that bootstrapped apart) heals on the first exchange between
 * the halves: the higher version (writer id on a tie) wins each entry everywhere.
 */
import { lookup } from 'node:dns/promises';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Duplex } from 'node:stream';
import type { Nsm } from '../attestation/nsm.js';
import { SIM_ROOT_FILE } from '../attestation/sim-chain.js';
import { channels } from '../core/diagnostics.js';
import { errorCode } from '../core/errors.js';
import type { Logger } from '../core/log.js';
import { formatAddress, type Address } from '../net/address.js';
import { connect, listen, type Listener } from '../net/transport.js';
import { decodeAttestation } from '../verify/verifier.js';
import { FRAME, MAX_LISTED_PEERS, PEER_ADDRESS } from '../wire/fleet-message.js';
import { FleetChannel } from './fleet-channel.js';
import { FleetError } from './fleet-error.js';
import { answerExchange, fleetPcrsOf, requestExchange, type ExchangeContext } from './fleet-exchange.js';
import type { FleetState, MergeOutcome } from './fleet-state.js';
import { NonceBook } from './nonce-book.js';

/** The `[fleet]` keys of enclave.toml. */
export interface FleetSettings {
  enabled: boolean;
  listen: Address;
  /** `host` or `host:port` (port default `peerPort`): addresses, or one DNS name resolving to every parent. */
  peers: string[];
  peerPort: number;
  /** The parent's fleet relay; undefined: dial peers directly (dev, tests). */
  relay: Address | undefined;
  bootstrap: boolean;
  syncIntervalMs: number;
  exchangeTimeoutMs: number;
  allowDebug: boolean;
  /** Required (at least 32 bytes) with allowDebug: see ExchangeContext.debugPsk. */
  debugPsk?: string;
  /** "" = the NSM's own root (AWS for the device, the state dir's simulated root otherwise), or a PEM file. */
  attestationRoot: string;
  maxConnections: number;
}

export interface PeerStatus {
  address: string;
  ok: boolean;
  lastSyncAt?: string;
  lastError?: string;
  moduleId?: string;
}

export interface FleetMemberOptions {
  settings: FleetSettings;
  nsm: Nsm;
  state: FleetState;
  stateDir: string;
  logger: Logger;
}

/** How long an address found to be this member is skipped before it is tried again. */
const SELF_RECHECK_MS = 10 * 60_000;

export class FleetMember {
  readonly state: FleetState;
  readonly #options: FleetMemberOptions;
  readonly #context: ExchangeContext;
  readonly #ownModuleId: string;
  readonly #peers = new Map<string, PeerStatus>();
  /** Addresses found (locally) to be this member, until when they are skipped. */
  readonly #self = new Map<string, number>();
  #listener: Listener | undefined;
  #timer: NodeJS.Timeout | undefined;
  #round: Promise<number> | undefined;
  #nextRound: Promise<number> | undefined;
  #open = 0;
  #closed = false;
  #joined = false;
  #rounds = 0;

  private constructor(options: FleetMemberOptions, context: ExchangeContext, ownModuleId: string) {
    this.#options = options;
    this.state = options.state;
    this.#context = context;
    this.#ownModuleId = ownModuleId;
  }

  /** Reads this enclave's PCRs, listens for peers, runs a first round, then one each interval. */
  static async start(options: FleetMemberOptions): Promise<FleetMember> {
    const { settings, nsm, logger } = options;
    const own = decodeAttestation(await nsm.attest({}));
    const root = await resolveRoot(settings.attestationRoot, nsm, options.stateDir);
    const context: ExchangeContext = {
      nsm,
      root,
      pcrs: fleetPcrsOf(own),
      allowDebug: settings.allowDebug,
      debugPsk: settings.debugPsk ? Buffer.from(settings.debugPsk, 'utf8') : undefined,
      seen: new NonceBook(),
      outgoing: new Set(),
      selfSeen: new Set(),
      timeoutMs: settings.exchangeTimeoutMs,
    };
    const member = new FleetMember(options, context, own.moduleId);
    try {
      member.#listener = await listen(settings.listen, (socket) => member.#serve(socket));
    } catch (error) {
      throw new FleetError(
        'ERR_FLEET_LISTEN',
        `fleet cannot listen on ${formatAddress(settings.listen)}: ${errorCode(error) ?? (error as Error).message}`,
        { cause: error },
      );
    }
    logger.info(
      {
        listen: formatAddress(member.#listener.address),
        peers: settings.peers,
        relay: settings.relay ? formatAddress(settings.relay) : 'off',
        bootstrap: settings.bootstrap,
      },
      'fleet member listening',
    );
    const answered = await member.syncNow();
    if (answered === 0) {
      logger[settings.bootstrap ? 'info' : 'warn'](
        { peers: settings.peers },
        settings.bootstrap
          ? 'fleet: no peer answered; starting a new fleet (fleet.bootstrap = true)'
          : 'fleet: no peer answered; not starting a new fleet (fleet.bootstrap = false), retrying every interval',
      );
    }
    member.#timer = setInterval(() => void member.syncNow(), settings.syncIntervalMs);
    member.#timer.unref();
    return member;
  }

  /** Where peers reach this member (a tcp port 0 resolved). */
  get address(): Address | undefined {
    return this.#listener?.address;
  }

  /** Whether this member has exchanged with a peer at least once (or may start the fleet alone). */
  get joined(): boolean {
    return this.#joined;
  }

  get peers(): PeerStatus[] {
    return [...this.#peers.values()].map((peer) => ({ ...peer }));
  }

  /**
   * Whether this member orders the fleet's ACME certificate now: it has joined a fleet (or may
   * bootstrap one), and its module_id is the lowest among itself and the peers reachable at the last round.
   */
  mayOrderAcme(): boolean {
    if (!this.#joined && !this.#options.settings.bootstrap) return false;
    return [...this.#peers.values()].every(
      // Equal ids (simulated NSMs left at one module_id) let both order rather than neither.
      (peer) => !peer.ok || peer.moduleId === undefined || peer.moduleId >= this.#ownModuleId,
    );
  }

  /**
   * One exchange with every peer now (a round in flight is shared); resolves with how many answered.
   * `fresh`: the round must start after this call, so every peer gets the state as it is now (a round
   * in flight may have sent an older one); such callers share the one round queued behind it.
   */
  syncNow(options: { fresh?: boolean } = {}): Promise<number> {
    if (this.#closed) return Promise.resolve(0);
    if (options.fresh && this.#round) {
      this.#nextRound ??= this.#round
        .catch(() => 0)
        .then(() => {
          this.#nextRound = undefined;
          return this.syncNow();
        });
      return this.#nextRound;
    }
    this.#round ??= this.#syncRound().finally(() => {
      this.#round = undefined;
    });
    return this.#round;
  }

  health(): { ok: boolean; detail: string } {
    const peers = [...this.#peers.values()];
    const reachable = peers.filter((peer) => peer.ok).length;
    const last = peers
      .map((peer) => peer.lastSyncAt)
      .filter((at): at is string => at !== undefined)
      .sort()
      .pop();
    const detail = `${reachable}/${peers.length} peers reachable${last ? `, last sync ${last}` : ''}${
      this.#joined ? '' : this.#options.settings.bootstrap ? ', alone (bootstrap)' : ', joining: no peer answered yet'
    }`;
    return { ok: this.#joined || this.#options.settings.bootstrap, detail };
  }

  async close(): Promise<void> {
    this.#closed = true;
    clearInterval(this.#timer);
    await this.#listener?.close();
    await this.#round?.catch(() => {});
  }

  async #syncRound(): Promise<number> {
    this.#rounds += 1;
    let targets: string[];
    try {
      targets = await this.#listPeers();
    } catch (error) {
      if (this.#rounds === 1 || this.#peers.size === 0)
        this.#options.logger.warn(
          { code: errorCode(error), reason: (error as Error).message },
          'fleet: cannot list the peers',
        );
      return 0;
    }
    // Addresses found to be this member itself are skipped for a while, then checked again (an
    // address can be reassigned to another parent).
    const now = Date.now();
    for (const [address, until] of this.#self) if (until <= now) this.#self.delete(address);
    targets = targets.filter((address) => !this.#self.has(address));
    const seen = new Set(targets);
    for (const address of this.#peers.keys()) if (!seen.has(address)) this.#peers.delete(address);
    const results = await Promise.all(targets.map((address) => this.#syncWith(address)));
    return results.filter(Boolean).length;
  }

  async #syncWith(address: string): Promise<boolean> {
    const { logger } = this.#options;
    const previous = this.#peers.get(address);
    try {
      const socket = await this.#dial(address);
      const result = await requestExchange(socket, this.#context, () => this.state.encode(), address);
      const outcome = await this.state.merge(result.peerState);
      this.#joined = true;
      this.#peers.set(address, {
        address,
        ok: true,
        lastSyncAt: new Date().toISOString(),
        moduleId: result.peerModuleId,
      });
      channels.fleetSync.publish({ role: 'requester', outcome: 'ok' });
      if (!previous?.ok) logger.info({ peer: address, moduleId: result.peerModuleId }, 'fleet: synced with a peer');
      logMerge(logger, outcome, address);
      return true;
    } catch (error) {
      if (errorCode(error) === 'ERR_FLEET_SELF') {
        // A DNS name that resolves to every parent includes this one: not a peer (seen by our own responder).
        this.#peers.delete(address);
        this.#self.set(address, Date.now() + SELF_RECHECK_MS);
        return false;
      }
      const code = errorCode(error) ?? 'ERR_UNKNOWN';
      const refused = error instanceof FleetError && isRefusal(error);
      const reason = (error as Error).message;
      this.#peers.set(address, {
        address,
        ok: false,
        lastError: `${code}: ${reason}`.slice(0, 300),
        ...(previous?.lastSyncAt ? { lastSyncAt: previous.lastSyncAt } : {}),
      });
      const remote = error instanceof FleetError ? error.remoteCode : undefined;
      channels.fleetSync.publish({ role: 'requester', outcome: refused ? 'refused' : 'failed', code: remote ?? code });
      // Refusals every time (they are an attack or a misconfiguration); unreachable peers only on change.
      if (refused)
        logger.warn(
          { peer: address, code, ...(remote ? { remoteCode: remote } : {}), reason },
          'fleet: exchange refused',
        );
      else if (previous?.lastError === undefined || previous.ok)
        logger.warn({ peer: address, code, reason }, 'fleet: peer unreachable');
      return false;
    }
  }

  #serve(socket: Duplex): void {
    const { logger, settings } = this.#options;
    if (this.#open >= settings.maxConnections || this.#closed) {
      socket.destroy();
      return;
    }
    // Counted until the exchange settles, not until the socket closes: a queued NSM call outlives its socket.
    this.#open += 1;
    socket.on('error', () => {});
    let outcome: MergeOutcome | undefined;
    // Merged before this side answers, so a requester whose exchange completed knows this member
    // holds its state (an orderer relies on it before telling the CA a challenge is ready).
    const take = async (peerState: Buffer) => {
      outcome = await this.state.merge(peerState);
    };
    answerExchange(socket, this.#context, () => this.state.encode(), 'a requesting peer', take)
      .then((result) => {
        this.#joined = true;
        channels.fleetSync.publish({ role: 'responder', outcome: 'ok' });
        if (outcome) logMerge(logger, outcome, result.peerModuleId);
      })
      .catch((error: unknown) => {
        if (errorCode(error) === 'ERR_FLEET_SELF') return;
        const code = errorCode(error) ?? 'ERR_UNKNOWN';
        const refused = error instanceof FleetError && isRefusal(error);
        const remote = error instanceof FleetError ? error.remoteCode : undefined;
        channels.fleetSync.publish({
          role: 'responder',
          outcome: refused ? 'refused' : 'failed',
          code: remote ?? code,
        });
        logger.warn(
          { code, ...(remote ? { remoteCode: remote } : {}), reason: (error as Error).message },
          refused ? 'fleet: refused a requesting peer' : 'fleet: an exchange with a requesting peer failed',
        );
      })
      .finally(() => (this.#open -= 1));
  }

  /** The peers to try this round, as `host:port`. */
  async #listPeers(): Promise<string[]> {
    const { settings } = this.#options;
    if (settings.relay) {
      const channel = await this.#relayChannel();
      try {
        channel.send(FRAME.PEERS_ASK, []);
        const listed = await channel.next(FRAME.PEERS);
        return listed
          .map((field) => field.toString('utf8'))
          .filter((peer) => PEER_ADDRESS.test(peer))
          .slice(0, MAX_LISTED_PEERS);
      } finally {
        channel.close();
      }
    }
    return resolvePeers(settings.peers, settings.peerPort);
  }

  async #dial(address: string): Promise<Duplex> {
    const { settings } = this.#options;
    if (!settings.relay) {
      const { host, port } = splitPeer(address, settings.peerPort);
      return connectOrFail({ transport: 'tcp', host, port }, settings.exchangeTimeoutMs, address);
    }
    const channel = await this.#relayChannel();
    try {
      channel.send(FRAME.CONNECT, [Buffer.from(address, 'utf8')]);
      await channel.next(FRAME.CONNECTED);
    } catch (error) {
      channel.close();
      if (error instanceof FleetError && error.code === 'ERR_FLEET_REFUSED')
        throw new FleetError(
          'ERR_FLEET_RELAY',
          `the parent's fleet relay would not connect to ${address}: ${error.message}`,
        );
      throw error;
    }
    channel.release();
    return channel.socket;
  }

  async #relayChannel(): Promise<FleetChannel> {
    const relay = this.#options.settings.relay!;
    const socket = await connectOrFail(relay, this.#options.settings.exchangeTimeoutMs, "the parent's fleet relay");
    return new FleetChannel(
      socket,
      this.#options.settings.exchangeTimeoutMs,
      `the fleet relay at ${formatAddress(relay)}`,
    );
  }
}

function isRefusal(error: FleetError): boolean {
  return (
    error.code !== 'ERR_FLEET_UNREACHABLE' && error.code !== 'ERR_FLEET_TIMEOUT' && error.code !== 'ERR_FLEET_RELAY'
  );
}

function logMerge(logger: Logger, outcome: MergeOutcome, from: string): void {
  const took = Object.entries(outcome)
    .filter(([, changed]) => changed)
    .map(([entry]) => entry);
  if (took.length > 0) logger.info({ from, entries: took }, 'fleet: took newer state from a peer');
}

async function connectOrFail(address: Address, timeoutMs: number, what: string): Promise<Duplex> {
  try {
    return await connect(address, { timeoutMs });
  } catch (error) {
    throw new FleetError(
      'ERR_FLEET_UNREACHABLE',
      `cannot reach ${what}: ${errorCode(error) ?? (error as Error).message}`,
      {
        cause: error,
      },
    );
  }
}

/** `host[:port]` split; a bare name gets `defaultPort`. */
export function splitPeer(peer: string, defaultPort: number): { host: string; port: number } {
  const match = /^(\[[^\]]+\]|[^:]+)(?::(\d{1,5}))?$/.exec(peer);
  if (!match) throw new FleetError('ERR_FLEET_RELAY', `${JSON.stringify(peer.slice(0, 64))} is not HOST or HOST:PORT`);
  const host = match[1]!.replace(/^\[|\]$/g, '');
  return { host, port: match[2] === undefined ? defaultPort : Number(match[2]) };
}

/**
 * Every peer address `peers` names: each entry's name resolved to all its addresses (a headless
 * service or a target group's DNS name lists every parent), as `ip:port`, deduplicated, bounded.
 */
export async function resolvePeers(peers: readonly string[], defaultPort: number): Promise<string[]> {
  const out = new Set<string>();
  for (const peer of peers) {
    const { host, port } = splitPeer(peer, defaultPort);
    let addresses: string[];
    try {
      addresses = (await lookup(host, { all: true })).map((entry) => entry.address);
    } catch {
      addresses = [];
    }
    for (const address of addresses) {
      out.add(address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`);
      if (out.size >= MAX_LISTED_PEERS) return [...out];
    }
  }
  return [...out];
}

async function resolveRoot(configured: string, nsm: Nsm, stateDir: string): Promise<string | undefined> {
  if (configured) return readFile(configured, 'utf8');
  // The device's documents chain to the bundled AWS root (the verifier's default); the simulated NSM's to its state dir's root.
  if (nsm.kind === 'simulated') return readFile(join(stateDir, SIM_ROOT_FILE), 'utf8');
  return undefined;
}
