import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { defaultSimulatedPcr, openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { parseConfig } from '../src/config/load.js';
import { loadSecrets } from '../src/secrets/boot-secrets.js';
import { SecretError } from '../src/secrets/secret-error.js';
import { startFakeKms, type FakeKms } from './helpers/fake-kms.js';
import { captureLogs } from './helpers/log-capture.js';

const credentials = { accessKeyId: 'AKIAFAKEKMSBOOT00001', secretAccessKey: 'boot/secret/access/key/for/tests' };
const env = { AWS_ACCESS_KEY_ID: credentials.accessKeyId, AWS_SECRET_ACCESS_KEY: credentials.secretAccessKey };
const dir = mkdtempSync(join(tmpdir(), 'secrets-boot-'));
let nsm: SimulatedNsm;
let kms: FakeKms;

before(async () => {
  nsm = await openSimulatedNsm({ stateDir: join(dir, 'state') });
  kms = await startFakeKms({ root: () => nsm.rootPem, expectedPcrs: [{ 0: defaultSimulatedPcr(0) }], credentials });
});
after(async () => {
  await kms.close();
  rmSync(dir, { recursive: true, force: true });
});

function config(secrets: string, kmsExtra = '') {
  return parseConfig(
    `[kms]\nregion = "${kms.region}"\nendpoint = "${kms.url}"\nmax_attempts = 1\n${kmsExtra}\n${secrets}`,
    'dev',
  );
}

const secretBlock = (name: string, plaintext: Uint8Array, extra = '') =>
  `[[secrets]]\nname = "${name}"\nciphertext = "${kms.encrypt(plaintext).toString('base64')}"\n${extra}\n`;

async function loadError(promise: Promise<unknown>): Promise<SecretError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SecretError, `expected a SecretError, got ${error}`);
    return error;
  }
  assert.fail('the secrets loaded');
}

describe('loadSecrets: [[secrets]] through KMS with this enclave as Recipient', () => {
  it('decrypts every entry into NAME -> value: inline, from raw and base64 files, text and base64 encodings', async () => {
    const text = `pw-${randomBytes(12).toString('hex')}`;
    const binary = randomBytes(48);
    const rawFile = join(dir, 'raw.bin');
    const b64File = join(dir, 'b64.txt');
    writeFileSync(rawFile, kms.encrypt(Buffer.from('from a raw file')));
    writeFileSync(b64File, `${kms.encrypt(Buffer.from('from a base64 file')).toString('base64')}\n`);
    const logs = captureLogs('trace');
    const before = kms.calls.length;
    const values = await loadSecrets(
      config(
        secretBlock('TEXT_SECRET', Buffer.from(text), `key_id = "${kms.alias}"`) +
          secretBlock('BINARY_SECRET', binary, 'encoding = "base64"') +
          `[[secrets]]\nname = "RAW_FILE"\nfile = "${rawFile}"\n\n[[secrets]]\nname = "B64_FILE"\nfile = "${b64File}"\n`,
      ),
      { nsm, logger: logs.logger, env },
    );
    assert.deepEqual(
      { ...values },
      {
        TEXT_SECRET: text,
        BINARY_SECRET: binary.toString('base64'),
        RAW_FILE: 'from a raw file',
        B64_FILE: 'from a base64 file',
      },
    );
    assert.deepEqual(
      kms.calls.slice(before).map((call) => `${call.target} ${call.recipient} ${call.status}`),
      Array(4).fill('Decrypt true 200'),
    );
    assert.deepEqual(
      logs.lines.filter((line) => line.msg === 'secret loaded').map((line) => line.secret),
      ['TEXT_SECRET', 'BINARY_SECRET', 'RAW_FILE', 'B64_FILE'],
    );
    for (const value of [text, binary.toString('base64'), binary.toString('hex'), 'from a raw file'])
      assert.ok(!logs.text().includes(value), 'a secret reached the logs');
    assert.equal(process.env.TEXT_SECRET, undefined);
  });

  it('a document outside the key policy stops the load with ERR_SECRET_LOAD naming the secret and the KMS code', async () => {
    const foreign = await openSimulatedNsm({ stateDir: join(dir, 'state'), pcrs: { 0: Buffer.alloc(48, 0x42) } });
    const logs = captureLogs('trace');
    const error = await loadError(
      loadSecrets(config(secretBlock('DB_PASSWORD', Buffer.from('hunter2'))), {
        nsm: foreign,
        logger: logs.logger,
        env,
      }),
    );
    assert.equal(error.code, 'ERR_SECRET_LOAD');
    assert.equal(error.secret, 'DB_PASSWORD');
    assert.match(
      error.message,
      /^secret DB_PASSWORD could not be loaded: KMS Decrypt refused \(AccessDeniedException\)/,
    );
    const line = logs.lines.find((l) => l.msg === 'secret could not be loaded');
    assert.equal(line?.secret, 'DB_PASSWORD');
    assert.equal(line?.kmsCode, 'AccessDeniedException');
    assert.equal(line?.code, 'ERR_KMS_REQUEST');
    assert.ok(!logs.text().includes('hunter2'));
  });

  it('an optional secret that fails is left out with a warning; the rest load', async () => {
    const logs = captureLogs('trace');
    const values = await loadSecrets(
      config(
        `[[secrets]]\nname = "MISSING"\nfile = "${join(dir, 'no-such-file')}"\nrequired = false\n\n` +
          secretBlock('PRESENT', Buffer.from('here')),
      ),
      { nsm, logger: logs.logger, env },
    );
    assert.deepEqual({ ...values }, { PRESENT: 'here' });
    const warning = logs.lines.find((l) => l.msg === 'optional secret could not be loaded; its variable is left unset');
    assert.equal(warning?.secret, 'MISSING');
    assert.equal(warning?.code, 'ERR_SECRET_FILE');
  });

  it('a plaintext that cannot be an environment value is refused unless encoding = "base64"', async () => {
    const logs = captureLogs();
    for (const bad of [Buffer.from([0xff, 0xfe, 0x00]), Buffer.from('a\0b')]) {
      const error = await loadError(loadSecrets(config(secretBlock('BLOB', bad)), { nsm, logger: logs.logger, env }));
      assert.equal((error.cause as SecretError).code, 'ERR_SECRET_VALUE');
      assert.match(error.message, /encoding = "base64"/);
    }
    assert.deepEqual(
      {
        ...(await loadSecrets(config(secretBlock('BLOB', Buffer.from('a\0b'), 'encoding = "base64"')), {
          nsm,
          logger: logs.logger,
          env,
        })),
      },
      { BLOB: Buffer.from('a\0b').toString('base64') },
    );
  });

  it('the wrong key_id and missing credentials are clear errors', async () => {
    const logs = captureLogs();
    const wrongKey = await loadError(
      loadSecrets(config(secretBlock('K', Buffer.from('v'), 'key_id = "alias/other"')), {
        nsm,
        logger: logs.logger,
        env,
      }),
    );
    assert.match(wrongKey.message, /IncorrectKeyException/);
    await assert.rejects(
      loadSecrets(config(secretBlock('K', Buffer.from('v'))), { nsm, logger: logs.logger, env: {} }),
      { code: 'ERR_KMS_CONFIG', message: /no AWS credentials/ },
    );
  });

  it('no [[secrets]] means no KMS call at all', async () => {
    const before = kms.calls.length;
    assert.deepEqual({ ...(await loadSecrets(config(''), { nsm, logger: captureLogs().logger, env: {} })) }, {});
    assert.equal(kms.calls.length, before);
  });
});
