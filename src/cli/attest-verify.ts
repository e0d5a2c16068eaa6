import { readFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { AttestationError } from '../verify/attestation-error.js';
import { verifyCertificateAttestation } from '../verify/certificate-binding.js';
import { decodeAttestationInput, MAX_ENCODED_INPUT_BYTES, type AttestationInput } from '../verify/document-encoding.js';
import {
  attestationDocumentToJson,
  isDebugDocument,
  MAX_OPTIONAL_FIELD_BYTES,
  MAX_PCR_COUNT,
} from '../verify/document.js';
import { readRootFile } from '../verify/root-store.js';
import {
  decodeAttestation,
  MAX_EXPECTED_PCR_SETS,
  verifyAttestation,
  type VerifiedAttestation,
  type VerifyOptions,
} from '../verify/verifier.js';
import { ConfigError } from '../core/errors.js';
import { processIo, type CommandIo } from './io.js';

/** A pipe that stays silent this long is a forgotten `-`, not a slow producer. */
export const STDIN_TIMEOUT_MS = 30_000;
const MAX_PCR_SET_FILE_BYTES = 64 * 1024;
const PCR_BYTE_LENGTHS: ReadonlySet<number> = new Set([32, 48, 64]);

const USAGE = `usage: enclave-runtime attest verify FILE|- [options]

Verifies an AWS Nitro attestation document (raw CBOR, base64 or hex, autodetected), or the one a
certificate embeds (PEM or DER; its user_data must then be the certificate's public key).

  --root PEM_FILE     trust this root instead of the bundled AWS Nitro root G1
  --at TIME           verification time: ISO-8601 (UTC when no offset is given) or unix seconds
  --pcr N=HEX         expected PCR value; repeatable, all must match
  --pcr-set FILE      JSON file of accepted PCR sets ({"0": "HEX", ...} or a list of them); repeatable
  --nonce HEX         expected nonce
  --user-data HEX     expected user_data
  --public-key HEX    expected public_key
  --allow-debug       accept debug-mode enclaves (PCR0/1/2 all zero)
  --json              print the decoded document as JSON on stdout

exit status: 0 valid, 1 invalid (the reason on stderr), 2 usage error

examples:
  curl -s 'http://127.0.0.1:9999/attestation-doc?nonce=00ff' > doc.cbor
  enclave-runtime attest verify doc.cbor --nonce 00ff --root .enclave-runtime/sim-nsm-root.pem
  enclave-runtime attest verify doc.cbor --pcr 0=<PCR0 hex from nitro-cli describe-eif> --json
`;

/** The options `attest verify` and `attest connect` share, in node:util parseArgs form. */
export const VERIFY_OPTION_DEFINITIONS = {
  root: { type: 'string' },
  at: { type: 'string' },
  pcr: { type: 'string', multiple: true },
  'pcr-set': { type: 'string', multiple: true },
  nonce: { type: 'string' },
  'user-data': { type: 'string' },
  'public-key': { type: 'string' },
  'allow-debug': { type: 'boolean' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const satisfies NonNullable<ParseArgsConfig['options']>;

type OptionValue = string | boolean | (string | boolean)[] | undefined;

/** A parsed command line: the VerifyOptions it asks for, plus everything else parseArgs saw. */
export interface ParsedVerifyArgs {
  verify: VerifyOptions;
  json: boolean;
  help: boolean;
  positionals: string[];
  /** Every option value by name, including the caller's `extraOptions`. */
  values: Record<string, OptionValue>;
}

/**
 * Parses a verify command line (the shared options plus `extraOptions`, e.g. connect's
 * --servername). Throws ConfigError listing every problem, each naming the bad value.
 */
export function parseVerifyOptions(
  argv: readonly string[],
  extraOptions: NonNullable<ParseArgsConfig['options']> = {},
  command = 'attest verify',
): ParsedVerifyArgs {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: { ...VERIFY_OPTION_DEFINITIONS, ...extraOptions },
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new ConfigError([(error as Error).message], command);
  }
  const values = parsed.values as Record<string, OptionValue>;
  const problems: string[] = [];
  const verify: VerifyOptions = {};
  const str = (name: string): string | undefined =>
    typeof values[name] === 'string' ? (values[name] as string) : undefined;
  const list = (name: string): string[] =>
    Array.isArray(values[name]) ? (values[name] as unknown[]).filter((v): v is string => typeof v === 'string') : [];

  const root = str('root');
  if (root !== undefined) {
    try {
      // Read now so a bad --root is a usage error, not an "invalid document" verdict.
      const roots = readRootFile(root);
      verify.root = [...roots.byFingerprint.values()].map((cert) => cert.toString()).join('\n');
    } catch (error) {
      problems.push(`--root ${JSON.stringify(root)}: ${(error as Error).message}`);
    }
  }
  const at = str('at');
  if (at !== undefined) {
    const time = parseVerificationTime(at);
    if (time === undefined)
      problems.push(`--at ${JSON.stringify(at)}: expected ISO-8601 (e.g. 2024-09-07T14:37:39Z) or unix seconds`);
    else verify.at = time;
  }
  const sets: Record<number, Uint8Array>[] = [];
  const flagSet: Record<number, Uint8Array> = {};
  for (const value of list('pcr')) {
    const pcr = parsePcrAssignment(value);
    if (typeof pcr === 'string') problems.push(`--pcr ${JSON.stringify(value)}: ${pcr}`);
    else if (flagSet[pcr.index] !== undefined && !Buffer.from(flagSet[pcr.index]!).equals(pcr.value)) {
      problems.push(`--pcr ${JSON.stringify(value)}: PCR${pcr.index} is already given a different value`);
    } else flagSet[pcr.index] = pcr.value;
  }
  if (Object.keys(flagSet).length > 0) sets.push(flagSet);
  for (const file of list('pcr-set')) {
    try {
      sets.push(...readPcrSetFile(file));
    } catch (error) {
      problems.push(`--pcr-set ${JSON.stringify(file)}: ${(error as Error).message}`);
    }
  }
  if (sets.length > MAX_EXPECTED_PCR_SETS)
    problems.push(`at most ${MAX_EXPECTED_PCR_SETS} PCR sets are accepted, got ${sets.length}`);
  if (sets.length > 0) verify.expectedPcrs = sets;
  for (const [flag, key] of [
    ['nonce', 'nonce'],
    ['user-data', 'userData'],
    ['public-key', 'publicKey'],
  ] as const) {
    const value = str(flag);
    if (value === undefined) continue;
    const bytes = parseHex(value);
    if (bytes === undefined)
      problems.push(`--${flag} ${JSON.stringify(clip(value))}: expected an even number of hex digits`);
    else if (bytes.byteLength > MAX_OPTIONAL_FIELD_BYTES)
      problems.push(`--${flag}: ${bytes.byteLength} bytes, at most ${MAX_OPTIONAL_FIELD_BYTES} fit in a document`);
    else verify[key] = bytes;
  }
  if (values['allow-debug'] === true) verify.allowDebug = true;
  if (problems.length > 0) throw new ConfigError(problems, command);
  return { verify, json: values.json === true, help: values.help === true, positionals: parsed.positionals, values };
}

/** Parses `--at`: unix seconds (fractions allowed) or ISO-8601; a date-time without offset is UTC. */
export function parseVerificationTime(text: string): Date | undefined {
  const value = text.trim();
  if (/^\d{1,12}(?:\.\d{1,9})?$/.test(value)) return new Date(Math.round(Number(value) * 1000));
  const iso = /^(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?)(Z|[+-]\d{2}:?\d{2})?)?$/i.exec(value);
  if (iso === null) return undefined;
  const [, date, time, zone] = iso;
  // Date.parse rolls 2024-02-30 over into March and accepts 24:00; a verification time must say what it means.
  const [year, month, day] = date!.split('-').map(Number) as [number, number, number];
  const [hour = 0, minute = 0, second = 0] = (time ?? '').split(':').map((part) => Math.floor(Number(part)));
  if (
    new Date(Date.UTC(year, month - 1, day)).getUTCDate() !== day ||
    month < 1 ||
    month > 12 ||
    hour > 23 ||
    minute > 59 ||
    second > 59
  ) {
    return undefined;
  }
  const offset =
    zone === undefined ? 'Z' : zone.length === 5 ? `${zone.slice(0, 3)}:${zone.slice(3)}` : zone.toUpperCase();
  // Date.parse takes at most milliseconds; longer fractions are truncated, not rejected.
  const clock = time === undefined ? '00:00:00' : time.replace(/(\.\d{3})\d+$/, '$1');
  const parsed = new Date(`${date}T${clock}${offset}`);
  return Number.isFinite(parsed.getTime()) ? parsed : undefined;
}

function parsePcrAssignment(value: string): { index: number; value: Buffer } | string {
  const match = /^(\d{1,2})=(.*)$/s.exec(value.trim());
  if (match === null) return 'expected N=HEX, e.g. 0=4a9329d6…';
  const index = Number(match[1]);
  if (index >= MAX_PCR_COUNT) return `PCR index ${index} is out of range 0..${MAX_PCR_COUNT - 1}`;
  const bytes = parseHex(match[2]!);
  if (bytes === undefined) return 'the value is not an even number of hex digits';
  if (!PCR_BYTE_LENGTHS.has(bytes.byteLength)) return `the value is ${bytes.byteLength} bytes, a PCR is 32, 48 or 64`;
  return { index, value: bytes };
}

/** Reads a --pcr-set JSON file: one set `{"0": "hex", "PCR8": "hex"}` or a list of such sets. */
function readPcrSetFile(path: string): Record<number, Uint8Array>[] {
  const bytes = readFileSync(path);
  if (bytes.byteLength > MAX_PCR_SET_FILE_BYTES) throw new Error(`larger than ${MAX_PCR_SET_FILE_BYTES} bytes`);
  let json: unknown;
  try {
    json = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw new Error(`not JSON: ${(error as Error).message}`, { cause: error });
  }
  const sets = Array.isArray(json) ? json : [json];
  if (sets.length === 0) throw new Error('the list of PCR sets is empty');
  return sets.map((set, i) => {
    if (set === null || typeof set !== 'object' || Array.isArray(set))
      throw new Error(`set ${i + 1} is not an object of PCR index to hex`);
    const out: Record<number, Uint8Array> = {};
    for (const [key, hex] of Object.entries(set as Record<string, unknown>)) {
      const result = parsePcrAssignment(
        `${/^(?:pcr)?(\d{1,2})$/i.exec(key)?.[1] ?? key}=${typeof hex === 'string' ? hex : ''}`,
      );
      if (typeof result === 'string') throw new Error(`set ${i + 1}, ${JSON.stringify(key)}: ${result}`);
      out[result.index] = result.value;
    }
    if (Object.keys(out).length === 0) throw new Error(`set ${i + 1} is empty`);
    return out;
  });
}

function parseHex(text: string): Buffer | undefined {
  const hex = text.trim().replace(/^0x/i, '');
  return /^(?:[0-9a-fA-F]{2})*$/.test(hex) ? Buffer.from(hex, 'hex') : undefined;
}

function clip(text: string): string {
  return text.length > 40 ? `${text.slice(0, 40)}…` : text;
}

/** `enclave-runtime attest verify FILE|- [options]`; resolves with the exit code (0 valid, 1 invalid, 2 usage). */
export async function attestVerifyCommand(argv: string[], io: CommandIo = processIo()): Promise<number> {
  let args: ParsedVerifyArgs;
  try {
    args = parseVerifyOptions(argv);
  } catch (error) {
    if (error instanceof ConfigError) return usageError(io, error.problems);
    throw error;
  }
  if (args.help) {
    io.stdout.write(USAGE);
    return 0;
  }
  if (args.positionals.length !== 1) {
    return usageError(io, [
      args.positionals.length === 0
        ? 'expected FILE or - (stdin)'
        : `expected one FILE, got ${args.positionals.length}: ${args.positionals.join(' ')}`,
    ]);
  }
  const source = args.positionals[0]!;

  let raw: Uint8Array;
  try {
    raw = source === '-' ? await readStdin(io.stdin) : await readInputFile(source);
  } catch (error) {
    if (error instanceof AttestationError) return invalid(io, args.json, error, null);
    return usageError(io, [
      `cannot read ${source === '-' ? 'stdin' : JSON.stringify(source)}: ${(error as Error).message}`,
    ]);
  }

  let input: AttestationInput | undefined;
  try {
    input = decodeAttestationInput(raw);
    const verified =
      input.kind === 'certificate'
        ? verifyCertificateAttestation(input.bytes, args.verify)
        : verifyAttestation(input.bytes, args.verify);
    return valid(io, args.json, verified, input.kind === 'certificate');
  } catch (error) {
    if (error instanceof AttestationError) return invalid(io, args.json, error, input);
    io.stderr.write(`error: ${oneLine((error as Error).message)}\n`);
    return 1;
  }
}

function valid(io: CommandIo, json: boolean, verified: VerifiedAttestation, fromCertificate: boolean): number {
  const { document } = verified;
  if (json) {
    io.stdout.write(
      `${JSON.stringify({ valid: true, debug: isDebugDocument(document), document: attestationDocumentToJson(document) }, null, 2)}\n`,
    );
    return 0;
  }
  const notes = [
    isDebugDocument(document) ? 'debug mode' : '',
    fromCertificate ? 'binds the certificate key' : '',
  ].filter((n) => n !== '');
  io.stdout.write(
    `valid: module ${document.moduleId}, ${document.pcrs.size} PCRs, signed ${new Date(document.timestamp).toISOString()}${notes.length > 0 ? ` (${notes.join(', ')})` : ''}\n`,
  );
  return 0;
}

function invalid(
  io: CommandIo,
  json: boolean,
  error: AttestationError,
  input: AttestationInput | null | undefined,
): number {
  io.stderr.write(`invalid: ${error.code}: ${oneLine(error.message)}\n`);
  if (json) {
    io.stdout.write(
      `${JSON.stringify({ valid: false, error: { code: error.code, message: error.message }, document: bestEffortDocument(input) }, null, 2)}\n`,
    );
  }
  return 1;
}

/** The document as far as it decodes, so --json still shows what an invalid one claims. */
function bestEffortDocument(input: AttestationInput | null | undefined): Record<string, unknown> | null {
  if (input?.kind !== 'document') return null;
  try {
    return attestationDocumentToJson(decodeAttestation(input.bytes));
  } catch {
    return null;
  }
}

function usageError(io: CommandIo, problems: readonly string[]): number {
  for (const problem of problems) io.stderr.write(`enclave-runtime attest verify: ${oneLine(problem)}\n`);
  io.stderr.write('run "enclave-runtime attest verify --help" for the options\n');
  return 2;
}

function oneLine(text: string): string {
  return text.replace(/\s+/g, ' ').trim();
}

async function readInputFile(path: string): Promise<Uint8Array> {
  const handle = await open(path, 'r');
  try {
    // Read one byte past the cap to tell "at the cap" from "over it" without trusting stat (pipes, /dev/stdin).
    const buffer = Buffer.alloc(MAX_ENCODED_INPUT_BYTES + 1);
    let length = 0;
    while (length < buffer.byteLength) {
      const { bytesRead } = await handle.read(buffer, length, buffer.byteLength - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    if (length > MAX_ENCODED_INPUT_BYTES) throw tooLarge();
    return buffer.subarray(0, length);
  } finally {
    await handle.close();
  }
}

async function readStdin(stdin: NodeJS.ReadableStream): Promise<Uint8Array> {
  return new Promise<Uint8Array>((resolve, reject) => {
    const chunks: Buffer[] = [];
    let length = 0;
    const finish = (error: Error | undefined): void => {
      clearTimeout(timer);
      stdin.removeListener('data', onData);
      stdin.removeListener('end', onEnd);
      stdin.removeListener('error', onError);
      stdin.pause();
      if (error !== undefined) reject(error);
      else resolve(Buffer.concat(chunks, length));
    };
    const onData = (chunk: Buffer | string): void => {
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk) : chunk;
      length += bytes.byteLength;
      if (length > MAX_ENCODED_INPUT_BYTES) finish(tooLarge());
      else chunks.push(bytes);
    };
    const onEnd = (): void => finish(undefined);
    const onError = (error: Error): void => finish(error);
    const timer = setTimeout(
      () => finish(new Error(`no end of input within ${STDIN_TIMEOUT_MS / 1000} s`)),
      STDIN_TIMEOUT_MS,
    );
    stdin.on('data', onData);
    stdin.once('end', onEnd);
    stdin.once('error', onError);
    stdin.resume();
  });
}

function tooLarge(): AttestationError {
  return new AttestationError('ERR_ATTESTATION_FORMAT', `input is larger than ${MAX_ENCODED_INPUT_BYTES} bytes`);
}
