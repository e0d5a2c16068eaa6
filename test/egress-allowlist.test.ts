import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { AllowlistError, compileAllowlist, type Decision } from '../src/egress/allowlist.js';

const allowed = (rule: string, reason: Decision['reason']): Decision => ({ allowed: true, rule, reason });
const denied = (reason: Decision['reason'], rule?: string): Decision =>
  rule === undefined ? { allowed: false, reason } : { allowed: false, rule, reason };

describe('allowlist names', () => {
  const policy = compileAllowlist(['example.com', '*.example.com', 'api.partner.io:443']);

  it('matches exact names after normalisation', () => {
    assert.deepEqual(policy.allowsName('example.com'), allowed('example.com', 'exact'));
    assert.deepEqual(policy.allowsName('EXAMPLE.com.'), allowed('example.com', 'exact'));
    assert.deepEqual(policy.allowsName('ExAmPlE.CoM', 443), allowed('example.com', 'exact'));
  });

  it('does not match names that merely contain an allowed one', () => {
    assert.deepEqual(policy.allowsName('evil-example.com'), denied('no-rule'));
    assert.deepEqual(policy.allowsName('example.com.evil.com'), denied('no-rule'));
    assert.deepEqual(policy.allowsName('notexample.com'), denied('no-rule'));
    assert.deepEqual(policy.allowsName('example.co'), denied('no-rule'));
  });

  it('does not match unicode look-alikes', () => {
    assert.deepEqual(policy.allowsName('ex\u0430mple.com'), denied('no-rule'));
    assert.deepEqual(policy.allowsName('api.ex\u0430mple.com'), denied('no-rule'));
  });

  it('lets a wildcard match any depth below its base but not the base', () => {
    const onlyWildcard = compileAllowlist(['*.example.com']);
    assert.deepEqual(onlyWildcard.allowsName('example.com'), denied('no-rule'));
    assert.deepEqual(onlyWildcard.allowsName('a.example.com'), allowed('*.example.com', 'wildcard'));
    assert.deepEqual(onlyWildcard.allowsName('a.b.example.com'), allowed('*.example.com', 'wildcard'));
    assert.deepEqual(onlyWildcard.allowsName('A.B.EXAMPLE.COM.'), allowed('*.example.com', 'wildcard'));
    assert.deepEqual(onlyWildcard.allowsName('evil-example.com'), denied('no-rule'));
    assert.deepEqual(onlyWildcard.allowsName('a.example.com.evil.com'), denied('no-rule'));
  });

  it('enforces ports, and a port rule needs a port', () => {
    assert.deepEqual(policy.allowsName('api.partner.io', 443), allowed('api.partner.io:443', 'exact'));
    assert.deepEqual(policy.allowsName('api.partner.io', 80), denied('port', 'api.partner.io:443'));
    assert.deepEqual(policy.allowsName('api.partner.io'), denied('port', 'api.partner.io:443'));
    const wildcardPort = compileAllowlist(['*.example.com:443', 'example.com:8443']);
    assert.deepEqual(wildcardPort.allowsName('x.example.com', 443), allowed('*.example.com:443', 'wildcard'));
    assert.deepEqual(wildcardPort.allowsName('x.example.com', 80), denied('port', '*.example.com:443'));
    assert.deepEqual(wildcardPort.allowsName('example.com', 443), denied('port', 'example.com:8443'));
  });

  it('uses any rule that allows when several match', () => {
    const both = compileAllowlist(['example.com:443', 'example.com:80']);
    assert.deepEqual(both.allowsName('example.com', 80), allowed('example.com:80', 'exact'));
  });

  it('matches IDN entries against their punycode and unicode spellings', () => {
    const idn = compileAllowlist(['bücher.example']);
    assert.deepEqual(idn.allowsName('xn--bcher-kva.example'), allowed('bücher.example', 'exact'));
    assert.deepEqual(idn.allowsName('BÜCHER.example'), allowed('bücher.example', 'exact'));
  });

  it('denies invalid names and ports instead of guessing', () => {
    assert.deepEqual(policy.allowsName('a..example.com'), denied('invalid-name'));
    assert.deepEqual(policy.allowsName('example.com:443'), denied('invalid-name'));
    assert.deepEqual(policy.allowsName(''), denied('invalid-name'));
    assert.deepEqual(policy.allowsName('example.com', 65536), denied('invalid-port'));
    assert.deepEqual(policy.allowsName('example.com', -1), denied('invalid-port'));
    assert.deepEqual(compileAllowlist(['*']).allowsName('bad name'), denied('invalid-name'));
  });
});

describe('allowlist addresses', () => {
  const policy = compileAllowlist([
    '192.0.2.10',
    '10.0.0.0/8:443',
    '2001:db8::1',
    '[2001:db8:1::/48]:443',
    '[2001:db8:2::5]',
  ]);

  it('matches IPv4 literals and CIDRs', () => {
    assert.deepEqual(policy.allowsIp('192.0.2.10'), allowed('192.0.2.10', 'exact'));
    assert.deepEqual(policy.allowsIp('192.0.2.11'), denied('no-rule'));
    assert.deepEqual(policy.allowsIp('10.255.0.1', 443), allowed('10.0.0.0/8:443', 'cidr'));
    assert.deepEqual(policy.allowsIp('10.255.0.1', 80), denied('port', '10.0.0.0/8:443'));
    assert.deepEqual(policy.allowsIp('11.0.0.1', 443), denied('no-rule'));
  });

  it('matches IPv6 literals and CIDRs in any spelling', () => {
    assert.deepEqual(policy.allowsIp('2001:DB8:0:0:0:0:0:1'), allowed('2001:db8::1', 'exact'));
    assert.deepEqual(policy.allowsIp('[2001:db8::1]'), allowed('2001:db8::1', 'exact'));
    assert.deepEqual(policy.allowsIp('2001:db8:2::5', 22), allowed('[2001:db8:2::5]', 'exact'));
    assert.deepEqual(policy.allowsIp('2001:db8:1:ffff::1', 443), allowed('[2001:db8:1::/48]:443', 'cidr'));
    assert.deepEqual(policy.allowsIp('2001:db8:1:ffff::1', 80), denied('port', '[2001:db8:1::/48]:443'));
    assert.deepEqual(policy.allowsIp('2001:db8:3::1', 443), denied('no-rule'));
  });

  it('treats IPv4-mapped IPv6 as the IPv4 address, in queries and in entries', () => {
    assert.deepEqual(policy.allowsIp('::ffff:10.0.0.1', 443), allowed('10.0.0.0/8:443', 'cidr'));
    assert.deepEqual(policy.allowsIp('::ffff:a00:1', 443), allowed('10.0.0.0/8:443', 'cidr'));
    assert.deepEqual(policy.allowsIp('::ffff:192.0.2.10'), allowed('192.0.2.10', 'exact'));
    const mapped = compileAllowlist(['::ffff:192.0.2.1', '::ffff:172.16.0.0/108']);
    assert.deepEqual(mapped.allowsIp('192.0.2.1'), allowed('::ffff:192.0.2.1', 'exact'));
    assert.deepEqual(mapped.allowsIp('172.31.255.255'), allowed('::ffff:172.16.0.0/108', 'cidr'));
    assert.deepEqual(mapped.allowsIp('172.32.0.0'), denied('no-rule'));
  });

  it('never lets an IPv6 range match an IPv4 destination', () => {
    const v6 = compileAllowlist(['::/0']);
    assert.deepEqual(v6.allowsIp('2001:db8::1'), allowed('::/0', 'cidr'));
    assert.deepEqual(v6.allowsIp('10.0.0.1'), denied('no-rule'));
    assert.deepEqual(v6.allowsIp('::ffff:10.0.0.1'), denied('no-rule'));
  });

  it('decides IP literals given as names by the address rules only', () => {
    assert.deepEqual(policy.allowsName('192.0.2.10'), allowed('192.0.2.10', 'exact'));
    assert.deepEqual(policy.allowsName('[2001:db8::1]'), allowed('2001:db8::1', 'exact'));
    assert.deepEqual(compileAllowlist(['example.com']).allowsName('93.184.216.34'), denied('no-rule'));
    assert.deepEqual(compileAllowlist(['10.0.0.1']).allowsName('10.0.0.1.nip.io'), denied('no-rule'));
  });

  it('denies malformed addresses and zone ids', () => {
    assert.deepEqual(policy.allowsIp('192.0.2.256'), denied('invalid-ip'));
    assert.deepEqual(policy.allowsIp('example.com'), denied('invalid-ip'));
    assert.deepEqual(policy.allowsIp('fe80::1%eth0'), denied('invalid-ip'));
    assert.deepEqual(policy.allowsIp('010.0.0.1'), denied('invalid-ip'));
  });
});

describe('allowlist special lists', () => {
  it('"*" allows everything valid, "*:443" everything on 443', () => {
    const all = compileAllowlist(['*']);
    assert.deepEqual(all.allowsName('anything.example'), allowed('*', 'allow-all'));
    assert.deepEqual(all.allowsIp('::1', 1), allowed('*', 'allow-all'));
    const tls = compileAllowlist(['*:443']);
    assert.deepEqual(tls.allowsName('x.example', 443), allowed('*:443', 'allow-all'));
    assert.deepEqual(tls.allowsIp('10.0.0.1', 80), denied('port', '*:443'));
  });

  it('an empty list denies everything', () => {
    const none = compileAllowlist([]);
    assert.deepEqual(none.allowsName('example.com', 443), denied('no-rule'));
    assert.deepEqual(none.allowsIp('127.0.0.1', 443), denied('no-rule'));
    assert.deepEqual(none.entries, []);
  });
});

describe('compileAllowlist errors', () => {
  const cases: Array<[string, RegExp]> = [
    ['', /empty entry/],
    [' example.com', /whitespace/],
    ['exa mple.com', /whitespace/],
    ['example.com:0', /port "0" is not a number in 1\.\.65535/],
    ['example.com:65536', /port "65536"/],
    ['example.com:https', /port "https"/],
    ['example.com:', /port ""/],
    ['example.com:080', /port "080"/],
    ['ex*ample.com', /'\*' is only allowed/],
    ['*example.com', /'\*' is only allowed/],
    ['a.*.example.com', /'\*' is only allowed/],
    ['**.example.com', /'\*' is only allowed/],
    ['*.', /empty name/],
    ['example..com', /empty label/],
    ['-bad.example', /must be letters, digits/],
    ['1.2.3.256', /read as an IPv4 address/],
    ['10.0.0.0/33', /prefix "33" is not a number in 0\.\.32/],
    ['10.0.0.0/', /prefix ""/],
    ['10.0.0.0/8/8', /ADDRESS\/PREFIX/],
    ['example.com/8', /ADDRESS\/PREFIX/],
    ['2001:db8::/129', /prefix "129" is not a number in 0\.\.128/],
    ['::ffff:0:0/64', /needs a prefix of at least 96/],
    ['[10.0.0.1]:443', /"10\.0\.0\.1" is not a valid IPv6 address/],
    ['[10.0.0.0/8]', /valid IPv6 address/],
    ['[2001:db8::1', /without a closing/],
    ['[2001:db8::1]443', /only ':PORT' may follow/],
    ['[example.com]:443', /not a valid IPv6/],
    ['fe80::1%eth0', /not a valid IP|domain name/],
    ['2001:db8::1:443x', /not an IP address/],
    ['x'.repeat(301), /longer than 300/],
  ];
  for (const [entry, pattern] of cases) {
    it(`rejects ${JSON.stringify(entry.length > 40 ? `${entry.slice(0, 20)}...` : entry)}`, () => {
      assert.throws(
        () => compileAllowlist(['example.org', entry]),
        (error: unknown) =>
          error instanceof AllowlistError &&
          error.code === 'ERR_ALLOWLIST' &&
          error.entry === entry &&
          error.message.includes(JSON.stringify(entry)) &&
          pattern.test(error.message),
      );
    });
  }
});
