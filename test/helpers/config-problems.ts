import assert from 'node:assert/strict';
import { parseConfig } from '../../src/config/load.js';
import { ConfigError } from '../../src/core/errors.js';

/** The problems a config file is refused with; fails the test when the file is accepted. */
export function problemsOf(toml: string, mode: 'run' | 'dev' | 'host' = 'run'): string[] {
  try {
    parseConfig(toml, mode);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    return [...error.problems];
  }
  assert.fail('the config was accepted');
}
