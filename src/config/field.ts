import { parseAddress, type Address } from '../net/address.js';

/** The outcome of checking one value: the typed value, or what is wrong with it (the key is added by the caller). */
export type Checked<T> = { ok: true; value: T } | { ok: false; problem: string };

export type Mode = 'run' | 'dev' | 'host';

/** One key of enclave.toml: how to check its value, its default per mode, and its one-line doc. */
export interface Field<T = unknown> {
  readonly kind: 'field';
  readonly doc: string;
  readonly defaultFor: (mode: Mode) => T;
  check(value: unknown): Checked<T>;
}

function field<T>(doc: string, defaultValue: T | ((mode: Mode) => T), check: (value: unknown) => Checked<T>): Field<T> {
  const defaultFor = typeof defaultValue === 'function' ? (defaultValue as (mode: Mode) => T) : () => defaultValue;
  return { kind: 'field', doc, defaultFor, check };
}

/** A table of enclave.toml: keys are fields or nested tables. */
export interface Table<E extends Readonly<Record<string, Entry>> = Readonly<Record<string, Entry>>> {
  readonly kind: 'table';
  readonly doc: string;
  readonly entries: E;
}

/**
 * A list of tables (`[[name]]` in TOML): each entry is checked against `item` with its problems
 * named `name[i].key`; `required` keys must be set; `refine` adds rules across keys and entries,
 * seeing the entries as written.
 */
export interface TableList<I extends Table = Table, R extends string = string> {
  readonly kind: 'tableList';
  readonly doc: string;
  readonly item: I;
  readonly maxItems: number;
  readonly required: readonly R[];
  readonly refine?: (entries: ReadonlyArray<Record<string, unknown>>, path: string) => string[];
}

/** What a table may hold (Field<T> is covariant in T, so every field is a Field<unknown>). */
export type Entry = Field | Table | TableList<Table, string>;

export function table<const E extends Readonly<Record<string, Entry>>>(doc: string, entries: E): Table<E> {
  return { kind: 'table', doc, entries };
}

export function tableList<I extends Table, const R extends string>(
  doc: string,
  item: I,
  options: {
    maxItems: number;
    required: readonly R[];
    refine?: (entries: ReadonlyArray<Record<string, unknown>>, path: string) => string[];
  },
): TableList<I, R> {
  return { kind: 'tableList', doc, item, ...options };
}

/** `log_relay_buffer_lines` -> `logRelayBufferLines`, as the validator names keys (validate.ts). */
export type CamelCase<S extends string> = S extends `${infer Head}_${infer Tail}`
  ? `${Head}${Capitalize<CamelCase<Tail>>}`
  : S;

/**
 * The value the validator produces for a schema entry: a field's value type, a table's keys in
 * camelCase with their values, a list of tables as an array whose `required` keys are never undefined.
 */
export type ConfigValue<S> =
  S extends Field<infer T>
    ? T
    : S extends TableList<Table<infer E>, infer R>
      ? Array<{
          [K in keyof E & string as CamelCase<K>]: K extends R
            ? Exclude<ConfigValue<E[K]>, undefined>
            : ConfigValue<E[K]>;
        }>
      : S extends Table<infer E>
        ? { [K in keyof E & string as CamelCase<K>]: ConfigValue<E[K]> }
        : never;

/** Shows a bad value the way it was written, truncated so a huge value cannot flood the message. */
export function show(value: unknown): string {
  let shown: string;
  if (typeof value === 'string') shown = JSON.stringify(value);
  else if (typeof value === 'object' && value !== null) shown = Array.isArray(value) ? 'an array' : 'a table';
  else shown = String(value);
  return shown.length > 80 ? `${shown.slice(0, 77)}...` : shown;
}

const ok = <T>(value: T): Checked<T> => ({ ok: true, value });

const bad = (value: unknown, expected: string): Checked<never> => ({
  ok: false,
  problem: `${show(value)} is not allowed; expected ${expected}`,
});

export function bool(doc: string, defaultValue: boolean | ((mode: Mode) => boolean)): Field<boolean> {
  return field(doc, defaultValue, (v) => (typeof v === 'boolean' ? ok(v) : bad(v, 'true or false')));
}

export function int(
  doc: string,
  defaultValue: number | ((mode: Mode) => number),
  min: number,
  max: number,
): Field<number> {
  return field(doc, defaultValue, (v) => {
    const n = typeof v === 'bigint' ? Number(v) : v;
    return typeof n === 'number' && Number.isInteger(n) && n >= min && n <= max
      ? ok(n)
      : bad(v, `an integer from ${min} to ${max}`);
  });
}

export function text(
  doc: string,
  defaultValue: string | ((mode: Mode) => string),
  pattern?: RegExp,
  patternDoc?: string,
): Field<string> {
  return field(doc, defaultValue, (v) => {
    if (typeof v !== 'string' || v.length === 0 || v.length > 4096) return bad(v, 'a non-empty string');
    if (pattern && !pattern.test(v)) return bad(v, patternDoc ?? `a string matching ${pattern}`);
    return ok(v);
  });
}

export function oneOf<const V extends string>(
  doc: string,
  defaultValue: V | ((mode: Mode) => V),
  values: readonly V[],
): Field<V> {
  const list = values.map((x) => `"${x}"`).join(', ');
  return field(doc, defaultValue, (v) =>
    typeof v === 'string' && (values as readonly string[]).includes(v) ? ok(v as V) : bad(v, `one of ${list}`),
  );
}

/** The address kinds a field accepts; the value type narrows with them (["tcp"] gives a TcpAddress). */
type AddressOf<T extends Address['transport']> = Extract<Address, { transport: T }>;

export function address(doc: string, defaultValue: string | ((mode: Mode) => string)): Field<Address>;
export function address<const T extends Address['transport']>(
  doc: string,
  defaultValue: string | ((mode: Mode) => string),
  transports: readonly T[],
): Field<AddressOf<T>>;
export function address(
  doc: string,
  defaultValue: string | ((mode: Mode) => string),
  transports: readonly Address['transport'][] = ['tcp', 'unix', 'vsock'],
): Field<Address> {
  const initial = typeof defaultValue === 'function' ? defaultValue : () => defaultValue;
  const accepts = (parsed: Address): boolean => transports.includes(parsed.transport);
  return field(
    doc,
    (mode) => {
      const parsed = parseAddress(initial(mode));
      if (!accepts(parsed))
        throw new RangeError(`default ${initial(mode)} is not a ${transports.join(' or ')} address`);
      return parsed;
    },
    (v) => {
      if (typeof v !== 'string') return bad(v, `an address string (${transports.join(', ')})`);
      try {
        const parsed = parseAddress(v);
        if (!accepts(parsed)) return bad(v, `a ${transports.join(' or ')} address`);
        return ok(parsed);
      } catch (error) {
        return { ok: false, problem: (error as Error).message };
      }
    },
  );
}

export function stringList(doc: string, defaultValue: readonly string[], maxItems: number): Field<string[]> {
  return field(
    doc,
    () => [...defaultValue],
    (v) => {
      if (
        !Array.isArray(v) ||
        v.length > maxItems ||
        !v.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 1024)
      ) {
        return bad(v, `a list of at most ${maxItems} non-empty strings`);
      }
      return ok([...v] as string[]);
    },
  );
}

/** A table of PCR index (0-15) to lowercase hex of 48 bytes, as SHA-384 PCRs are. */
export function pcrTable(doc: string): Field<Record<number, Uint8Array>> {
  return field(doc, () => ({}), checkPcrTable);
}

function checkPcrTable(v: unknown): Checked<Record<number, Uint8Array>> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad(v, 'a table like { 0 = "<96 hex digits>" }');
  const out: Record<number, Uint8Array> = {};
  for (const [key, hex] of Object.entries(v)) {
    if (!/^(?:[0-9]|1[0-5])$/.test(key)) return bad(v, `PCR indexes 0 to 15, not "${key}"`);
    if (typeof hex !== 'string' || !/^[0-9a-fA-F]{96}$/.test(hex))
      return bad(v, `PCR ${key} as 96 hex digits (48 bytes)`);
    out[Number(key)] = Buffer.from(hex, 'hex');
  }
  return ok(out);
}

/** A list of PCR tables, each non-empty: accepted PCR sets, one of which must match whole. */
export function pcrSetList(doc: string, maxItems: number): Field<Array<Record<number, Uint8Array>>> {
  return field(
    doc,
    () => [],
    (v) => {
      if (!Array.isArray(v) || v.length > maxItems)
        return bad(v, `a list of at most ${maxItems} tables like { 0 = "<96 hex digits>" }`);
      const out: Array<Record<number, Uint8Array>> = [];
      for (const [i, item] of v.entries()) {
        const checked = checkPcrTable(item);
        if (!checked.ok) return { ok: false, problem: `set ${i + 1}: ${checked.problem}` };
        if (Object.keys(checked.value).length === 0)
          return { ok: false, problem: `set ${i + 1} is empty: it would match any enclave` };
        out.push(checked.value);
      }
      return ok(out);
    },
  );
}

/** A string that may be empty, meaning "not set" (the default); non-empty values must match `pattern`. */
export function optionalText(doc: string, pattern?: RegExp, patternDoc?: string): Field<string> {
  return field(doc, '', (v) => {
    if (typeof v !== 'string' || v.length > 4096) return bad(v, 'a string');
    if (v !== '' && pattern && !pattern.test(v)) return bad(v, patternDoc ?? `a string matching ${pattern}`);
    return ok(v);
  });
}

/** A table of NAME = "value" strings (environment variables); names as POSIX shells accept them. */
export function stringTable(doc: string, maxEntries: number): Field<Record<string, string>> {
  return field(
    doc,
    () => ({}),
    (v) => {
      if (typeof v !== 'object' || v === null || Array.isArray(v) || v instanceof Date)
        return bad(v, 'a table like { NAME = "value" }');
      const entries = Object.entries(v);
      if (entries.length > maxEntries) return bad(v, `at most ${maxEntries} entries`);
      const out: Record<string, string> = {};
      for (const [key, value] of entries) {
        if (!/^[A-Za-z_][A-Za-z0-9_]{0,255}$/.test(key))
          return bad(v, `names of letters, digits and _, not "${key.slice(0, 64)}"`);
        if (typeof value !== 'string' || value.length > 65_536 || value.includes('\0'))
          return bad(v, `${key} as a string without NUL bytes`);
        out[key] = value;
      }
      return ok(out);
    },
  );
}

/** The same check with no default: the value is `undefined` unless the file sets it (entries of a list of tables). */
export function optional<T>(inner: Field<T>): Field<T | undefined> {
  return field<T | undefined>(
    inner.doc,
    () => undefined,
    (v) => inner.check(v),
  );
}

/** Like optionalText, for credentials: a problem never quotes the value. */
export function secretText(doc: string, pattern: RegExp, patternDoc: string): Field<string> {
  return field(doc, '', (v) => {
    if (typeof v !== 'string' || v.length > 4096 || (v !== '' && !pattern.test(v)))
      return { ok: false, problem: `the value (not shown) is not allowed; expected ${patternDoc}` };
    return ok(v);
  });
}

/** Standard base64 (whitespace allowed between groups) decoding to 1..maxBytes bytes. */
export function base64Bytes(doc: string, maxBytes: number): Field<Uint8Array> {
  return field(
    doc,
    () => new Uint8Array(0),
    (v) => {
      const compact =
        typeof v === 'string' && v.length <= Math.ceil(maxBytes / 3) * 4 * 2 ? v.replace(/\s+/g, '') : undefined;
      if (
        compact === undefined ||
        compact.length === 0 ||
        compact.length % 4 !== 0 ||
        !/^[A-Za-z0-9+/]+={0,2}$/.test(compact)
      ) {
        return bad(v, `standard base64 of 1 to ${maxBytes} bytes`);
      }
      const bytes = Buffer.from(compact, 'base64');
      return bytes.byteLength <= maxBytes
        ? ok(new Uint8Array(bytes))
        : bad(v, `standard base64 of 1 to ${maxBytes} bytes (this is ${bytes.byteLength})`);
    },
  );
}

/** A number (TOML integer or float) from min to max inclusive. */
export function decimal(doc: string, defaultValue: number, min: number, max: number): Field<number> {
  return field(doc, defaultValue, (v) => {
    const n = typeof v === 'bigint' ? Number(v) : v;
    return typeof n === 'number' && Number.isFinite(n) && n >= min && n <= max
      ? ok(n)
      : bad(v, `a number from ${min} to ${max}`);
  });
}

/** A list of host names (no wildcards, no IP addresses), lowercased, without duplicates. */
export function hostNameList(doc: string, maxItems: number): Field<string[]> {
  const label = '[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?';
  const hostName = new RegExp(`^(?=.{1,253}$)${label}(?:\\.${label})*$`);
  return field(
    doc,
    () => [],
    (v) => {
      if (!Array.isArray(v) || v.length > maxItems) return bad(v, `a list of at most ${maxItems} host names`);
      const out: string[] = [];
      for (const item of v) {
        const name = typeof item === 'string' ? item.toLowerCase().replace(/\.$/, '') : '';
        if (!hostName.test(name) || /^[0-9.]+$/.test(name))
          return bad(item, 'a host name like "app.example.com" (no wildcards or IP addresses)');
        if (!out.includes(name)) out.push(name);
      }
      return ok(out);
    },
  );
}

/** An address, or "off" for a part that is not run; the value is `undefined` when off. */
export function optionalAddress(
  doc: string,
  defaultValue: string | ((mode: Mode) => string),
  transports: readonly Address['transport'][] = ['tcp', 'unix', 'vsock'],
): Field<Address | undefined> {
  const inner = address(doc, 'tcp:127.0.0.1:0', transports);
  const initial = typeof defaultValue === 'function' ? defaultValue : () => defaultValue;
  return field<Address | undefined>(
    doc,
    (mode) => (initial(mode) === 'off' ? undefined : parseAddress(initial(mode))),
    (v) => {
      if (v === 'off') return ok(undefined);
      const checked = inner.check(v);
      return checked.ok || typeof v !== 'string' ? checked : { ok: false, problem: `${checked.problem}; or "off"` };
    },
  );
}

/** Fleet peers: HOST or HOST:PORT each, HOST a DNS name, an IPv4 address or a bracketed IPv6 one. */
export function peerList(doc: string, maxItems: number): Field<string[]> {
  const peer = /^(?:\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::(\d{1,5}))?$/;
  return field(
    doc,
    () => [],
    (v) => {
      if (!Array.isArray(v) || v.length > maxItems) return bad(v, `a list of at most ${maxItems} peers`);
      for (const item of v) {
        const match = typeof item === 'string' ? peer.exec(item) : null;
        const port = match?.[1] === undefined ? 1 : Number(match[1]);
        if (!match || port < 1 || port > 65535)
          return bad(item, 'HOST or HOST:PORT (a DNS name, an IPv4 address or [IPv6]; port 1-65535)');
      }
      return ok([...v] as string[]);
    },
  );
}
