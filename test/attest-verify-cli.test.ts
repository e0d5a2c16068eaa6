import { spawnSync } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { attestVerifyCommand, parseVerificationTime, parseVerifyOptions } from '../src/cli/attest-verify.js';
import { ConfigError } from '../src/core/errors.js';
import { CLI, NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';

const SOURCES = readFileSync(join(NITRO_FIXTURES, 'SOURCES.md'), 'utf8');
const fx = (file: string): string => join(NITRO_FIXTURES, file);

// Verification times copied from test/fixtures/nitro/SOURCES.md ("Per-file provenance"):
const YAWN = { file: fx('yawn-nitro-attest-attestation.cose'), at: '1736179625' }; // yawn: from_unix_timestamp(1736179625)
const SUI = { file: fx('sui-nitro_attestation_tests.hex'), at: '2024-11-14T23:46:27.382Z' }; // sui: 1731627987382 ms; debug-mode
const ETERNIS = { file: fx('eternis-test_verify-literal.b64'), at: '1726606091' }; // eternis: unix_time=1726606091; debug-mode
const NEGATIVE = { file: fx('eternis-invalid_attestation.b64'), at: '1721770180' }; // chain OK then, signature fails
const BETA_CERT = {
  file: fx('evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.pem'),
  at: '1674054914',
}; // FAKETIME beta
const PONTIFEX = { file: fx('worldcoin-pontifex-real-attestation-doc.b64'), at: '1758628609' }; // doc timestamp
const ROOT_PEM = fx('AWS_NitroEnclaves_Root-G1.root.pem');

/** The decoded facts SOURCES.md lists for a file: module id, timestamp and non-zero PCRs. */
function sourcesFacts(file: string): { moduleId: string; timestamp: number; pcrs: Map<number, string> } {
  const section = SOURCES.split(/^#### decoded: /m).find((s) => s.startsWith(`\`${file}\``));
  assert.ok(section !== undefined, file);
  const head = /module_id `([^`]+)`; digest `SHA384`; timestamp (\d+) ms/.exec(section);
  assert.ok(head !== null);
  const pcrs = new Map(
    [...section.split(/^## /m)[0]!.matchAll(/^\s+- PCR(\d+) `([0-9a-f]+)`/gm)].map((m) => [Number(m[1]), m[2]!]),
  );
  return { moduleId: head[1]!, timestamp: Number(head[2]), pcrs };
}

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

async function run(argv: string[], stdinData?: string | Buffer): Promise<Run> {
  const stdout = new PassThrough();
  const stderr = new PassThrough();
  const stdin = new PassThrough();
  let out = '';
  let err = '';
  stdout.on('data', (c: Buffer) => (out += c.toString()));
  stderr.on('data', (c: Buffer) => (err += c.toString()));
  if (stdinData !== undefined) stdin.end(stdinData);
  const code = await attestVerifyCommand(argv, { stdout, stderr, stdin });
  return { code, stdout: out, stderr: err };
}

function assertInvalid(result: Run, code: string): void {
  assert.equal(result.code, 1, result.stderr);
  const lines = result.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line: ${result.stderr}`);
  assert.match(lines[0]!, new RegExp(`^invalid: ${code}: \\S`));
}

function assertUsage(result: Run, mentions?: string): void {
  assert.equal(result.code, 2, result.stderr);
  assert.equal(result.stdout, '');
  if (mentions !== undefined) assert.ok(result.stderr.includes(mentions), `stderr names ${mentions}: ${result.stderr}`);
}

const scratch = mkdtempSync(join(tmpdir(), 'attest-verify-cli-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
function scratchFile(name: string, content: string | Buffer): string {
  const path = join(scratch, name);
  writeFileSync(path, content);
  return path;
}

describe('attest verify (in-process)', () => {
  const yawn = sourcesFacts('yawn-nitro-attest-attestation.cose');

  it('prints one "valid:" line and exits 0 for a genuine document at its time', async () => {
    const result = await run([YAWN.file, '--at', YAWN.at]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stdout,
      `valid: module ${yawn.moduleId}, 16 PCRs, signed ${new Date(yawn.timestamp).toISOString()}\n`,
    );
    assert.equal(result.stderr, '');
  });

  it('takes --at as ISO-8601 too (UTC without an offset), and as fractional unix seconds', async () => {
    for (const at of [
      '2025-01-06T16:07:05Z',
      '2025-01-06T16:07:05',
      '2025-01-06T18:07:05+02:00',
      '2025-01-06 16:07:05.000Z',
      '1736179625.5',
    ]) {
      assert.equal((await run([YAWN.file, '--at', at])).code, 0, at);
    }
  });

  it('exits 1 with ERR_ATTESTATION_EXPIRED at the present time (no --at)', async () => {
    const result = await run([YAWN.file]);
    assertInvalid(result, 'ERR_ATTESTATION_EXPIRED');
    assert.match(result.stderr, /expired at \d{4}-\d{2}-\d{2}T/);
    assert.equal(result.stdout, '');
  });

  it('exits 1 with ERR_ATTESTATION_SIGNATURE for the negative fixture', async () => {
    assertInvalid(await run([NEGATIVE.file, '--at', NEGATIVE.at, '--allow-debug']), 'ERR_ATTESTATION_SIGNATURE');
  });

  it('refuses a debug-mode document unless --allow-debug', async () => {
    assertInvalid(await run([SUI.file, '--at', SUI.at]), 'ERR_ATTESTATION_DEBUG');
    const allowed = await run([SUI.file, '--at', SUI.at, '--allow-debug']);
    assert.equal(allowed.code, 0, allowed.stderr);
    assert.match(allowed.stdout, /^valid: .*\(debug mode\)\n$/);
  });

  it('reads the document from stdin with "-", as base64 or hex', async () => {
    const raw = readFileSync(YAWN.file);
    for (const text of [raw.toString('base64'), `${raw.toString('hex')}\n`, raw]) {
      const result = await run(['-', '--at', YAWN.at], text);
      assert.equal(result.code, 0, result.stderr);
    }
  });

  it('--json prints the decoded document with hex byte fields', async () => {
    const result = await run([PONTIFEX.file, '--at', PONTIFEX.at, '--json']);
    assert.equal(result.code, 0, result.stderr);
    const json = JSON.parse(result.stdout) as { valid: boolean; debug: boolean; document: Record<string, unknown> };
    const facts = sourcesFacts('worldcoin-pontifex-real-attestation-doc.b64');
    assert.equal(json.valid, true);
    assert.equal(json.debug, false);
    assert.equal(json.document.module_id, facts.moduleId);
    assert.equal(json.document.timestamp, facts.timestamp);
    const pcrs = json.document.pcrs as Record<string, string>;
    assert.equal(Object.keys(pcrs).length, 16);
    for (const [index, value] of facts.pcrs) assert.equal(pcrs[String(index)], value);
    assert.equal(pcrs['3'], '00'.repeat(48));
    // SOURCES.md: public_key 32 B 43b98646…, user_data and nonce null.
    assert.equal(json.document.public_key, '43b986461bbdb752dd389e8f36312e5ebc3377f91e694d8125d1bc0079b2e122');
    assert.equal(json.document.user_data, null);
    assert.equal(json.document.nonce, null);
    assert.equal((json.document.cabundle as string[]).length, 4);
    assert.equal(
      json.document.cabundle && (json.document.cabundle as string[])[0],
      new X509Certificate(readFileSync(ROOT_PEM)).raw.toString('hex'),
    );
  });

  it('--json on an invalid document still shows what it claims, and the reason stays on stderr', async () => {
    const result = await run([NEGATIVE.file, '--at', NEGATIVE.at, '--json']);
    assertInvalid(result, 'ERR_ATTESTATION_SIGNATURE');
    const json = JSON.parse(result.stdout) as {
      valid: boolean;
      error: { code: string };
      document: { module_id: string };
    };
    assert.equal(json.valid, false);
    assert.equal(json.error.code, 'ERR_ATTESTATION_SIGNATURE');
    assert.equal(json.document.module_id, sourcesFacts('eternis-invalid_attestation.b64').moduleId);
  });

  it('--pcr: a match exits 0, a mismatch exits 1 with ERR_ATTESTATION_PCR', async () => {
    const pcr0 = yawn.pcrs.get(0)!;
    assert.equal(
      (await run([YAWN.file, '--at', YAWN.at, '--pcr', `0=${pcr0}`, '--pcr', `3=${yawn.pcrs.get(3)!}`])).code,
      0,
    );
    assert.equal((await run([YAWN.file, '--at', YAWN.at, '--pcr', `0=${pcr0.toUpperCase()}`])).code, 0);
    const wrong = `${pcr0.slice(0, -2)}${pcr0.endsWith('00') ? '01' : '00'}`;
    assertInvalid(await run([YAWN.file, '--at', YAWN.at, '--pcr', `0=${wrong}`]), 'ERR_ATTESTATION_PCR');
  });

  it('--pcr-set: any one set of a JSON list may match', async () => {
    const pcr0 = yawn.pcrs.get(0)!;
    const wrong = `${pcr0.slice(0, -2)}${pcr0.endsWith('00') ? '01' : '00'}`;
    const both = scratchFile('sets.json', JSON.stringify([{ 0: wrong }, { PCR0: pcr0, pcr4: yawn.pcrs.get(4)! }]));
    assert.equal((await run([YAWN.file, '--at', YAWN.at, '--pcr-set', both])).code, 0);
    const onlyWrong = scratchFile('wrong.json', JSON.stringify({ 0: wrong }));
    assertInvalid(await run([YAWN.file, '--at', YAWN.at, '--pcr-set', onlyWrong]), 'ERR_ATTESTATION_PCR');
    // --pcr makes a set of its own beside the file's.
    assert.equal((await run([YAWN.file, '--at', YAWN.at, '--pcr-set', onlyWrong, '--pcr', `0=${pcr0}`])).code, 0);
  });

  it('--nonce, --user-data and --public-key must equal the document fields', async () => {
    // SOURCES.md: eternis nonce 00…01 (20 B), public_key "dummy"; pontifex public_key 43b98646….
    const nonce = '0000000000000000000000000000000000000001';
    assert.equal(
      (
        await run([
          ETERNIS.file,
          '--at',
          ETERNIS.at,
          '--allow-debug',
          '--nonce',
          nonce,
          '--public-key',
          Buffer.from('dummy').toString('hex'),
        ])
      ).code,
      0,
    );
    assertInvalid(
      await run([ETERNIS.file, '--at', ETERNIS.at, '--allow-debug', '--nonce', '00'.repeat(20)]),
      'ERR_ATTESTATION_NONCE',
    );
    assertInvalid(
      await run([ETERNIS.file, '--at', ETERNIS.at, '--allow-debug', '--user-data', 'aa']),
      'ERR_ATTESTATION_USER_DATA',
    );
    assertInvalid(
      await run([PONTIFEX.file, '--at', PONTIFEX.at, '--public-key', '43b98646']),
      'ERR_ATTESTATION_PUBLIC_KEY',
    );
  });

  it('--root: the AWS root PEM verifies, another certificate is ERR_ATTESTATION_ROOT', async () => {
    assert.equal((await run([YAWN.file, '--at', YAWN.at, '--root', ROOT_PEM])).code, 0);
    const other = scratchFile(
      'other-root.pem',
      new X509Certificate(readFileSync(fx('evervault-ga-valid-certificate.der'))).toString(),
    );
    assertInvalid(await run([YAWN.file, '--at', YAWN.at, '--root', other]), 'ERR_ATTESTATION_ROOT');
  });

  it('verifies a certificate that embeds a document, binding its key', async () => {
    const result = await run([BETA_CERT.file, '--at', BETA_CERT.at]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^valid: module .*binds the certificate key\)\n$/);
    assertInvalid(
      await run([fx('evervault-ga-valid-certificate.der'), '--at', BETA_CERT.at]),
      'ERR_ATTESTATION_FORMAT',
    );
  });

  it('exits 1 with ERR_ATTESTATION_FORMAT for garbage or empty input', async () => {
    assertInvalid(
      await run([scratchFile('garbage.txt', 'this is not an attestation document\n')]),
      'ERR_ATTESTATION_FORMAT',
    );
    assertInvalid(await run([scratchFile('empty.bin', '')]), 'ERR_ATTESTATION_FORMAT');
    assertInvalid(await run([fx('SOURCES.md')]), 'ERR_ATTESTATION_FORMAT');
    assertInvalid(await run([scratchFile('big.txt', Buffer.alloc(300 * 1024, 0x41))]), 'ERR_ATTESTATION_FORMAT');
    assertInvalid(await run(['-'], Buffer.alloc(300 * 1024, 0x41)), 'ERR_ATTESTATION_FORMAT');
  });

  it('exits 2 on usage errors, naming the bad value', async () => {
    assertUsage(await run([YAWN.file, '--bogus']), '--bogus');
    assertUsage(await run([YAWN.file, '--pcr', '0:abcd']), '0:abcd');
    assertUsage(await run([YAWN.file, '--pcr', `32=${'00'.repeat(48)}`]), `32=${'00'.repeat(48)}`);
    assertUsage(await run([YAWN.file, '--pcr', `0=${'00'.repeat(47)}`]), '47 bytes');
    assertUsage(await run([YAWN.file, '--pcr', '0=xyz']), '0=xyz');
    assertUsage(await run([YAWN.file, '--at', 'yesterday']), 'yesterday');
    assertUsage(await run([YAWN.file, '--at', '2025-13-45T99:00:00Z']), '2025-13-45');
    assertUsage(await run([YAWN.file, '--nonce', 'abc']), 'abc');
    assertUsage(await run([YAWN.file, '--user-data', 'aa'.repeat(1025)]), '1025 bytes');
    assertUsage(await run([YAWN.file, '--root', join(scratch, 'missing.pem')]), 'missing.pem');
    assertUsage(await run([YAWN.file, '--root', fx('SOURCES.md')]), 'SOURCES.md');
    assertUsage(await run([YAWN.file, '--pcr-set', scratchFile('bad.json', '{"0": "zz"}')]), 'bad.json');
    assertUsage(await run([join(scratch, 'does-not-exist.cbor')]), 'does-not-exist.cbor');
    assertUsage(await run([]), 'FILE');
    assertUsage(await run([YAWN.file, ROOT_PEM]), 'expected one FILE');
    assertUsage(await run([YAWN.file, '--pcr', `0=${'00'.repeat(48)}`, '--pcr', `0=${'11'.repeat(48)}`]), 'PCR0');
  });

  it('--help prints the options and exits 0', async () => {
    const result = await run(['--help']);
    assert.equal(result.code, 0);
    for (const option of [
      '--root',
      '--at',
      '--pcr',
      '--nonce',
      '--user-data',
      '--public-key',
      '--allow-debug',
      '--json',
    ]) {
      assert.ok(result.stdout.includes(option), option);
    }
  });
});

describe('parseVerifyOptions', () => {
  it('builds VerifyOptions and passes extra options through (for attest connect)', () => {
    const parsed = parseVerifyOptions(
      [
        'host:443',
        '--servername',
        'x.example',
        '--fresh-nonce',
        '--pcr',
        `8=${'ab'.repeat(48)}`,
        '--nonce',
        '0x0102',
        '--allow-debug',
        '--json',
      ],
      { servername: { type: 'string' }, 'fresh-nonce': { type: 'boolean' } },
      'attest connect',
    );
    assert.deepEqual(parsed.positionals, ['host:443']);
    assert.equal(parsed.values.servername, 'x.example');
    assert.equal(parsed.values['fresh-nonce'], true);
    assert.equal(parsed.json, true);
    assert.equal(parsed.verify.allowDebug, true);
    assert.deepEqual(parsed.verify.nonce, Buffer.from([1, 2]));
    assert.deepEqual(parsed.verify.expectedPcrs, [{ 8: Buffer.alloc(48, 0xab) }]);
    assert.equal(parsed.verify.at, undefined);
  });

  it('collects every problem into one ConfigError', () => {
    assert.throws(
      () => parseVerifyOptions(['f', '--at', 'soon', '--pcr', 'x', '--nonce', 'q']),
      (error: unknown) => error instanceof ConfigError && error.problems.length === 3,
    );
  });

  it('parses --at forms', () => {
    assert.equal(parseVerificationTime('1731627987.382')?.getTime(), 1731627987382);
    assert.equal(parseVerificationTime('0')?.getTime(), 0);
    assert.equal(parseVerificationTime('2024-02-29')?.toISOString(), '2024-02-29T00:00:00.000Z');
    assert.equal(parseVerificationTime('2024-09-07')?.toISOString(), '2024-09-07T00:00:00.000Z');
    assert.equal(parseVerificationTime('2024-09-07T14:37:39.545Z')?.getTime(), Date.UTC(2024, 8, 7, 14, 37, 39, 545));
    assert.equal(parseVerificationTime('2024-09-07T14:37')?.getTime(), Date.UTC(2024, 8, 7, 14, 37));
    assert.equal(parseVerificationTime('2024-09-07T16:37:39-0100')?.getTime(), Date.UTC(2024, 8, 7, 17, 37, 39));
    assert.equal(
      parseVerificationTime('2024-09-07T14:37:39.123456789Z')?.getTime(),
      Date.UTC(2024, 8, 7, 14, 37, 39, 123),
    );
    for (const bad of [
      '',
      'now',
      '-5',
      '1e9',
      'Sep 7 2024',
      '2024-09-07T25:00:00Z',
      '2024-09-07T24:00:00Z',
      '2024-02-30T00:00:00Z',
      '2023-02-29',
      '2024-00-10',
      '2024-09-07T12:60:00Z',
    ]) {
      assert.equal(parseVerificationTime(bad), undefined, bad);
    }
  });
});

describe('attest verify (spawned through the package bin)', () => {
  const spawn = (args: string[]) =>
    spawnSync(process.execPath, [CLI, 'attest', 'verify', ...args], {
      cwd: REPO_ROOT,
      encoding: 'utf8',
      timeout: 30_000,
    });

  it('exits 0 for a genuine document at its time, 1 for garbage, 2 for a bad option', () => {
    const ok = spawn([YAWN.file, '--at', YAWN.at]);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /^valid: module /);
    const garbage = spawn([scratchFile('garbage-spawn.txt', 'garbage')]);
    assert.equal(garbage.status, 1, garbage.stderr);
    assert.match(garbage.stderr, /^invalid: ERR_ATTESTATION_FORMAT: /);
    const bad = spawn([YAWN.file, '--no-such-option']);
    assert.equal(bad.status, 2, bad.stderr);
  });
});
