import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, it } from 'node:test';
import { CLI, REPO_ROOT } from './helpers/paths.js';

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const result = spawnSync(process.execPath, [CLI, ...args], { cwd: REPO_ROOT, encoding: 'utf8', timeout: 60_000 });
  return { status: result.status, stdout: result.stdout, stderr: result.stderr };
}

/** Each command, the usage line its help starts with, and a default address its help must show. */
const COMMANDS: Array<[string[], string, RegExp]> = [
  [['run'], 'usage: enclave-runtime run ', /ingress +vsock:any:7777 -> the app at tcp:127\.0\.0\.1:8008/],
  [
    ['dev'],
    'usage: enclave-runtime dev ',
    /ingress +tcp:127\.0\.0\.1:8443[\s\S]*internal API +tcp:127\.0\.0\.1:9999[\s\S]*DNS tcp:127\.0\.0\.1:8053/,
  ],
  [
    ['host'],
    'usage: enclave-runtime host ',
    /ingress +tcp:0\.0\.0\.0:443 -> the enclave at vsock:16:7777[\s\S]*egress relay +vsock:any:4433[\s\S]*DNS relay +vsock:any:8585/,
  ],
  [['provisioner'], 'usage: enclave-runtime provisioner ', /listen +tcp:127\.0\.0\.1:8444/],
  [['attest'], 'usage: enclave-runtime attest <verify|connect>', /attest connect HOST\[:PORT\]/],
  [['attest', 'verify'], 'usage: enclave-runtime attest verify ', /--root PEM_FILE/],
  [['attest', 'connect'], 'usage: enclave-runtime attest connect ', /port 443 by default/],
];

describe('--help', () => {
  for (const [command, usage, defaults] of COMMANDS) {
    it(`${command.join(' ')} --help and -h print usage, examples and defaults on stdout and exit 0`, () => {
      for (const flag of ['--help', '-h']) {
        const { status, stdout, stderr } = cli([...command, flag]);
        assert.equal(status, 0, `${command.join(' ')} ${flag}: ${stderr}`);
        assert.equal(stderr, '');
        assert.ok(stdout.startsWith(usage), stdout.slice(0, 200));
        assert.match(stdout, defaults);
        if (command[0] !== 'attest' || command.length > 1)
          assert.match(stdout, /\nexamples:\n[\s\S]*^ {2}enclave-runtime /m);
      }
    });
  }

  it('the top-level help lists every command and says each takes --help', () => {
    const { status, stdout } = cli(['--help']);
    assert.equal(status, 0);
    for (const command of ['run', 'dev', 'host', 'provisioner', 'attest verify', 'attest connect'])
      assert.match(stdout, new RegExp(`\\n  ${command} `));
    assert.match(stdout, /Every command takes --help/);
  });

  it('--help after -- belongs to the customer command, not to dev', () => {
    const { status, stdout, stderr } = cli(['dev', '--config', '/nonexistent/enclave.toml', '--', 'node', '--help']);
    assert.equal(status, 2);
    assert.equal(stdout, '');
    assert.match(stderr, /cannot read \/nonexistent\/enclave\.toml/);
  });

  it('attest with no subcommand is still a usage error (exit 2), with the usage on stderr', () => {
    const { status, stderr } = cli(['attest']);
    assert.equal(status, 2);
    assert.match(stderr, /usage: enclave-runtime attest <verify\|connect>/);
  });
});
