/**
 * The parent's role credentials for the enclave's KMS calls: `host` takes them from IMDSv2 (a fake
 * on loopback checks the token dance), refreshes them before they expire and serves them over the
 * bridge (a unix socket stands in for vsock); the runtime signs KMS calls with them.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { parseAddress } from '../src/net/address.js';
import { validateConfig } from '../src/config/validate.js';
import { startCredentialsServer } from '../src/host/credentials-server.js';
import { startHostOperability } from '../src/host/host-operability.js';
import { CREDENTIALS_REFRESH_MARGIN_MS, ImdsCredentials } from '../src/host/imds-credentials.js';
import { hostCredentialsProvider } from '../src/kms/host-credentials.js';
import { KmsClient } from '../src/kms/kms-client.js';
import { kmsSettings } from '../src/kms/kms-settings.js';
import { RecipientKey } from '../src/secrets/recipient-key.js';
import { startFakeImds } from './helpers/fake-imds.js';
import { startFakeKmsForStateDir } from './helpers/fake-kms.js';
import { captureLogs } from './helpers/log-capture.js';

const dir = mkdtempSync(join(tmpdir(), 'credentials-host-'));
after(() => rmSync(dir, { recursive: true, force: true }));

const inAnHour = () => new Date(Date.now() + 3600_000).toISOString();
const roleCredentials = () => ({
  AccessKeyId: 'ASIAPARENTROLE000001',
  SecretAccessKey: 'parent-role-secret-0000000000000',
  Token: 'parent-role-session-token-000000000000',
  Expiration: inAnHour(),
});

describe('IMDSv2 credentials on the parent', () => {
  it('does the token dance: PUT a token with a TTL, then GETs that carry it; the fake refuses a GET without it', async () => {
    const imds = await startFakeImds(roleCredentials());
    try {
      const source = new ImdsCredentials({ endpoint: imds.url, timeoutMs: 2000 });
      const credentials = await source.get();
      assert.equal(credentials.accessKeyId, 'ASIAPARENTROLE000001');
      assert.equal(credentials.sessionToken, 'parent-role-session-token-000000000000');
      assert.deepEqual(
        imds.requests.map(({ method, path, status }) => `${method} ${path} ${status}`),
        [
          'PUT /latest/api/token 200',
          'GET /latest/meta-data/iam/security-credentials/ 200',
          `GET /latest/meta-data/iam/security-credentials/${imds.role} 200`,
        ],
      );
      // The fake is strict: an IMDSv1 GET (no token) is refused, so the success above needed the token.
      const v1 = await new Promise<number>((resolve, reject) =>
        http
          .get(`${imds.url}/latest/meta-data/iam/security-credentials/`, (response) =>
            resolve(response.statusCode ?? 0),
          )
          .on('error', reject),
      );
      assert.equal(v1, 401);
    } finally {
      await imds.close();
    }
  });

  it('keeps credentials while they are fresh and fetches new ones before they expire', async () => {
    const imds = await startFakeImds(roleCredentials());
    let now = Date.now();
    try {
      const source = new ImdsCredentials({ endpoint: imds.url, timeoutMs: 2000, now: () => now });
      const first = await source.get();
      const requests = imds.requests.length;
      assert.equal(await source.get(), first);
      assert.equal(imds.requests.length, requests, 'fresh credentials are not fetched again');
      imds.credentials = { ...roleCredentials(), AccessKeyId: 'ASIAPARENTROLE000002' };
      // Within the margin of expiry (but not yet expired): fetched again, with the same session token.
      now = first.expiration.getTime() - CREDENTIALS_REFRESH_MARGIN_MS + 1000;
      const second = await source.get();
      assert.equal(second.accessKeyId, 'ASIAPARENTROLE000002');
      assert.deepEqual(
        imds.requests.slice(requests).map(({ method }) => method),
        ['GET', 'GET'],
      );
    } finally {
      await imds.close();
    }
  });

  it('says what is wrong when the instance has no role', async () => {
    const imds = await startFakeImds(roleCredentials(), '');
    try {
      await assert.rejects(new ImdsCredentials({ endpoint: imds.url, timeoutMs: 2000 }).get(), {
        code: 'ERR_IMDS',
        message: /no IAM role/,
      });
    } finally {
      await imds.close();
    }
  });
});

describe('credentials from the host to the runtime', () => {
  it('serves them over the bridge; the runtime caches them and signs KMS calls with them; no log line carries them', async () => {
    const stateDir = join(dir, 'state');
    const role = roleCredentials();
    const imds = await startFakeImds(role);
    const kms = await startFakeKmsForStateDir(() => stateDir, {
      accessKeyId: role.AccessKeyId,
      secretAccessKey: role.SecretAccessKey,
      sessionToken: role.Token,
    });
    const hostLogs = captureLogs('trace');
    const runtimeLogs = captureLogs('trace');
    const listen = join(dir, 'credentials.sock');
    const host = validateConfig(
      {
        host: { log_listen: 'off', credentials: 'imds', credentials_listen: `unix:${listen}`, imds_endpoint: imds.url },
      },
      'host',
    ).host;
    const started = await startHostOperability(host, hostLogs.logger);
    const nsm = await openSimulatedNsm({ stateDir });
    try {
      assert.equal(started.describe().credentials, `unix:${listen}`);
      const kmsConfig = validateConfig(
        {
          kms: {
            region: kms.region,
            endpoint: kms.url,
            credentials: 'host',
            credentials_address: `unix:${listen}`,
            via: 'direct',
          },
        },
        'run',
      ).kms;
      // No AWS_* in this environment: the credentials can only have come from the host.
      const client = new KmsClient({ ...kmsSettings(kmsConfig, {}), logger: runtimeLogs.logger });
      const key = await RecipientKey.generate();
      for (const secret of ['first secret', 'second secret']) {
        const answer = await client.decrypt({
          ciphertextBlob: kms.encrypt(Buffer.from(secret)),
          recipient: { attestationDocument: await key.attest(nsm) },
        });
        assert.equal(key.open(answer.ciphertextForRecipient!).toString('utf8'), secret);
      }
      assert.equal(started.credentials!.stats.served, 1, 'the runtime cached the credentials for the second call');
      for (const logs of [hostLogs.text(), runtimeLogs.text()]) {
        for (const secret of [role.SecretAccessKey, role.Token])
          assert.ok(!logs.includes(secret), 'a credential reached a log line');
      }
      assert.ok(!Object.values(process.env).includes(role.SecretAccessKey));
    } finally {
      await started.close(0);
      await nsm.close();
      await kms.close();
      await imds.close();
    }
  });

  it('a host that cannot get credentials says why; the runtime gets a typed error', async () => {
    const listen = join(dir, 'broken.sock');
    const server = await startCredentialsServer({
      listen: parseAddress(`unix:${listen}`),
      source: { get: () => Promise.reject(new Error('IMDS at 127.0.0.1:1 could not be reached: ECONNREFUSED')) },
      logger: captureLogs().logger,
    });
    try {
      await assert.rejects(hostCredentialsProvider(parseAddress(`unix:${listen}`), 1000)(), {
        code: 'ERR_KMS_CREDENTIALS',
        message: /ECONNREFUSED/,
      });
      await assert.rejects(hostCredentialsProvider(parseAddress(`unix:${join(dir, 'nobody.sock')}`), 1000)(), {
        code: 'ERR_KMS_CREDENTIALS',
        message: /could not be reached/,
      });
    } finally {
      await server.close();
    }
  });
});
