import { ConfigError } from '../errors.js';
import { show, type Mode } from './field.js';
import { nearestKey } from './nearest-key.js';
import { SCHEMA, type RuntimeConfig, type Table } from './schema.js';

const camel = (key: string) => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());

function isTable(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof Date);
}

function walk(schema: Table, raw: Record<string, unknown>, path: string, mode: Mode, problems: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of Object.keys(raw)) {
    if (key in schema.entries) continue;
    const here = path ? `${path}.${key}` : key;
    const hint = nearestKey(key, Object.keys(schema.entries));
    problems.push(`${here}: unknown key${hint ? `; did you mean "${path ? `${path}.` : ''}${hint}"?` : ''} (known in ${path || 'the top level'}: ${Object.keys(schema.entries).join(', ')})`);
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

/** Turns parsed TOML into the typed config, or throws one ConfigError listing every problem. */
export function validateConfig(raw: Record<string, unknown>, mode: Mode, source = 'configuration'): RuntimeConfig {
  const problems: string[] = [];
  const config = walk(SCHEMA, raw, '', mode, problems) as unknown as RuntimeConfig;
  // Cross-key rules read typed values, so they run only once every key has one.
  if (problems.length === 0) crossCheck(config, mode, problems);
  if (problems.length > 0) throw new ConfigError(problems, source);
  return config;
}

/** Rules that span keys; each message names the keys involved. */
function crossCheck(config: RuntimeConfig, mode: Mode, problems: string[]): void {
  if (mode === 'dev') config.attestation.mode = 'simulated';
  const { listen, app } = config.ingress;
  if (config.ingress.enabled && JSON.stringify(listen) === JSON.stringify(app)) {
    problems.push('ingress.listen and ingress.app are the same address; ingress would forward to itself');
  }
  if (mode === 'dev' && listen.transport === 'vsock') {
    problems.push('ingress.listen: dev mode uses the tcp or unix transport, not vsock (the dev machine is not an enclave)');
  }
}
