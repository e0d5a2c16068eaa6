import { parseAddress } from '../../src/net/address.js';
import type { Allowlist } from '../../src/egress/allowlist.js';
import type { NameCache } from '../../src/egress/name-cache.js';
import { EgressRelay } from '../../src/host/egress-relay.js';
import { silentLogger } from '../../src/core/log.js';

/** The host's egress relay on a loopback port, letting private (test) destinations through. */
export function startLoopbackRelay(allowlist: Allowlist, cache: NameCache): Promise<EgressRelay> {
  return EgressRelay.start({
    listen: parseAddress('tcp:127.0.0.1:0'),
    allowlist,
    cache,
    allowPrivate: true,
    connectTimeoutMs: 2000,
    idleTimeoutMs: 10_000,
    maxConnections: 64,
    logger: silentLogger(),
  });
}
