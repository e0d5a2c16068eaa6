/**
 * The KMS proxy for the app, driven by the real AWS SDK (@aws-sdk/client-kms) pointed at it with
 * made-up credentials, against the fake KMS: the proxy re-signs with the runtime's credentials,
 * makes the enclave the Recipient, and hands back the plaintext as KMS would without one.
 */
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import {
  DecryptCommand,
  EncryptCommand,
  GenerateDataKeyCommand,
  GenerateRandomCommand,
  KMSClient,
} from '@aws-sdk/client-kms';
import { openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { KmsClient } from '../src/kms/kms-client.js';
import { startKmsProxy, type KmsProxy } from '../src/kms/kms-proxy.js';
import { silentLogger } from '../src/core/log.js';
import { startCredentialsServer } from '../src/host/credentials-server.js';
import { ImdsCredentials } from '../src/host/imds-credentials.js';
import { runCli } from './helpers/cli-run.js';
import { startFakeImds } from './helpers/fake-imds.js';
import { startFakeKmsForStateDir, type FakeKms } from './helpers/fake-kms.js';
import { writeDevConfig } from './helpers/dev-config.js';
import { freePort } from './helpers/net.js';

const dir = mkdtempSync(join(tmpdir(), 'kms-proxy-'));
const stateDir = join(dir, 'state');
const runtimeCredentials = { accessKeyId: 'AKIARUNTIME000000000', secretAccessKey: 'runtime-secret-key-000000000000' };

let kms: FakeKms;
let nsm: SimulatedNsm;
let proxy: KmsProxy;
let app: KMSClient;

before(async () => {
  kms = await startFakeKmsForStateDir(() => stateDir, runtimeCredentials);
  nsm = await openSimulatedNsm({ stateDir });
  const client = new KmsClient({
    region: kms.region,
    endpoint: kms.url,
    credentials: runtimeCredentials,
    maxAttempts: 1,
  });
  proxy = await startKmsProxy({
    listen: { transport: 'tcp', host: '127.0.0.1', port: 0 },
    kms: client,
    nsm,
    logger: silentLogger(),
  });
  // What an app in the enclave writes: the proxy as the endpoint, and credentials that prove nothing.
  app = new KMSClient({
    region: kms.region,
    endpoint: `http://127.0.0.1:${proxy.address.port}`,
    credentials: { accessKeyId: 'anything', secretAccessKey: 'anything' },
    maxAttempts: 1,
  });
});

after(async () => {
  app.destroy();
  await proxy.close();
  await nsm.close();
  await kms.close();
  rmSync(dir, { recursive: true, force: true });
});

describe('KMS proxy with the AWS SDK', () => {
  it('Decrypt: the app gets the plaintext; KMS saw a Recipient and the runtime signature', async () => {
    const before = kms.calls.length;
    const answer = await app.send(
      new DecryptCommand({ CiphertextBlob: kms.encrypt(Buffer.from('the database password')), KeyId: kms.alias }),
    );
    assert.equal(Buffer.from(answer.Plaintext!).toString('utf8'), 'the database password');
    assert.equal(answer.KeyId, kms.keyArn);
    assert.equal(answer.EncryptionAlgorithm, 'SYMMETRIC_DEFAULT');
    assert.deepEqual(kms.calls.slice(before), [{ target: 'Decrypt', recipient: true, status: 200 }]);
  });

  it('GenerateDataKey: a plaintext key and its ciphertext blob, which Decrypt turns back into the same key', async () => {
    const answer = await app.send(new GenerateDataKeyCommand({ KeyId: kms.keyArn, KeySpec: 'AES_256' }));
    assert.equal(answer.Plaintext!.byteLength, 32);
    const again = await app.send(new DecryptCommand({ CiphertextBlob: answer.CiphertextBlob! }));
    assert.deepEqual(Buffer.from(again.Plaintext!), Buffer.from(answer.Plaintext!));
    const sized = await app.send(new GenerateDataKeyCommand({ KeyId: kms.keyArn, NumberOfBytes: 48 }));
    assert.equal(sized.Plaintext!.byteLength, 48);
  });

  it('GenerateRandom: the asked number of bytes', async () => {
    const before = kms.calls.length;
    const answer = await app.send(new GenerateRandomCommand({ NumberOfBytes: 17 }));
    assert.equal(answer.Plaintext!.byteLength, 17);
    assert.deepEqual(kms.calls.slice(before), [{ target: 'GenerateRandom', recipient: true, status: 200 }]);
  });

  it("refuses other operations in KMS's error shape, without calling KMS", async () => {
    const before = kms.calls.length;
    await assert.rejects(
      app.send(new EncryptCommand({ KeyId: kms.keyArn, Plaintext: Buffer.from('x') })),
      (error: Error & { $metadata?: { httpStatusCode?: number } }) => {
        assert.equal(error.name, 'UnsupportedOperationException');
        assert.match(error.message, /Decrypt, GenerateDataKey and GenerateRandom, not Encrypt/);
        assert.equal(error.$metadata?.httpStatusCode, 400);
        return true;
      },
    );
    assert.equal(kms.calls.length, before);
  });

  it("passes KMS's own refusal through by name (the key policy decides)", async () => {
    kms.script.push({ status: 400, type: 'AccessDeniedException' });
    await assert.rejects(app.send(new DecryptCommand({ CiphertextBlob: kms.encrypt(Buffer.from('x')) })), {
      name: 'AccessDeniedException',
    });
    await assert.rejects(app.send(new DecryptCommand({ CiphertextBlob: Buffer.from('not a blob of this KMS') })), {
      name: 'InvalidCiphertextException',
    });
  });

  it('refuses a Recipient from the app, a bad body and a wrong method, each as KMS would', async () => {
    const url = `http://127.0.0.1:${proxy.address.port}/`;
    const post = (target: string, body: string, type = 'application/x-amz-json-1.1') =>
      fetch(url, { method: 'POST', headers: { 'x-amz-target': target, 'content-type': type }, body }).then(
        async (response) => ({
          status: response.status,
          body: (await response.json()) as { __type: string; message: string },
        }),
      );
    const withRecipient = await post(
      'TrentService.Decrypt',
      JSON.stringify({
        CiphertextBlob: kms.encrypt(Buffer.from('x')).toString('base64'),
        Recipient: { AttestationDocument: 'AAAA', KeyEncryptionAlgorithm: 'RSAES_OAEP_SHA_256' },
      }),
    );
    assert.equal(withRecipient.status, 400);
    assert.equal(withRecipient.body.__type, 'ValidationException');
    assert.match(withRecipient.body.message, /Recipient/);
    assert.equal((await post('TrentService.Decrypt', '{not json')).body.__type, 'SerializationException');
    assert.equal(
      (await post('TrentService.Decrypt', JSON.stringify({ CiphertextBlob: '!!' }))).body.__type,
      'ValidationException',
    );
    assert.equal((await post('TrentService.Decrypt', '{}', 'text/plain')).body.__type, 'ValidationException');
    assert.equal((await post('Nope', '{}')).body.__type, 'UnknownOperationException');
    const huge = await post('TrentService.Decrypt', JSON.stringify({ CiphertextBlob: 'A'.repeat(100_000) }));
    assert.equal(huge.status, 413);
    const get = await fetch(url);
    assert.equal(get.status, 404);
    assert.equal(((await get.json()) as { __type: string }).__type, 'UnknownOperationException');
  });
});

describe('the production flow under dev: app SDK -> KMS proxy -> credentials from the host (IMDSv2) -> KMS', () => {
  it("the app decrypts with its SDK and made-up credentials; the runtime signed with the parent's role and never handed it to the app", async () => {
    const flowDir = join(dir, 'flow');
    const flowState = join(flowDir, 'state');
    const role = {
      AccessKeyId: 'ASIAPARENTROLE000009',
      SecretAccessKey: 'parent-role-secret-flow-000000000',
      Token: 'parent-role-session-token-flow-000000',
      Expiration: new Date(Date.now() + 3600_000).toISOString(),
    };
    const imds = await startFakeImds(role);
    const roleKms = await startFakeKmsForStateDir(() => flowState, {
      accessKeyId: role.AccessKeyId,
      secretAccessKey: role.SecretAccessKey,
      sessionToken: role.Token,
    });
    const credentials = await startCredentialsServer({
      listen: { transport: 'tcp', host: '127.0.0.1', port: 0 },
      source: new ImdsCredentials({ endpoint: imds.url, timeoutMs: 2000 }),
      logger: silentLogger(),
    });
    const proxyPort = await freePort();
    mkdirSync(flowDir, { recursive: true });
    const config = join(flowDir, 'dev.toml');
    await writeDevConfig(config, {
      tables: [
        '[kms]',
        `region = "${roleKms.region}"`,
        `endpoint = "${roleKms.url}"`,
        'via = "direct"',
        'credentials = "host"',
        `credentials_address = "tcp:127.0.0.1:${(credentials.address as { port: number }).port}"`,
        'proxy = true',
        `proxy_listen = "tcp:127.0.0.1:${proxyPort}"`,
      ],
    });
    // The app: CommonJS so `require` resolves the SDK from the repository (the command's cwd).
    const app = [
      "const { KMSClient, DecryptCommand } = require('@aws-sdk/client-kms');",
      `const kms = new KMSClient({ region: '${roleKms.region}', endpoint: 'http://127.0.0.1:${proxyPort}', credentials: { accessKeyId: 'enclave', secretAccessKey: 'enclave' } });`,
      "kms.send(new DecryptCommand({ CiphertextBlob: Buffer.from(process.env.BLOB, 'base64') })).then((answer) => {",
      "  console.log('plaintext: ' + Buffer.from(answer.Plaintext).toString('utf8'));",
      "  console.log('role secret in my environment: ' + Object.values(process.env).some((value) => value.includes('parent-role')));",
      '}, (error) => { console.log(`failed: ${error.name}: ${error.message}`); process.exitCode = 1; });',
    ].join('\n');
    const blob = roleKms.encrypt(Buffer.from('the production secret')).toString('base64');
    const run = runCli(['dev', '--config', config, '--state-dir', flowState, '--', process.execPath, '-e', app], {
      env: { BLOB: blob },
    });
    try {
      const code = await run.exited;
      const output = run.output().toString('utf8');
      assert.equal(code, 0, output.slice(-2000));
      assert.match(output, /plaintext: the production secret/);
      assert.match(output, /role secret in my environment: false/);
      assert.ok(
        !output.includes(role.SecretAccessKey) && !output.includes(role.Token),
        'a role credential reached the output',
      );
      assert.deepEqual(
        roleKms.calls.map(({ target, recipient, status }) => [target, recipient, status]),
        [['Decrypt', true, 200]],
      );
      assert.equal(credentials.stats.served, 1);
    } finally {
      if (run.child.exitCode === null) run.child.kill('SIGKILL');
      await credentials.close();
      await roleKms.close();
      await imds.close();
    }
  });
});
