/**
 * The role-credentials JSON both ends read (host from IMDS, enclave from the host): all four
 * fields non-empty, a valid Expiration in the future; anything less is refused.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseAwsCredentials } from '../src/wire/aws-credentials.js';

const NOW = Date.parse('2026-01-01T00:00:00Z');
const good = {
  Code: 'Success',
  AccessKeyId: 'ASIAEXAMPLE000000000',
  SecretAccessKey: 'secret-access-key-000000000000',
  Token: 'session-token-000000000000',
  Expiration: '2026-01-01T06:00:00Z',
};

describe('AWS role credentials', () => {
  it('reads the four fields and the expiration', () => {
    assert.deepEqual(parseAwsCredentials(good, NOW), {
      credentials: {
        accessKeyId: good.AccessKeyId,
        secretAccessKey: good.SecretAccessKey,
        sessionToken: good.Token,
        expiration: new Date('2026-01-01T06:00:00Z'),
      },
    });
  });

  it('refuses a missing or empty field, the Token included', () => {
    for (const field of ['AccessKeyId', 'SecretAccessKey', 'Token', 'Expiration'] as const) {
      const missing: Record<string, unknown> = { ...good };
      delete missing[field];
      assert.deepEqual(parseAwsCredentials(missing, NOW), { problem: 'incomplete' }, `${field} missing`);
      assert.deepEqual(parseAwsCredentials({ ...good, [field]: '' }, NOW), { problem: 'incomplete' }, `${field} empty`);
      assert.deepEqual(
        parseAwsCredentials({ ...good, [field]: 42 }, NOW),
        { problem: 'incomplete' },
        `${field} number`,
      );
    }
  });

  it('refuses a non-object, an unparseable date and expired credentials', () => {
    for (const value of [null, 'text', 7, [good]]) {
      assert.deepEqual(parseAwsCredentials(value, NOW), { problem: 'incomplete' });
    }
    assert.deepEqual(parseAwsCredentials({ ...good, Expiration: 'soon' }, NOW), { problem: 'incomplete' });
    assert.deepEqual(parseAwsCredentials({ ...good, Expiration: '2026-01-01T00:00:00Z' }, NOW), { problem: 'expired' });
  });
});
