import type { Address } from '../bridge/address.js';
import { LOG_LEVELS } from '../log.js';
import { address, bool, int, oneOf, pcrTable, text, type Field, type Mode } from './field.js';

/** A table of enclave.toml: keys are fields or nested tables. */
export interface Table {
  readonly kind: 'table';
  readonly doc: string;
  readonly entries: Readonly<Record<string, Field | Table>>;
}

const table = (doc: string, entries: Record<string, Field | Table>): Table => ({ kind: 'table', doc, entries });
const byMode = <T>(run: T, dev: T, host: T = run) => (mode: Mode): T => (mode === 'dev' ? dev : mode === 'host' ? host : run);

const SECOND = 1000;
const HOUR = 3600 * SECOND;

/** The whole of enclave.toml. Keys are snake_case here and camelCase in RuntimeConfig. */
export const SCHEMA: Table = table('enclave.toml', {
  runtime: table('process-wide settings', {
    log_level: oneOf('log verbosity', 'info', LOG_LEVELS),
    state_dir: text('where keys, CA and simulated-NSM chain persist', '.enclave-runtime'),
    shutdown_grace_ms: int('how long SIGTERM/SIGINT waits for open connections to drain', 10 * SECOND, 0, 10 * 60 * SECOND),
  }),
  ingress: table('parent -> enclave -> app', {
    enabled: bool('accept ingress connections at all', true),
    listen: address('where the parent connects', byMode('vsock:any:7777', 'tcp:127.0.0.1:8443')),
    app: address("the customer app's port", 'tcp:127.0.0.1:8008'),
    proxy_protocol: oneOf('PROXY protocol header expected from the parent', 'off', ['off', 'v1', 'v2', 'any']),
    send_proxy_protocol: oneOf('PROXY protocol header sent to the app', 'off', ['off', 'v1', 'v2']),
    max_connections: int('concurrent connections; more are closed at once', 4096, 1, 1_000_000),
    connect_timeout_ms: int('time to connect to the app', 5 * SECOND, 10, 5 * 60 * SECOND),
    idle_timeout_ms: int('a connection with no bytes either way for this long is closed', 5 * 60 * SECOND, 100, 24 * HOUR),
    proxy_header_timeout_ms: int('time for the PROXY header to arrive', 5 * SECOND, 10, 5 * 60 * SECOND),
  }),
  tls: table('TLS termination with attested certificates', {
    enabled: bool('terminate TLS on ingress (off: passthrough)', false),
    source: oneOf('where certificates come from', 'self', ['self']),
    server_name: text('the base host name of the certificates', 'localhost', /^[A-Za-z0-9.-]{1,253}$/, 'a DNS name'),
    sni_nonce_encoding: oneOf('how <nonce>.attest.<host> labels are decoded', 'hex', ['hex', 'base64']),
    nonce_cache_size: int('per-nonce certificates kept (LRU)', 1024, 1, 1_000_000),
  }),
  attestation: table('the NSM and the internal API', {
    mode: oneOf('"nsm" is /dev/nsm; "simulated" only for tests (dev always simulates)', byMode('nsm', 'simulated'), ['nsm', 'simulated']),
    device: text('the NSM device', '/dev/nsm'),
    api_listen: address('the internal API for the app', 'tcp:127.0.0.1:9999', ['tcp']),
    simulated: table('the simulated NSM', {
      debug: bool('all-zero PCR0-2, as a debug-mode enclave has', false),
      module_id: text('module_id in documents', 'i-0000000000000000-enc0000000000000000'),
      pcrs: pcrTable('PCR values by index; unset ones are derived from the index'),
    }),
  }),
});

export interface RuntimeConfig {
  runtime: { logLevel: (typeof LOG_LEVELS)[number]; stateDir: string; shutdownGraceMs: number };
  ingress: {
    enabled: boolean;
    listen: Address;
    app: Address;
    proxyProtocol: 'off' | 'v1' | 'v2' | 'any';
    sendProxyProtocol: 'off' | 'v1' | 'v2';
    maxConnections: number;
    connectTimeoutMs: number;
    idleTimeoutMs: number;
    proxyHeaderTimeoutMs: number;
  };
  tls: {
    enabled: boolean;
    source: 'self';
    serverName: string;
    sniNonceEncoding: 'hex' | 'base64';
    nonceCacheSize: number;
  };
  attestation: {
    mode: 'nsm' | 'simulated';
    device: string;
    apiListen: Address & { transport: 'tcp' };
    simulated: { debug: boolean; moduleId: string; pcrs: Record<number, Uint8Array> };
  };
}
