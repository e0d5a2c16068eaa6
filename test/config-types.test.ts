/**
 * RuntimeConfig is derived from SCHEMA (config/field.ts ConfigValue): the type checks below fail
 * to compile when the derivation drifts, and the runtime check proves the validator produces
 * exactly the keys the type names, table by table.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { CamelCase, Entry, Table } from '../src/config/field.js';
import { SCHEMA, type RuntimeConfig } from '../src/config/schema.js';
import { validateConfig } from '../src/config/validate.js';
import type { Address, TcpAddress } from '../src/net/address.js';
import type { SecretEntry } from '../src/secrets/secret-config.js';

type Equal<A, B> = (<T>() => T extends A ? 1 : 2) extends <T>() => T extends B ? 1 : 2 ? true : false;
const same = <A, B>(proof: Equal<A, B>): Equal<A, B> => proof;

describe('RuntimeConfig derived from the schema', () => {
  it('types fields, narrowed addresses, optional addresses and [[secrets]] as the validator fills them', () => {
    same<CamelCase<'log_relay_buffer_lines'>, 'logRelayBufferLines'>(true);
    same<RuntimeConfig['runtime']['logRelayBufferLines'], number>(true);
    same<RuntimeConfig['runtime']['logRelay'], Address | undefined>(true);
    same<RuntimeConfig['attestation']['apiListen'], TcpAddress>(true);
    same<RuntimeConfig['attestation']['mode'], 'nsm' | 'simulated'>(true);
    same<RuntimeConfig['app']['env'], Record<string, string>>(true);
    same<RuntimeConfig['tls']['acme']['challenge'], 'tls-alpn-01'>(true);
    same<RuntimeConfig['secrets'], SecretEntry[]>(true);
    // A required key of a list of tables is never undefined once validated; the others may be.
    same<SecretEntry['name'], string>(true);
    same<SecretEntry['file'], string | undefined>(true);
  });

  it('the validator gives every schema key, in camelCase, and no other', () => {
    const camel = (key: string) => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
    const compare = (schema: Table, value: Record<string, unknown>, path: string): void => {
      const entries = Object.entries(schema.entries) as Array<[string, Entry]>;
      assert.deepEqual(Object.keys(value).sort(), entries.map(([key]) => camel(key)).sort(), path);
      for (const [key, entry] of entries) {
        if (entry.kind === 'table') compare(entry, value[camel(key)] as Record<string, unknown>, `${path}.${key}`);
      }
    };
    for (const mode of ['run', 'dev', 'host'] as const) {
      compare(SCHEMA, validateConfig({}, mode) as unknown as Record<string, unknown>, mode);
    }
  });
});
