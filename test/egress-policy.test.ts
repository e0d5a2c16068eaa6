import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { compileAllowlist } from '../src/egress/allowlist.js';
import { decideConnection, decideDnsName, type ConnectionFacts } from '../src/egress/egress-policy.js';

const allowlist = compileAllowlist([
  'allowed.test',
  '*.cdn.test',
  'tls-only.test:443',
  '198.51.100.0/24',
  '[2001:db8::/32]:443',
]);
const decide = (facts: Partial<ConnectionFacts>) =>
  decideConnection(allowlist, { ip: '203.0.113.1', port: 443, resolvedNames: [], ...facts });

describe('egress policy: one connection', () => {
  it('no SNI/Host (server-first or opaque): the IP must be resolved for an allowed name or be an allowed literal', () => {
    assert.deepEqual(decide({ resolvedNames: ['allowed.test'] }), {
      allowed: true,
      reason: 'resolved-name',
      name: 'allowed.test',
      rule: 'allowed.test',
    });
    assert.deepEqual(decide({ ip: '198.51.100.9' }), {
      allowed: true,
      reason: 'allowed-ip',
      name: '',
      rule: '198.51.100.0/24',
    });
    assert.deepEqual(decide({}), { allowed: false, reason: 'not-resolved', name: '' });
    // Resolved names count only when one is allowed on this port.
    assert.deepEqual(decide({ resolvedNames: ['tls-only.test'], port: 25 }), {
      allowed: false,
      reason: 'name-denied',
      name: 'tls-only.test',
      rule: 'tls-only.test:443',
    });
    assert.deepEqual(decide({ resolvedNames: ['tls-only.test'], port: 443 }).allowed, true);
    // A resolved name that is no longer allowed (config reloaded) does not keep the IP open.
    assert.deepEqual(decide({ resolvedNames: ['gone.test'] }), {
      allowed: false,
      reason: 'name-denied',
      name: 'gone.test',
    });
    // One allowed name among several is enough.
    assert.equal(decide({ resolvedNames: ['gone.test', 'a.cdn.test'] }).name, 'a.cdn.test');
  });

  it('SNI/Host agreeing with a resolved allowed name: allowed (case and trailing dot do not matter)', () => {
    assert.deepEqual(decide({ resolvedNames: ['allowed.test'], hostname: 'Allowed.TEST.' }), {
      allowed: true,
      reason: 'hostname',
      name: 'allowed.test',
      rule: 'allowed.test',
    });
    assert.deepEqual(decide({ resolvedNames: ['x.cdn.test', 'y.cdn.test'], hostname: 'y.cdn.test' }), {
      allowed: true,
      reason: 'hostname',
      name: 'y.cdn.test',
      rule: '*.cdn.test',
    });
  });

  it('a denied SNI/Host is refused, whatever the IP', () => {
    assert.deepEqual(decide({ resolvedNames: ['allowed.test'], hostname: 'denied.test' }), {
      allowed: false,
      reason: 'hostname-denied',
      name: 'denied.test',
    });
    assert.deepEqual(
      decide({ ip: '198.51.100.9', hostname: 'denied.test' }),
      { allowed: false, reason: 'hostname-denied', name: 'denied.test' },
      'an allowed literal does not let a denied name through',
    );
    assert.deepEqual(decide({ resolvedNames: ['tls-only.test'], hostname: 'tls-only.test', port: 80 }), {
      allowed: false,
      reason: 'hostname-denied',
      name: 'tls-only.test',
      rule: 'tls-only.test:443',
    });
  });

  it('an allowed SNI/Host disagreeing with the name the IP was resolved for is refused', () => {
    // The app resolved a.cdn.test and now claims b.cdn.test on the same shared address.
    assert.deepEqual(decide({ resolvedNames: ['a.cdn.test'], hostname: 'b.cdn.test' }), {
      allowed: false,
      reason: 'hostname-mismatch',
      name: 'b.cdn.test',
    });
    assert.deepEqual(decide({ resolvedNames: ['allowed.test'], hostname: 'a.cdn.test' }), {
      allowed: false,
      reason: 'hostname-mismatch',
      name: 'a.cdn.test',
    });
  });

  it('an allowed SNI/Host on an IP never resolved through us: refused, unless the IP is an allowed literal', () => {
    assert.deepEqual(decide({ hostname: 'allowed.test' }), {
      allowed: false,
      reason: 'not-resolved',
      name: 'allowed.test',
    });
    assert.deepEqual(decide({ ip: '198.51.100.9', hostname: 'allowed.test' }), {
      allowed: true,
      reason: 'allowed-ip',
      name: 'allowed.test',
      rule: '198.51.100.0/24',
    });
    assert.deepEqual(
      decide({ ip: '198.51.100.9', resolvedNames: ['a.cdn.test'], hostname: 'allowed.test' }).allowed,
      true,
      'the address rule alone allows the IP',
    );
  });

  it('an unusable SNI/Host is refused', () => {
    assert.deepEqual(decide({ resolvedNames: ['allowed.test'], hostname: 'bad_name!' }), {
      allowed: false,
      reason: 'invalid-hostname',
      name: '',
    });
    assert.deepEqual(decide({ resolvedNames: ['allowed.test'], hostname: 'allowed.test\\000' }), {
      allowed: false,
      reason: 'invalid-hostname',
      name: '',
    });
  });

  it('an IP literal as Host must be the dialled IP, and then the IP decides', () => {
    assert.equal(decide({ ip: '198.51.100.9', hostname: '198.51.100.9' }).allowed, true);
    assert.deepEqual(decide({ ip: '198.51.100.9', hostname: '198.51.100.10' }), {
      allowed: false,
      reason: 'hostname-mismatch',
      name: '',
    });
    assert.equal(decide({ ip: '2001:db8::5', hostname: '[2001:DB8::5]' }).allowed, true);
    assert.equal(
      decide({ ip: '2001:db8::5', hostname: '2001:db8::5', port: 80 }).allowed,
      false,
      'the IPv6 rule is for port 443 only',
    );
    assert.deepEqual(decide({ ip: '203.0.113.1', hostname: '203.0.113.1' }), {
      allowed: false,
      reason: 'not-resolved',
      name: '',
    });
  });

  it('IPv4-mapped IPv6 destinations are judged as IPv4', () => {
    assert.equal(decide({ ip: '::ffff:198.51.100.9' }).allowed, true);
  });
});

describe('egress policy: DNS questions', () => {
  it('allows a name allowed on any port: DNS carries none', () => {
    assert.deepEqual(decideDnsName(allowlist, 'tls-only.test'), {
      allowed: true,
      rule: 'tls-only.test:443',
      reason: 'port',
    });
    assert.deepEqual(decideDnsName(allowlist, 'ALLOWED.test.'), {
      allowed: true,
      rule: 'allowed.test',
      reason: 'exact',
    });
    assert.deepEqual(decideDnsName(allowlist, 'x.y.cdn.test'), {
      allowed: true,
      rule: '*.cdn.test',
      reason: 'wildcard',
    });
  });

  it('refuses other names, the bare wildcard apex and odd labels', () => {
    assert.deepEqual(decideDnsName(allowlist, 'denied.test'), { allowed: false, reason: 'no-rule' });
    assert.equal(decideDnsName(allowlist, 'cdn.test').allowed, false);
    assert.equal(decideDnsName(allowlist, 'a\\.b.cdn.test').allowed, false);
    assert.equal(decideDnsName(allowlist, '.').allowed, false);
  });
});
