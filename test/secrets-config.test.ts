import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { problemsOf as problemsIn } from './helpers/config-problems.js';

const problemsOf = (toml: string, mode: 'run' | 'dev' = 'dev') => problemsIn(toml, mode);
const BLOB = Buffer.from('a KMS ciphertext blob stand-in').toString('base64');

function assertProblem(problems: string[], expected: RegExp): void {
  assert.ok(
    problems.some((p) => expected.test(p)),
    `no problem matched ${expected}:\n${problems.join('\n')}`,
  );
}

describe('[[secrets]] and [kms] in enclave.toml', () => {
  it('reads a list of secrets into typed entries with defaults', () => {
    const config = parseConfig(
      `[kms]\nregion = "eu-central-1"\n\n[[secrets]]\nname = "DB_PASSWORD"\nciphertext = "${BLOB}"\nkey_id = "alias/app"\n\n` +
        `[[secrets]]\nname = "TLS_KEY"\nfile = "/app/tls.key.enc"\nrequired = false\nencoding = "base64"\n`,
      'dev',
    );
    assert.equal(config.kms.region, 'eu-central-1');
    assert.equal(config.kms.via, 'direct');
    assert.equal(config.secrets.length, 2);
    assert.deepEqual(
      { ...config.secrets[0], ciphertext: Buffer.from(config.secrets[0]!.ciphertext!) },
      {
        name: 'DB_PASSWORD',
        ciphertext: Buffer.from(BLOB, 'base64'),
        file: undefined,
        keyId: 'alias/app',
        required: true,
        encoding: 'utf8',
      },
    );
    assert.deepEqual(config.secrets[1], {
      name: 'TLS_KEY',
      ciphertext: undefined,
      file: '/app/tls.key.enc',
      keyId: undefined,
      required: false,
      encoding: 'base64',
    });
  });

  it('accepts https endpoints and plain http to loopback', () => {
    for (const endpoint of [
      'https://kms-fips.us-east-1.amazonaws.com',
      'https://vpce-0abc.kms.us-east-1.vpce.amazonaws.com/',
      'http://127.0.0.1:4566',
      'http://localhost:4000',
      'http://[::1]:80',
    ]) {
      assert.equal(parseConfig(`[kms]\nendpoint = "${endpoint}"`, 'dev').kms.endpoint, endpoint);
    }
  });

  it('no [[secrets]] is an empty list, and [kms] defaults by mode', () => {
    const run = parseConfig('', 'run');
    assert.deepEqual(run.secrets, []);
    assert.equal(run.kms.via, 'egress_proxy');
    assert.equal(run.kms.region, '');
    assert.equal(run.kms.timeoutMs, 10_000);
    assert.equal(parseConfig('', 'dev').kms.via, 'direct');
  });

  describe('every problem names the entry and key as secrets[i].key', () => {
    const cases: Array<[string, string, RegExp]> = [
      [
        'missing name',
        `[[secrets]]\nciphertext = "${BLOB}"`,
        /^secrets\[0\]\.name: missing; every \[\[secrets\]\] entry needs it/,
      ],
      [
        'bad name',
        `[[secrets]]\nname = "1BAD-NAME"\nciphertext = "${BLOB}"`,
        /^secrets\[0\]\.name: "1BAD-NAME" is not allowed; expected an environment variable name/,
      ],
      [
        'misspelt key',
        `[[secrets]]\nname = "A"\nciphertext = "${BLOB}"\nrequird = false`,
        /^secrets\[0\]\.requird: unknown key; did you mean "secrets\[0\]\.required"\?/,
      ],
      [
        'not base64',
        `[[secrets]]\nname = "A"\nciphertext = "not base64!"`,
        /^secrets\[0\]\.ciphertext: "not base64!" is not allowed; expected standard base64 of 1 to 6144 bytes/,
      ],
      [
        'too big',
        `[[secrets]]\nname = "A"\nciphertext = "${Buffer.alloc(7000).toString('base64')}"`,
        /^secrets\[0\]\.ciphertext: .*expected standard base64 of 1 to 6144 bytes/,
      ],
      [
        'both sources',
        `[[secrets]]\nname = "A"\nciphertext = "${BLOB}"\nfile = "/x"`,
        /^secrets\[0\]: both ciphertext and file are set; give one/,
      ],
      ['no source', `[[secrets]]\nname = "A"`, /^secrets\[0\]: neither ciphertext nor file is set; give one/],
      [
        'encoding',
        `[[secrets]]\nname = "A"\nfile = "/x"\nencoding = "hex"`,
        /^secrets\[0\]\.encoding: "hex" is not allowed; expected one of "utf8", "base64"/,
      ],
      [
        'key id',
        `[[secrets]]\nname = "A"\nfile = "/x"\nkey_id = "no spaces please"`,
        /^secrets\[0\]\.key_id: .*expected a KMS key id/,
      ],
      ['not a list', 'secrets = 5', /^secrets: 5 is not allowed; expected a list of tables, written \[\[secrets\]\]/],
      ['list of strings', 'secrets = ["A"]', /^secrets: an array is not allowed; expected a list of tables/],
      ['region', '[kms]\nregion = "Mars"', /^kms\.region: "Mars" is not allowed; expected an AWS region/],
      [
        'plain http off loopback',
        '[kms]\nendpoint = "http://kms.us-east-1.amazonaws.com"',
        /^kms\.endpoint: .*expected an https:\/\/ URL \(http:\/\/ only to 127/,
      ],
      [
        'via',
        '[kms]\nvia = "carrier pigeon"',
        /^kms\.via: "carrier pigeon" is not allowed; expected one of "egress_proxy", "direct"/,
      ],
    ];
    for (const [name, toml, expected] of cases) {
      it(name, () => assertProblem(problemsOf(toml), expected));
    }

    it('the second entry is secrets[1], and a repeated name points at the first', () => {
      const problems = problemsOf(
        `[[secrets]]\nname = "A"\nfile = "/a"\n\n[[secrets]]\nname = "B"\n\n[[secrets]]\nname = "A"\nfile = "/c"\n`,
      );
      assertProblem(problems, /^secrets\[1\]: neither ciphertext nor file is set/);
      assertProblem(problems, /^secrets\[2\]\.name: "A" is already the name of secrets\[0\]/);
    });

    it('at most 64 secrets', () => {
      const many = Array.from({ length: 65 }, (_, i) => `[[secrets]]\nname = "S${i}"\nfile = "/s${i}"\n`).join('\n');
      assertProblem(problemsOf(many), /^secrets: 65 entries; at most 64 are allowed/);
    });

    it('a bad secret_access_key is refused without quoting it', () => {
      const problems = problemsOf('[kms]\nsecret_access_key = "short secret"');
      assertProblem(problems, /^kms\.secret_access_key: the value \(not shown\) is not allowed/);
      assert.ok(problems.every((p) => !p.includes('short secret')));
    });

    it('under run, secrets through the egress proxy need egress enabled', () => {
      const toml = `[[secrets]]\nname = "A"\nciphertext = "${BLOB}"\n`;
      assertProblem(problemsOf(toml, 'run'), /^kms\.via: "egress_proxy" needs egress\.enabled = true/);
      assert.equal(parseConfig(`[egress]\nenabled = true\n${toml}`, 'run').secrets.length, 1);
      assert.equal(parseConfig(`[kms]\nvia = "direct"\n${toml}`, 'run').secrets.length, 1);
    });
  });
});
