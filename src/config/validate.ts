import { ConfigError } from '../core/errors.js';
import { show, type Mode } from './field.js';
import { nearestKey } from './nearest-key.js';
import { SCHEMA, type RuntimeConfig, type Table, type TableList } from './schema.js';
import { allowlistErrors } from '../egress/allowlist.js';

const camel = (key: string) => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function walk(
  schema: Table,
  raw: Record<string, unknown>,
  path: string,
  mode: Mode,
  problems: string[],
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(raw)) {
    if (key in schema.entries) continue;
    const here = path ? `${path}.${key}` : key;
    const hint = nearestKey(key, Object.keys(schema.entries));
    problems.push(
      `${here}: unknown key${hint ? `; did you mean "${path ? `${path}.` : ''}${hint}"?` : ''} (known in ${path || 'the top level'}: ${Object.keys(schema.entries).join(', ')})`,
    );
  }
  for (const [key, spec] of Object.entries(schema.entries)) {
    const here = path ? `${path}.${key}` : key;
    const value = raw[key];
    if (spec.kind === 'table') {
      if (value !== undefined && !isTable(value)) {
        problems.push(`${here}: ${show(value)} is not allowed; expected a table [${here}]`);
        out[camel(key)] = walk(spec, {}, here, mode, problems);
      } else {
        out[camel(key)] = walk(spec, value ?? {}, here, mode, problems);
      }
      continue;
    }
    if (spec.kind === 'tableList') {
      out[camel(key)] = walkList(spec, value, here, mode, problems);
      continue;
    }
    if (value === undefined) {
      out[camel(key)] = spec.defaultFor(mode);
      continue;
    }
    const checked = spec.check(value);
    if (checked.ok) out[camel(key)] = checked.value;
    else problems.push(`${here}: ${checked.problem}`);
  }
  return out;
}

/** `[[path]]` entries, each walked as a table under the name `path[i]`. */
function walkList(
  spec: TableList,
  value: unknown,
  path: string,
  mode: Mode,
  problems: string[],
): Array<Record<string, unknown>> {
  if (value === undefined) return [];
  if (!Array.isArray(value) || !value.every(isTable)) {
    problems.push(`${path}: ${show(value)} is not allowed; expected a list of tables, written [[${path}]]`);
    return [];
  }
  if (value.length > spec.maxItems) {
    problems.push(`${path}: ${value.length} entries; at most ${spec.maxItems} are allowed`);
    return [];
  }
  const entries = value.map((raw, i) => {
    const here = `${path}[${i}]`;
    for (const key of spec.required)
      if (raw[key] === undefined) problems.push(`${here}.${key}: missing; every [[${path}]] entry needs it`);
    return walk(spec.item, raw, here, mode, problems);
  });
  problems.push(...(spec.refine?.(value, path) ?? []));
  return entries;
}

/** Turns parsed TOML into the typed config, or throws one ConfigError listing every problem. */
export function validateConfig(raw: Record<string, unknown>, mode: Mode, source = 'configuration'): RuntimeConfig {
  const problems: string[] = [];
  const config = walk(SCHEMA, raw, '', mode, problems) as unknown as RuntimeConfig;
  // egress.allow entries are checked with the other keys, each bad one named, whatever else is wrong.
  const allow = (config.egress as Partial<RuntimeConfig['egress']> | undefined)?.allow;
  // Each entry is shown as other bad values are (truncated), so many huge entries cannot flood stderr.
  if (Array.isArray(allow))
    for (const error of allowlistErrors(allow))
      problems.push(`egress.allow: ${error.message.replace(JSON.stringify(error.entry), show(error.entry))}`);
  // Cross-key rules read typed values, so they run only once every key has one.
  if (problems.length === 0) crossCheck(config, mode, problems);
  if (problems.length > 0) throw new ConfigError(problems, source);
  return config;
}

/** Rules that span keys; each message names the keys involved. */
function crossCheck(config: RuntimeConfig, mode: Mode, problems: string[]): void {
  if (mode === 'dev') config.attestation.mode = 'simulated';
  const fleetRelay = config.host.fleetRelayListen;
  if (fleetRelay?.transport === 'tcp' && !/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(fleetRelay.host))
    problems.push(
      `host.fleet_relay_listen: tcp on ${fleetRelay.host} would let anyone who reaches it make this parent dial the fleet's peers; listen on vsock or unix (or tcp on 127.0.0.1 in dev)`,
    );
  if (config.fleet.enabled && config.fleet.allowDebug && config.fleet.debugPsk === '')
    problems.push(
      'fleet.debug_psk: required with fleet.allow_debug = true (at least 32 characters, the same on every member): debug documents have all-zero PCRs, so without it a debug enclave of any image could join',
    );
  const { listen, app } = config.ingress;
  if (config.ingress.enabled && JSON.stringify(listen) === JSON.stringify(app)) {
    problems.push('ingress.listen and ingress.app are the same address; ingress would forward to itself');
  }
  if (mode === 'dev' && listen.transport === 'vsock') {
    problems.push(
      'ingress.listen: dev mode uses the tcp or unix transport, not vsock (the dev machine is not an enclave)',
    );
  }
  if (mode !== 'host' && config.secrets.length > 0 && config.kms.via === 'egress_proxy' && !config.egress.enabled) {
    problems.push(
      'kms.via: "egress_proxy" needs egress.enabled = true (with the KMS host in egress.allow) to reach KMS for [[secrets]]; or set kms.via = "direct"',
    );
  }
  if (mode !== 'host' && config.kms.proxy && config.kms.via === 'egress_proxy' && !config.egress.enabled) {
    problems.push(
      'kms.proxy: with kms.via = "egress_proxy" it needs egress.enabled = true (with the KMS host in egress.allow) to reach KMS; or set kms.via = "direct"',
    );
  }
  if (config.kms.credentials === 'host' && (config.kms.accessKeyId !== '' || config.kms.secretAccessKey !== '')) {
    problems.push(
      'kms.credentials: "host" takes the parent\'s role credentials; leave kms.access_key_id and kms.secret_access_key empty (keys in the file are part of the image)',
    );
  }
  checkAcme(config, problems);
  checkNativeEngine(config, problems);
}

/** An explicit "native" is refused for anything it does not do ("auto" chooses node for the same). */
function checkNativeEngine(config: RuntimeConfig, problems: string[]): void {
  if (config.ingress.tlsEngine === 'native' && config.ingress.enabled) problems.push(...nativeEngineConflicts(config));
}

/**
 * What keeps the native TLS engine from serving this config, one line per key: it relays bytes only,
 * so what needs JavaScript on the connection stays with the Node engine. Empty when it can serve it.
 */
export function nativeEngineConflicts(config: RuntimeConfig): string[] {
  const { ingress } = config;
  const why = 'ingress.tls_engine = "native"';
  const conflicts: string[] = [];
  if (!config.tls.enabled) conflicts.push(`${why} needs tls.enabled = true: it is a TLS engine`);
  if (ingress.proxyProtocol !== 'off')
    conflicts.push(
      `ingress.proxy_protocol: "${ingress.proxyProtocol}" is not read by ${why}; set it to "off" or use "node"`,
    );
  if (ingress.sendProxyProtocol !== 'off')
    conflicts.push(
      `ingress.send_proxy_protocol: "${ingress.sendProxyProtocol}" is not sent by ${why}; set it to "off" or use "node"`,
    );
  if (ingress.httpAware) conflicts.push(`ingress.http_aware: not answered by ${why}; set it to false or use "node"`);
  if (config.tls.enabled && config.tls.acme.enabled)
    conflicts.push(`tls.acme.enabled: ACME certificates are served by the Node engine only; ${why} cannot have them`);
  if (ingress.app.transport === 'vsock')
    conflicts.push(`ingress.app: ${why} connects the app over tcp or unix, not vsock`);
  return conflicts;
}

/** [tls.acme] and HTTP-aware ingress ride on TLS termination. */
function checkAcme(config: RuntimeConfig, problems: string[]): void {
  if (config.ingress.httpAware && !config.tls.enabled) {
    problems.push(
      'ingress.http_aware needs tls.enabled = true: the well-known document describes the TLS certificate of the connection',
    );
  }
  const acme = config.tls.acme;
  if (!acme.enabled) return;
  if (!config.tls.enabled)
    problems.push('tls.acme.enabled needs tls.enabled = true: ACME certificates are served by the TLS terminator');
  if (acme.domains.length === 0) problems.push('tls.acme.domains: empty; tls.acme.enabled needs at least one domain');
  if (acme.retryMinMs > acme.retryMaxMs)
    problems.push(
      `tls.acme.retry_min_ms (${acme.retryMinMs}) is larger than tls.acme.retry_max_ms (${acme.retryMaxMs})`,
    );
  for (const domain of acme.domains) {
    if (domain.split('.')[1] === 'attest')
      problems.push(
        `tls.acme.domains: "${domain}" has the shape <nonce>.attest.<host>, which SNI reserves for nonce requests`,
      );
  }
}
