import type { Address } from '../bridge/address.js';
import type { IngressSettings } from '../bridge/ingress.js';
import { LOG_LEVELS } from '../log.js';
import { address, bool, int, oneOf, pcrTable, stringList, text, type Field, type Mode } from './field.js';

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
    enabled: bool('terminate TLS on ingress (off: passthrough)', true),
    source: oneOf('where certificates come from', 'self', ['self']),
    server_name: text('the base host name of the certificates', 'localhost', /^[A-Za-z0-9.-]{1,253}$/, 'a DNS name'),
    sni_nonce_encoding: oneOf('how <nonce>.attest.<host> labels are decoded', 'hex', ['hex', 'base64']),
    nonce_cache_size: int('per-nonce certificates kept (LRU)', 1024, 1, 1_000_000),
    alpn: stringList('ALPN protocols offered, most preferred first', ['h2', 'http/1.1'], 16),
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
  egress: table("the app's outbound traffic, allowed by name inside the enclave", {
    enabled: bool('run the egress services (DNS, transparent listener, proxy)', false),
    allow: stringList('allowed destinations: names, *.wildcards, IPs, CIDRs, optional :port, or "*"', [], 10_000),
    dns_listen: address('DNS for the app, UDP and TCP on the same port', byMode('tcp:127.0.0.1:53', 'tcp:127.0.0.1:8053'), ['tcp']),
    transparent_listen: address("where iptables redirects the app's outbound TCP", 'tcp:127.0.0.1:4444', ['tcp']),
    proxy_listen: address('the HTTP proxy for HTTP_PROXY/HTTPS_PROXY', 'tcp:127.0.0.1:3128', ['tcp']),
    relay: address("the host's egress relay", byMode('vsock:3:4433', 'tcp:127.0.0.1:4433')),
    dns_relay: address("the host's DNS relay", byMode('vsock:3:8585', 'tcp:127.0.0.1:8585')),
    dns_refusal: oneOf('answer to a denied DNS question', 'refused', ['refused', 'nxdomain']),
    apply_rules: bool('write the iptables rules that redirect outbound TCP (needs root)', byMode(true, false)),
    peek_timeout_ms: int('how long to wait for a TLS SNI or HTTP Host before deciding on the IP alone', 300, 10, 10 * SECOND),
    connect_timeout_ms: int('time to open a relay connection', 5 * SECOND, 10, 5 * 60 * SECOND),
    idle_timeout_ms: int('an egress connection idle this long is closed', 5 * 60 * SECOND, 100, 24 * HOUR),
    max_connections: int('concurrent egress connections', 4096, 1, 1_000_000),
    max_dns_in_flight: int('DNS questions waiting for the relay at once', 256, 1, 65_536),
  }),
  host: table('the parent instance side (`enclave-runtime host`)', {
    ingress_listen: address('where clients connect on the parent', 'tcp:0.0.0.0:443', ['tcp', 'unix']),
    enclave_ingress: address("the enclave's ingress, as the parent reaches it", 'vsock:16:7777'),
    egress_listen: address('the egress relay the enclave connects to', byMode('vsock:any:4433', 'tcp:127.0.0.1:4433')),
    dns_listen: address('the DNS relay the enclave connects to', byMode('vsock:any:8585', 'tcp:127.0.0.1:8585')),
    upstream_dns: text('the resolver the DNS relay asks, HOST:PORT; "system" reads /etc/resolv.conf', 'system'),
    allow_private: bool('let the relay connect to private, loopback and link-local addresses', false),
    connect_timeout_ms: int('time to connect out to a destination', 10 * SECOND, 10, 5 * 60 * SECOND),
    idle_timeout_ms: int('a relayed connection idle this long is closed', 5 * 60 * SECOND, 100, 24 * HOUR),
    max_connections: int('concurrent relayed connections', 4096, 1, 1_000_000),
  }),
});

export interface RuntimeConfig {
  runtime: { logLevel: (typeof LOG_LEVELS)[number]; stateDir: string; shutdownGraceMs: number };
  ingress: IngressSettings & { enabled: boolean };
  tls: {
    enabled: boolean;
    source: 'self';
    serverName: string;
    sniNonceEncoding: 'hex' | 'base64';
    nonceCacheSize: number;
    alpn: string[];
  };
  attestation: {
    mode: 'nsm' | 'simulated';
    device: string;
    apiListen: TcpAddress;
    simulated: { debug: boolean; moduleId: string; pcrs: Record<number, Uint8Array> };
  };
  egress: {
    enabled: boolean;
    allow: string[];
    dnsListen: TcpAddress;
    transparentListen: TcpAddress;
    proxyListen: TcpAddress;
    relay: Address;
    dnsRelay: Address;
    dnsRefusal: 'refused' | 'nxdomain';
    applyRules: boolean;
    peekTimeoutMs: number;
    connectTimeoutMs: number;
    idleTimeoutMs: number;
    maxConnections: number;
    maxDnsInFlight: number;
  };
  host: {
    ingressListen: Address;
    enclaveIngress: Address;
    egressListen: Address;
    dnsListen: Address;
    upstreamDns: string;
    allowPrivate: boolean;
    connectTimeoutMs: number;
    idleTimeoutMs: number;
    maxConnections: number;
  };
}

export type TcpAddress = Address & { transport: 'tcp' };
