import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startFakeKmsForStateDir, type FakeKms } from './helpers/fake-kms.js';
import { CLI, REPO_ROOT } from './helpers/paths.js';

const credentials = { accessKeyId: 'AKIAFAKEKMSE2E000001', secretAccessKey: 'e2e/secret/access/key/for/tests/only' };
const dir = mkdtempSync(join(tmpdir(), 'secrets-e2e-'));
let stateDir = join(dir, 'state');
let kms: FakeKms;

before(async () => {
  // The runtime creates the simulated NSM's root in its state dir at start; the fake reads it per request.
  kms = await startFakeKmsForStateDir(() => stateDir, credentials);
});
after(async () => {
  await kms.close();
  rmSync(dir, { recursive: true, force: true });
});

// The customer command: reports a hash and the length of each variable (never the value), then waits for SIGTERM.
const REPORTER = `
import { createHash } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
const out = process.argv[2];
const report = {};
for (const name of ['APP_SECRET', 'FILE_SECRET', 'OPTIONAL_SECRET']) {
  const value = process.env[name];
  report[name] = value === undefined ? null : { sha256: createHash('sha256').update(value).digest('hex'), length: value.length };
}
writeFileSync(out + '.tmp', JSON.stringify(report));
renameSync(out + '.tmp', out);
process.on('SIGTERM', () => process.exit(0));
setInterval(() => {}, 1000);
`;

interface Run {
  child: ChildProcessWithoutNullStreams;
  stderr: () => string;
  stdout: () => string;
  logs: () => Array<Record<string, unknown>>;
  exited: Promise<number | null>;
}

function startCli(config: string, reportPath: string): Run {
  const reporter = join(dir, 'report-env.mjs');
  writeFileSync(reporter, REPORTER);
  const child = spawn(
    process.execPath,
    [CLI, 'dev', '--config', config, '--state-dir', stateDir, '--', process.execPath, reporter, reportPath],
    {
      cwd: REPO_ROOT,
      env: {
        ...process.env,
        AWS_ACCESS_KEY_ID: credentials.accessKeyId,
        AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey,
      },
    },
  );
  let err = '';
  let out = '';
  child.stderr.on('data', (chunk: Buffer) => (err += chunk.toString()));
  child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
  const exited = once(child, 'exit').then(([code]) => code as number | null);
  const logs = () =>
    err
      .split('\n')
      .filter((line) => line.startsWith('{'))
      .map((line) => JSON.parse(line) as Record<string, unknown>);
  return { child, stderr: () => err, stdout: () => out, logs, exited };
}

function writeConfig(name: string, extra: string): string {
  const path = join(dir, name);
  writeFileSync(
    path,
    [
      '[runtime]',
      'log_level = "trace"',
      'health_listen = "tcp:127.0.0.1:0"',
      '[ingress]',
      'enabled = false',
      '[tls]',
      'enabled = false',
      '[attestation]',
      'api_listen = "tcp:127.0.0.1:0"',
      '[metrics]',
      'enabled = false',
      '[kms]',
      `region = "${kms.region}"`,
      `endpoint = "${kms.url}"`,
      'via = "direct"',
      'max_attempts = 1',
      extra,
    ].join('\n'),
  );
  return path;
}

/** Every file under `root`, recursively. */
function allFiles(root: string): string[] {
  return readdirSync(root, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile())
    .map((entry) => join(entry.parentPath ?? (entry as unknown as { path: string }).path, entry.name));
}

/** The forms a leaked value could take in a file or a log. */
function forms(value: string): Buffer[] {
  const bytes = Buffer.from(value, 'utf8');
  return [
    bytes,
    Buffer.from(bytes.toString('base64')),
    Buffer.from(bytes.toString('hex')),
    Buffer.from(value, 'utf16le'),
  ];
}

async function waitFor(condition: () => boolean, run: Run, what: string): Promise<void> {
  for (let i = 0; i < 600 && !condition(); i++) {
    if (run.child.exitCode !== null) break;
    await sleep(50);
  }
  assert.ok(condition(), `${what} never happened; exit ${run.child.exitCode}\n${run.stderr().slice(-4000)}`);
}

const sha256 = (value: string) => createHash('sha256').update(value).digest('hex');

describe('secrets at boot, end to end through the real CLI (dev, simulated NSM, fake KMS)', () => {
  it('a [[secrets]] entry reaches the command environment and nowhere else: not the logs, the state dir or /proc/<runtime>/environ', async () => {
    stateDir = join(dir, 'state-ok');
    const appSecret = `s3cr3t-${randomBytes(16).toString('hex')}`;
    const fileSecretBytes = randomBytes(32);
    const fileSecret = fileSecretBytes.toString('base64');
    const blobFile = join(dir, 'file-secret.bin');
    writeFileSync(blobFile, kms.encrypt(fileSecretBytes));
    const config = writeConfig(
      'ok.toml',
      [
        '[[secrets]]',
        'name = "APP_SECRET"',
        `ciphertext = "${kms.encrypt(Buffer.from(appSecret)).toString('base64')}"`,
        `key_id = "${kms.alias}"`,
        '[[secrets]]',
        'name = "FILE_SECRET"',
        `file = "${blobFile}"`,
        'encoding = "base64"',
        '[[secrets]]',
        'name = "OPTIONAL_SECRET"',
        `file = "${join(dir, 'not-there.bin')}"`,
        'required = false',
      ].join('\n'),
    );
    const reportPath = join(dir, 'report-ok.json');
    const run = startCli(config, reportPath);
    try {
      await waitFor(() => existsSync(reportPath), run, 'the command report');
      const report = JSON.parse(readFileSync(reportPath, 'utf8')) as Record<
        string,
        { sha256: string; length: number } | null
      >;
      assert.deepEqual(report.APP_SECRET, { sha256: sha256(appSecret), length: appSecret.length });
      assert.deepEqual(report.FILE_SECRET, { sha256: sha256(fileSecret), length: fileSecret.length });
      assert.equal(report.OPTIONAL_SECRET, null);

      // While the runtime still runs: the command's environment holds the value (so the check below can see one),
      // the runtime's own environment and command line never did.
      const commandPid = run.logs().find((line) => line.msg === 'customer command started')?.pid;
      assert.ok(
        readFileSync(`/proc/${commandPid}/environ`).includes(`APP_SECRET=${appSecret}\0`),
        'the command environment lacks the secret',
      );
      for (const file of ['environ', 'cmdline']) {
        const proc = readFileSync(`/proc/${run.child.pid}/${file}`);
        for (const value of [appSecret, fileSecret])
          for (const form of forms(value))
            assert.equal(proc.indexOf(form), -1, `a secret is in /proc/<runtime>/${file}`);
      }
      run.child.kill('SIGTERM');
      assert.equal(await run.exited, 0, run.stderr().slice(-3000));
    } finally {
      if (run.child.exitCode === null) run.child.kill('SIGKILL');
    }

    const logs = run.logs();
    assert.ok(
      logs.some((line) => line.level === 10),
      'the runtime did not log at trace',
    );
    assert.deepEqual(
      logs.filter((line) => line.msg === 'secret loaded').map((line) => line.secret),
      ['APP_SECRET', 'FILE_SECRET'],
    );
    const optional = logs.find(
      (line) => line.msg === 'optional secret could not be loaded; its variable is left unset',
    );
    assert.equal(optional?.secret, 'OPTIONAL_SECRET');
    const started = logs.findIndex((line) => line.msg === 'customer command started');
    const loaded = logs.findIndex((line) => line.msg === 'secret loaded' && line.secret === 'FILE_SECRET');
    assert.ok(started > loaded && loaded >= 0, 'the command started before every secret was loaded');
    assert.deepEqual(
      kms.calls.filter((call) => call.target === 'Decrypt').map((call) => call.recipient),
      [true, true],
    );

    const output = Buffer.from(run.stderr() + run.stdout());
    const files = allFiles(stateDir);
    assert.ok(files.length > 0, 'the state dir is empty');
    for (const value of [appSecret, fileSecret]) {
      for (const form of forms(value)) {
        assert.equal(output.indexOf(form), -1, 'a secret is in the runtime output');
        for (const file of files) assert.equal(readFileSync(file).indexOf(form), -1, `a secret is in ${file}`);
      }
    }
  });

  it('a document whose PCRs are not in the KMS policy: KMS refuses, the runtime exits 1 naming the secret and the KMS code, the command never starts', async () => {
    stateDir = join(dir, 'state-refused');
    const config = writeConfig(
      'refused.toml',
      [
        '[attestation.simulated.pcrs]',
        `0 = "${'cd'.repeat(48)}"`,
        '[[secrets]]',
        'name = "APP_SECRET"',
        `ciphertext = "${kms.encrypt(Buffer.from('never delivered')).toString('base64')}"`,
      ].join('\n'),
    );
    const before = kms.calls.length;
    const reportPath = join(dir, 'report-refused.json');
    const run = startCli(config, reportPath);
    const code = await run.exited;
    assert.equal(code, 1, run.stderr().slice(-3000));
    assert.deepEqual(kms.calls.slice(before), [
      { target: 'Decrypt', recipient: true, status: 400, kmsCode: 'AccessDeniedException' },
    ]);
    const logs = run.logs();
    const refusal = logs.find((line) => line.msg === 'secret could not be loaded');
    assert.equal(refusal?.secret, 'APP_SECRET');
    assert.equal(refusal?.kmsCode, 'AccessDeniedException');
    assert.equal(refusal?.code, 'ERR_KMS_REQUEST');
    const fatal = logs.find((line) => line.level === 60);
    assert.equal(fatal?.msg, 'secrets failed to load; the command is not started');
    assert.equal(fatal?.code, 'ERR_SECRET_LOAD');
    assert.match(
      String(fatal?.reason),
      /^secret APP_SECRET could not be loaded: KMS Decrypt refused \(AccessDeniedException\)/,
    );
    assert.ok(!logs.some((line) => line.msg === 'customer command started'));
    assert.ok(!existsSync(reportPath));
    assert.ok(!run.stderr().includes('never delivered'));
  });
});
