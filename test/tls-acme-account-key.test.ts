import assert from 'node:assert/strict';
import { createPrivateKey } from 'node:crypto';
import { chmod, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { ACME_ACCOUNT_KEY_FILE, loadAcmeAccountKey } from '../src/tls/acme-account-key.js';
import { captureLogs } from './helpers/log-capture.js';

describe('ACME account key', () => {
  const dirs: string[] = [];
  const freshDir = async () => {
    const dir = await mkdtemp(join(tmpdir(), 'acme-account-'));
    dirs.push(dir);
    return dir;
  };
  after(async () => {
    for (const dir of dirs) await rm(dir, { recursive: true, force: true });
  });

  it('is made once as an ECDSA P-256 key in a 0600 file, then reused, without ever being logged', async () => {
    const dir = await freshDir();
    const logs = captureLogs('debug');
    const first = await loadAcmeAccountKey(dir, logs.logger);
    const key = createPrivateKey(first);
    assert.equal(key.asymmetricKeyType, 'ec');
    assert.equal(key.asymmetricKeyDetails?.namedCurve, 'prime256v1');
    assert.equal((await stat(join(dir, ACME_ACCOUNT_KEY_FILE))).mode & 0o777, 0o600);
    assert.equal(await loadAcmeAccountKey(dir, logs.logger), first);
    const body = first
      .split('\n')
      .filter((line) => line && !line.startsWith('-----'))
      .join('');
    assert.ok(!logs.text().includes(body.slice(0, 40)), 'no log line carries the key');
  });

  it('concurrent first uses agree on one key', async () => {
    const dir = await freshDir();
    const keys = await Promise.all(Array.from({ length: 8 }, () => loadAcmeAccountKey(dir, captureLogs().logger)));
    assert.equal(new Set(keys).size, 1);
  });

  it('tightens a key file readable by others, and refuses one that is not a key', async () => {
    const dir = await freshDir();
    const logs = captureLogs('info');
    await loadAcmeAccountKey(dir, logs.logger);
    await chmod(join(dir, ACME_ACCOUNT_KEY_FILE), 0o644);
    await loadAcmeAccountKey(dir, logs.logger);
    assert.equal((await stat(join(dir, ACME_ACCOUNT_KEY_FILE))).mode & 0o777, 0o600);
    assert.ok(logs.lines.some((line) => line.msg === 'ACME account key was readable by others; made it 0600'));

    const bad = await freshDir();
    await writeFile(join(bad, ACME_ACCOUNT_KEY_FILE), 'not a key', { mode: 0o600 });
    await assert.rejects(
      loadAcmeAccountKey(bad, logs.logger),
      (error: { code?: string }) => error.code === 'ERR_TLS_ACME_ACCOUNT',
    );
  });
});
