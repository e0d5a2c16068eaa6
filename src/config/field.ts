import { parseAddress, type Address } from '../bridge/address.js';

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

/** Shows a bad value the way it was written, truncated so a huge value cannot flood the message. */
export function show(value: unknown): string {
  let shown: string;
  if (typeof value === 'string') shown = JSON.stringify(value);
  else if (typeof value === 'object' && value !== null) shown = Array.isArray(value) ? 'an array' : 'a table';
  else shown = String(value);
  return shown.length > 80 ? `${shown.slice(0, 77)}...` : shown;
}

const ok = <T>(value: T): Checked<T> => ({ ok: true, value });

const bad = (value: unknown, expected: string): Checked<never> => ({ ok: false, problem: `${show(value)} is not allowed; expected ${expected}` });

export function bool(doc: string, defaultValue: boolean | ((mode: Mode) => boolean)): Field<boolean> {
  return field(doc, defaultValue, (v) => (typeof v === 'boolean' ? ok(v) : bad(v, 'true or false')));
}

export function int(doc: string, defaultValue: number | ((mode: Mode) => number), min: number, max: number): Field<number> {
  return field(doc, defaultValue, (v) => {
    const n = typeof v === 'bigint' ? Number(v) : v;
    return typeof n === 'number' && Number.isInteger(n) && n >= min && n <= max
      ? ok(n)
      : bad(v, `an integer from ${min} to ${max}`);
  });
}

export function text(doc: string, defaultValue: string | ((mode: Mode) => string), pattern?: RegExp, patternDoc?: string): Field<string> {
  return field(doc, defaultValue, (v) => {
    if (typeof v !== 'string' || v.length === 0 || v.length > 4096) return bad(v, 'a non-empty string');
    if (pattern && !pattern.test(v)) return bad(v, patternDoc ?? `a string matching ${pattern}`);
    return ok(v);
  });
}

export function oneOf<const V extends string>(doc: string, defaultValue: V | ((mode: Mode) => V), values: readonly V[]): Field<V> {
  const list = values.map((x) => `"${x}"`).join(', ');
  return field(doc, defaultValue, (v) => (typeof v === 'string' && (values as readonly string[]).includes(v) ? ok(v as V) : bad(v, `one of ${list}`)));
}

export function address(
  doc: string,
  defaultValue: string | ((mode: Mode) => string),
  transports: readonly Address['transport'][] = ['tcp', 'unix', 'vsock'],
): Field<Address> {
  const initial = typeof defaultValue === 'function' ? defaultValue : () => defaultValue;
  return field(doc, (mode) => parseAddress(initial(mode)), (v) => {
    if (typeof v !== 'string') return bad(v, `an address string (${transports.join(', ')})`);
    try {
      const parsed = parseAddress(v);
      if (!transports.includes(parsed.transport)) return bad(v, `a ${transports.join(' or ')} address`);
      return ok(parsed);
    } catch (error) {
      return { ok: false, problem: (error as Error).message };
    }
  });
}

export function stringList(doc: string, defaultValue: readonly string[], maxItems: number): Field<string[]> {
  return field(doc, () => [...defaultValue], (v) => {
    if (!Array.isArray(v) || v.length > maxItems || !v.every((x) => typeof x === 'string' && x.length > 0 && x.length <= 1024)) {
      return bad(v, `a list of at most ${maxItems} non-empty strings`);
    }
    return ok([...v] as string[]);
  });
}

/** A table of PCR index (0-15) to lowercase hex of 48 bytes, as SHA-384 PCRs are. */
export function pcrTable(doc: string): Field<Record<number, Uint8Array>> {
  return field(doc, () => ({}), (v) => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) return bad(v, 'a table like { 0 = "<96 hex digits>" }');
    const out: Record<number, Uint8Array> = {};
    for (const [key, hex] of Object.entries(v)) {
      if (!/^(?:[0-9]|1[0-5])$/.test(key)) return bad(v, `PCR indexes 0 to 15, not "${key}"`);
      if (typeof hex !== 'string' || !/^[0-9a-fA-F]{96}$/.test(hex)) return bad(v, `PCR ${key} as 96 hex digits (48 bytes)`);
      out[Number(key)] = Buffer.from(hex, 'hex');
    }
    return ok(out);
  });
}
