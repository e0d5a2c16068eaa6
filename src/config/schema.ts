import { LOG_LEVELS } from '../core/log.js';
import { SECRETS } from '../secrets/secret-config.js';
import {
  address,
  bool,
  decimal,
  hostNameList,
  int,
  oneOf,
  optionalAddress,
  optionalText,
  secretText,
  pcrSetList,
  pcrTable,
  peerList,
  stringList,
  stringTable,
  table,
  text,
  type ConfigValue,
  type Mode,
} from './field.js';

export type { Table, TableList } from './field.js';

const byMode =
  <const T>(run: T, dev: T, host: T = run) =>
  (mode: Mode): T =>
    mode === 'dev' ? dev : mode === 'host' ? host : run;

const SECOND = 1000;
const HOUR = 3600 * SECOND;

/** The whole of enclave.toml. Keys are snake_case here and camelCase in RuntimeConfig, which is derived from it. */
export const SCHEMA = table('enclave.toml', {
  runtime: table('process-wide settings', {
    log_level: oneOf('log verbosity', 'info', LOG_LEVELS),
    state_dir: text('where keys, CA and simulated-NSM chain persist', '.enclave-runtime'),
    shutdown_grace_ms: int(
      'how long SIGTERM/SIGINT waits for open connections to drain',
      10 * SECOND,
      0,
      10 * 60 * SECOND,
    ),
    init: oneOf('PID 1 duties (lo up, hostname, reaping orphans): "auto" only when PID 1', 'auto', [
      'auto',
      'on',
      'off',
    ]),
    hostname: text(
      'the hostname set by the PID 1 duties',
      'enclave',
      /^(?=.{1,64}$)[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$/,
      'a host name of at most 64 characters',
    ),
    health_listen: address(
      'GET /health for the parent, over the bridge',
      byMode('vsock:any:7779', 'tcp:127.0.0.1:7779'),
    ),
    log_relay: optionalAddress(
      'where the runtime\'s log lines and the command\'s stdout/stderr are sent (`host` listens there); "off" = the terminal only',
      byMode('vsock:3:8090', 'off'),
    ),
    log_relay_buffer_lines: int(
      'lines held for the log relay while the host is slow or away; beyond, lines are dropped and counted',
      10_000,
      16,
      1_000_000,
    ),
    log_relay_max_line_bytes: int(
      'longest relayed line; a longer one is split into pieces marked "partial"',
      16 * 1024,
      256,
      1024 * 1024,
    ),
  }),
  ingress: table('parent -> enclave -> app', {
    enabled: bool('accept ingress connections at all', true),
    listen: address('where the parent connects', byMode('vsock:any:7777', 'tcp:127.0.0.1:8443')),
    app: address("the customer app's port", 'tcp:127.0.0.1:8008'),
    proxy_protocol: oneOf('PROXY protocol header expected from the parent', 'off', ['off', 'v1', 'v2', 'any']),
    send_proxy_protocol: oneOf('PROXY protocol header sent to the app', 'off', ['off', 'v1', 'v2']),
    max_connections: int('concurrent connections; more are closed at once', 4096, 1, 1_000_000),
    workers: int(
      'threads accepting and terminating TLS on the listener: 0 = one per CPU, 1 = all in the main thread (the default under dev)',
      byMode(0, 1),
      0,
      64,
    ),
    app_connect: oneOf(
      'when the app is connected: "eager" = once the connection is accepted (TLS: handshake done), for protocols where the server speaks first (SMTP, MySQL); "first-byte" = when the client sends its first byte, so an idle connection holds no app socket and one that closes silent never reaches the app',
      'eager',
      ['eager', 'first-byte'],
    ),
    tls_engine: oneOf(
      'what terminates TLS and relays: "native" = the addon\'s OpenSSL relay in worker threads (no JS per connection or chunk), without proxy_protocol, send_proxy_protocol, http_aware, tls.acme or a vsock app; "node" = Node\'s TLSSocket, every feature; "auto" = native unless one of those is set, workers = 1 or the addon is missing',
      'auto',
      ['auto', 'node', 'native'],
    ),
    connect_timeout_ms: int('time to connect to the app', 5 * SECOND, 10, 5 * 60 * SECOND),
    idle_timeout_ms: int(
      'a connection with no bytes either way for this long is closed (checked every quarter of it: within 1.25x)',
      5 * 60 * SECOND,
      100,
      24 * HOUR,
    ),
    proxy_header_timeout_ms: int('time for the PROXY header to arrive', 5 * SECOND, 10, 5 * 60 * SECOND),
    http_aware: bool(
      'answer GET /.well-known/attestation when it is the first request of a connection (needs tls)',
      false,
    ),
    http_head_max_bytes: int(
      'with http_aware: the first request head read before passing the connection on',
      8 * 1024,
      256,
      64 * 1024,
    ),
    http_head_timeout_ms: int(
      'with http_aware: how long to wait for the first request head (at most idle_timeout_ms)',
      30 * SECOND,
      100,
      5 * 60 * SECOND,
    ),
  }),
  app: table("the customer's command (after `--`) and its health", {
    restart: oneOf('when the command is started again after it exits', 'never', ['never', 'on-failure', 'always']),
    max_restarts: int('restarts allowed in all; then the runtime exits with the last code', 10, 0, 1_000_000),
    restart_backoff_ms: int('wait before the first restart; doubles each time, at most 60 s', SECOND, 0, 60 * SECOND),
    user: optionalText(
      'run the command as NAME, UID, NAME:GROUP or UID:GID ("" = as the runtime)',
      /^[A-Za-z0-9_.-]{1,64}(:[A-Za-z0-9_.-]{1,64})?$/,
      'NAME, UID, NAME:GROUP or UID:GID',
    ),
    cwd: optionalText('the command\'s working directory ("" = the runtime\'s)', /^\//, 'an absolute path'),
    env: stringTable("variables added to the command's environment", 1024),
    healthcheck: optionalText(
      '"" = connect to ingress.app; "/path" = HTTP GET on ingress.app; "http://HOST:PORT/path"; or an address to connect to',
      /^(\/|http:\/\/|tcp:|unix:|vsock:)/,
      '"/path", "http://HOST:PORT/path" or an address',
    ),
    healthcheck_interval_ms: int('time between app health probes', 2 * SECOND, 100, 10 * 60 * SECOND),
    healthcheck_timeout_ms: int('time one app health probe may take', SECOND, 10, 60 * SECOND),
    allow_vsock: bool(
      'let the command create AF_VSOCK sockets (and use io_uring); false starts it behind a seccomp filter that refuses both',
      false,
    ),
    pass_aws_credentials: bool(
      "pass the runtime's AWS_* credentials (the KMS client's) into the command's environment",
      false,
    ),
    healthcheck_grace_ms: int(
      'after start, how long an app that has not been up yet is "starting", not down (no warning)',
      30 * SECOND,
      0,
      60 * 60 * SECOND,
    ),
  }),
  tls: table('TLS termination with attested certificates', {
    enabled: bool('terminate TLS on ingress (off: passthrough)', true),
    source: oneOf('where certificates come from', 'self', ['self', 'provisioner']),
    server_name: text('the base host name of the certificates', 'localhost', /^[A-Za-z0-9.-]{1,253}$/, 'a DNS name'),
    sni_nonce_encoding: oneOf('how <nonce>.attest.<host> labels are decoded', 'hex', ['hex', 'base64']),
    nonce_cache_size: int('per-nonce certificates kept (LRU)', 1024, 1, 1_000_000),
    // Only what the app behind the bridge speaks: the bytes are relayed, not translated, so offering h2 to an
    // HTTP/1.1 app makes h2 clients (curl, browsers) send a preface the app cannot read.
    alpn: stringList(
      'ALPN protocols offered, most preferred first (add "h2" only when the app speaks HTTP/2)',
      ['http/1.1'],
      16,
    ),
    handshake_timeout_ms: int(
      'a TLS handshake not finished in this time is aborted',
      10 * SECOND,
      100,
      5 * 60 * SECOND,
    ),
    max_nonce_issues: int(
      'nonce certificates being made at once; beyond, handshakes get the base certificate',
      256,
      1,
      100_000,
    ),
    provisioner: table(
      'tls.source = "provisioner": a CA service signs the enclave\'s intermediate after checking its attestation',
      {
        address: address(
          "where the provisioner (or the parent's relay to it) answers HTTP",
          byMode('vsock:3:8444', 'tcp:127.0.0.1:8444'),
        ),
        timeout_ms: int('time for one provisioner request, connect included', 10 * SECOND, 100, 5 * 60 * SECOND),
      },
    ),
    acme: table('certificates from an ACME CA for custom domains, next to the attested ones', {
      enabled: bool('order and renew ACME certificates for `domains`', false),
      directory_url: text(
        'the ACME directory',
        'https://acme-v02.api.letsencrypt.org/directory',
        /^https:\/\/[^\s]+$/,
        'an https:// URL',
      ),
      email: optionalText('the account contact ("" = none)', /^[^@\s]+@[^@\s]+$/, 'an email address'),
      domains: hostNameList('the names to get a certificate for; SNI equal to one gets it', 100),
      ca_file: optionalText('PEM roots to trust for the ACME server ("" = the system roots)'),
      challenge: oneOf('how control of the domains is proven', 'tls-alpn-01', ['tls-alpn-01']),
      renew_at_fraction: decimal('renew when this share of the lifetime has passed', 2 / 3, 0.1, 0.95),
      retry_min_ms: int('first wait after a failed order; doubles per failure', 60 * SECOND, 100, 24 * HOUR),
      retry_max_ms: int('longest wait between failed orders', HOUR, 100, 7 * 24 * HOUR),
    }),
  }),
  attestation: table('the NSM and the internal API', {
    mode: oneOf('"nsm" is /dev/nsm; "simulated" only for tests (dev always simulates)', byMode('nsm', 'simulated'), [
      'nsm',
      'simulated',
    ]),
    device: text('the NSM device', '/dev/nsm'),
    api_listen: address('the internal API for the app', 'tcp:127.0.0.1:9999', ['tcp']),
    api_max_body_bytes: int('largest request body the internal API reads (413 beyond)', 8 * 1024, 256, 1024 * 1024),
    api_headers_timeout_ms: int(
      'time for a request head to arrive at the internal API (408 beyond)',
      5 * SECOND,
      100,
      5 * 60 * SECOND,
    ),
    api_request_timeout_ms: int(
      'time for a whole request to arrive at the internal API (408 beyond)',
      10 * SECOND,
      100,
      5 * 60 * SECOND,
    ),
    api_max_concurrent_requests: int('internal API requests in progress at once (503 beyond)', 128, 1, 100_000),
    api_max_connections: int('internal API connections open at once (dropped beyond)', 512, 1, 100_000),
    nsm_timeout_ms: int('time one NSM call may take (503 from the API beyond)', 15 * SECOND, 100, 5 * 60 * SECOND),
    simulated: table('the simulated NSM', {
      debug: bool('all-zero PCR0-2, as a debug-mode enclave has', false),
      module_id: text('module_id in documents', 'i-0000000000000000-enc0000000000000000'),
      pcrs: pcrTable('PCR values by index; unset ones are derived from the index'),
    }),
  }),
  egress: table("the app's outbound traffic, allowed by name inside the enclave", {
    enabled: bool('run the egress services (DNS, transparent listener, proxy)', false),
    allow: stringList('allowed destinations: names, *.wildcards, IPs, CIDRs, optional :port, or "*"', [], 10_000),
    dns_listen: address(
      'DNS for the app, UDP and TCP on the same port',
      byMode('tcp:127.0.0.1:53', 'tcp:127.0.0.1:8053'),
      ['tcp'],
    ),
    transparent_listen: address("where iptables redirects the app's outbound TCP", 'tcp:127.0.0.1:4444', ['tcp']),
    proxy_listen: address('the HTTP proxy for HTTP_PROXY/HTTPS_PROXY', 'tcp:127.0.0.1:3128', ['tcp']),
    relay: address("the host's egress relay", byMode('vsock:3:4433', 'tcp:127.0.0.1:4433')),
    dns_relay: address("the host's DNS relay", byMode('vsock:3:8585', 'tcp:127.0.0.1:8585')),
    dns_refusal: oneOf('answer to a denied DNS question', 'refused', ['refused', 'nxdomain']),
    apply_rules: bool('write the iptables rules that redirect outbound TCP (needs root)', byMode(true, false)),
    peek_timeout_ms: int(
      'how long to wait for a TLS SNI or HTTP Host before deciding on the IP alone',
      300,
      10,
      10 * SECOND,
    ),
    inspect_timeout_ms: int(
      "how long the app's bytes may be held undecided (an incomplete ClientHello or request head) before the connection is refused",
      10 * SECOND,
      100,
      5 * 60 * SECOND,
    ),
    allow_ech: bool('let a TLS ClientHello with encrypted_client_hello through, though its real SNI is hidden', false),
    connect_timeout_ms: int('time to open a relay connection', 5 * SECOND, 10, 5 * 60 * SECOND),
    idle_timeout_ms: int('an egress connection idle this long is closed', 5 * 60 * SECOND, 100, 24 * HOUR),
    max_connections: int('concurrent egress connections', 4096, 1, 1_000_000),
    max_dns_in_flight: int('DNS questions waiting for the relay at once', 256, 1, 65_536),
    proxy_max_header_bytes: int('largest request head the HTTP proxy reads (431 beyond)', 16 * 1024, 1024, 1024 * 1024),
    proxy_headers_timeout_ms: int(
      'time for a request head to reach the HTTP proxy (408 beyond)',
      10 * SECOND,
      100,
      5 * 60 * SECOND,
    ),
  }),
  fleet: table(
    'enclaves of one image on many parents sharing the ACME certificate and an app blob (README "Running a fleet")',
    {
      enabled: bool('take part in a fleet: serve peers on `listen`, sync with `peers` every sync_interval_ms', false),
      listen: address(
        "where peers' exchanges arrive (the parent's host.fleet_listen relays to it)",
        byMode('vsock:any:7790', 'tcp:127.0.0.1:7790'),
      ),
      peers: peerList(
        'the other parents, HOST or HOST:PORT: addresses, or one DNS name resolving to every parent (headless service, target group)',
        64,
      ),
      peer_port: int("the parents' fleet port (host.fleet_listen) for peers named without a port", 7790, 1, 65535),
      relay: optionalAddress(
        'the parent\'s fleet relay (host.fleet_relay_listen), which resolves and dials the peers; "off" = dial peers directly over TCP (dev, tests)',
        byMode('vsock:3:7791', 'off'),
      ),
      bootstrap: bool(
        'may start a new fleet when no peer answers (and then order the ACME certificate); false: wait for a peer',
        false,
      ),
      sync_interval_ms: int(
        'time between sync rounds with every peer: the bound on how long a change takes to reach all members',
        5 * SECOND,
        100,
        60 * 60 * SECOND,
      ),
      exchange_timeout_ms: int(
        'time one exchange with one peer may take, connect included',
        10 * SECOND,
        100,
        5 * 60 * SECOND,
      ),
      allow_debug: bool(
        'accept debug-mode peers (PCR0-2 all zero, so the image is NOT checked; needs fleet.debug_psk); every member must allow it',
        false,
      ),
      debug_psk: secretText(
        'SECRET required with allow_debug: a pre-shared key of at least 32 characters every member holds, mixed into the exchange keys; debug documents do not name the image, so this secret is all that keeps a debug enclave of another image out',
        /^\S{32,4096}$/,
        'at least 32 non-space characters',
      ),
      attestation_root: optionalText(
        'PEM file of the root peers\' documents must chain to ("" = the AWS Nitro root; the state dir\'s simulated root with attestation.mode = "simulated")',
      ),
      max_connections: int('peer exchanges served at once; more are closed', 32, 1, 4096),
    },
  ),
  metrics: table('Prometheus metrics', {
    enabled: bool('serve GET /metrics', true),
    listen: address('where GET /metrics is served', byMode('vsock:any:9090', 'tcp:127.0.0.1:9090')),
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
    log_listen: optionalAddress(
      'where the enclave\'s log relay connects; its lines go to stdout as JSON ("off" = not served)',
      'vsock:any:8090',
    ),
    health_listen: optionalAddress('relay the enclave\'s GET /health here ("off" = no relay)', 'off', ['tcp', 'unix']),
    enclave_health: address("the enclave's runtime.health_listen, as the parent reaches it", 'vsock:16:7779'),
    metrics_listen: optionalAddress('relay the enclave\'s GET /metrics here ("off" = no relay)', 'off', [
      'tcp',
      'unix',
    ]),
    enclave_metrics: address("the enclave's metrics.listen, as the parent reaches it", 'vsock:16:9090'),
    provisioner: optionalAddress('the provisioner that enclaves reach through this relay ("off" = no relay)', 'off', [
      'tcp',
      'unix',
    ]),
    provisioner_listen: address("where the enclave's tls.provisioner.address connects", 'vsock:any:8444'),
    credentials: oneOf('serve the instance role\'s temporary credentials to the enclave: "imds" or "off"', 'off', [
      'off',
      'imds',
    ]),
    credentials_listen: address('where the enclave asks for credentials (kms.credentials = "host")', 'vsock:any:8003'),
    fleet_listen: optionalAddress(
      'where peer parents connect for fleet exchanges, relayed to enclave_fleet ("off" = no relay; open it to the other parents only)',
      'off',
      ['tcp', 'unix'],
    ),
    enclave_fleet: address("the enclave's fleet.listen, as the parent reaches it", 'vsock:16:7790'),
    fleet_relay_listen: optionalAddress(
      'where the enclave\'s fleet.relay connects to reach peers; dials only fleet.peers ("off" = no relay)',
      'off',
    ),
    imds_endpoint: text(
      'the instance metadata service (IMDSv2)',
      'http://169.254.169.254',
      /^http:\/\/[A-Za-z0-9.:[\]-]+$/,
      'an http://HOST[:PORT] URL',
    ),
  }),
  provisioner: table('the reference provisioner (`enclave-runtime provisioner`)', {
    listen: address('where enclaves (through the parent) reach the provisioner', 'tcp:127.0.0.1:8444'),
    ca_dir: text('where the root key and certificate live (ca-key.pem 0600, ca.pem)', '.enclave-runtime/provisioner'),
    root: text('the attestation root: "aws" (the bundled AWS Nitro root G1) or a PEM file path', 'aws'),
    allowed_pcrs: pcrSetList('accepted PCR sets; an enclave must match one whole set', 64),
    allow_debug: bool('accept debug-mode enclaves (PCR0-2 all zero)', false),
    challenge_ttl_ms: int('how long a challenge nonce stays usable', 60 * SECOND, 1 * SECOND, 60 * 60 * SECOND),
    cert_lifetime_ms: int('lifetime of the intermediate certificates signed', 24 * HOUR, 60 * SECOND, 365 * 24 * HOUR),
    max_pending_challenges: int(
      'spent challenges remembered against replay until they would expire; beyond it /sign is refused (503) until some expire',
      1024,
      1,
      1_000_000,
    ),
    permitted_dns: stringList(
      'DNS subtrees the intermediates may name (critical nameConstraints); empty: unconstrained',
      [],
      64,
    ),
  }),
  kms: table('AWS KMS, which decrypts [[secrets]] for this enclave only (it is the Recipient)', {
    region: optionalText(
      'the AWS region; empty: AWS_REGION, then AWS_DEFAULT_REGION',
      /^[a-z]{2}(-[a-z0-9]+){1,3}-\d{1,2}$/,
      'an AWS region like "us-east-1"',
    ),
    endpoint: optionalText(
      'the KMS URL; empty: https://kms.<region>.amazonaws.com',
      /^(https:\/\/[^\s/?#@]+|http:\/\/(127\.\d{1,3}\.\d{1,3}\.\d{1,3}|localhost|\[::1\])(:\d{1,5})?)(\/[^\s?#]*)?$/,
      'an https:// URL (http:// only to 127.x.x.x, localhost or [::1])',
    ),
    access_key_id: optionalText(
      'empty: AWS_ACCESS_KEY_ID from the environment',
      /^[A-Z0-9]{16,128}$/,
      'an AWS access key id (16-128 of A-Z 0-9)',
    ),
    secret_access_key: secretText(
      'empty: AWS_SECRET_ACCESS_KEY from the environment',
      /^\S{16,256}$/,
      'an AWS secret access key',
    ),
    session_token: secretText('empty: AWS_SESSION_TOKEN from the environment', /^\S{16,4096}$/, 'an AWS session token'),
    via: oneOf('how KMS is reached: through the egress HTTP proxy, or directly', byMode('egress_proxy', 'direct'), [
      'egress_proxy',
      'direct',
    ]),
    timeout_ms: int('time for one KMS request, connect included', 10 * SECOND, 100, 5 * 60 * SECOND),
    max_attempts: int('attempts per KMS call when it is throttled, fails with 5xx or cannot be reached', 3, 1, 10),
    credentials: oneOf(
      '"config": the keys above or AWS_* in the environment; "host": the parent\'s instance role, served by `host`',
      'config',
      ['config', 'host'],
    ),
    credentials_address: address(
      'where `host` serves credentials (kms.credentials = "host")',
      byMode('vsock:3:8003', 'tcp:127.0.0.1:8003'),
    ),
    proxy: bool('serve the KMS proxy for the app on proxy_listen (Decrypt, GenerateDataKey, GenerateRandom)', false),
    proxy_listen: address("the KMS proxy: an endpoint for the app's AWS SDK", 'tcp:127.0.0.1:9998', ['tcp']),
  }),
  secrets: SECRETS,
});

/** The validated config: derived from SCHEMA, so a key added there is in the type too. */
export type RuntimeConfig = ConfigValue<typeof SCHEMA>;
