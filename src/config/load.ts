import { readFile } from 'node:fs/promises';
import { parse, TomlError } from 'smol-toml';
import { ConfigError, errorCode } from '../core/errors.js';
import type { Mode } from './field.js';
import type { RuntimeConfig } from './schema.js';
import { validateConfig } from './validate.js';

/** A config file larger than this is not a config file; refuse before parsing it. */
const MAX_CONFIG_BYTES = 1024 * 1024;

/** Parses TOML text into the typed config; syntax errors name the line and column. */
export function parseConfig(source: string, mode: Mode, name = 'enclave.toml'): RuntimeConfig {
  if (source.length > MAX_CONFIG_BYTES)
    throw new ConfigError([`the file is larger than ${MAX_CONFIG_BYTES} bytes`], name);
  let raw: Record<string, unknown>;
  try {
    raw = parse(source) as Record<string, unknown>;
  } catch (error) {
    if (error instanceof TomlError) {
      throw new ConfigError(
        [`TOML syntax error at line ${error.line}, column ${error.column}: ${error.message.split('\n')[0]}`],
        name,
      );
    }
    throw error;
  }
  return validateConfig(raw, mode, name);
}

/** Reads and validates a config file; without a path, every key takes its default for the mode. */
export async function loadConfig(path: string | undefined, mode: Mode): Promise<RuntimeConfig> {
  if (path === undefined) return validateConfig({}, mode, 'defaults');
  let source: string;
  try {
    source = await readFile(path, 'utf8');
  } catch (error) {
    throw new ConfigError([`cannot read ${path}: ${errorCode(error) ?? (error as Error).message}`], path);
  }
  return parseConfig(source, mode, path);
}
