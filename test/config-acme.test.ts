import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { ConfigError } from '../src/core/errors.js';

function problemsOf(toml: string): string[] {
  try {
    parseConfig(toml, 'dev');
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError, got ${error}`);
    return [...error.problems];
  }
  assert.fail('the config was accepted');
}

describe('config: [tls.acme] and ingress.http_aware', () => {
  it('defaults: ACME off with Let’s Encrypt, TLS-ALPN-01, renewal at 2/3; HTTP-aware ingress off', () => {
    const config = parseConfig('', 'dev');
    assert.deepEqual(config.tls.acme, {
      enabled: false,
      directoryUrl: 'https://acme-v02.api.letsencrypt.org/directory',
      email: '',
      domains: [],
      caFile: '',
      challenge: 'tls-alpn-01',
      renewAtFraction: 2 / 3,
      retryMinMs: 60_000,
      retryMaxMs: 3_600_000,
    });
    assert.equal(config.ingress.httpAware, false);
  });

  it('takes domains lowercased without a trailing dot or duplicates', () => {
    const config = parseConfig(
      '[tls.acme]\nenabled = true\ndomains = ["App.Example.com.", "app.example.com", "b.example.com"]\nrenew_at_fraction = 0.5',
      'dev',
    );
    assert.deepEqual(config.tls.acme.domains, ['app.example.com', 'b.example.com']);
    assert.equal(config.tls.acme.renewAtFraction, 0.5);
  });

  const cases: Array<[string, string, RegExp]> = [
    [
      'enabled without domains',
      '[tls.acme]\nenabled = true',
      /^tls\.acme\.domains: empty; tls\.acme\.enabled needs at least one domain/,
    ],
    [
      'enabled without TLS',
      '[tls]\nenabled = false\n[tls.acme]\nenabled = true\ndomains = ["a.example"]',
      /^tls\.acme\.enabled needs tls\.enabled = true/,
    ],
    [
      'http_aware without TLS',
      '[tls]\nenabled = false\n[ingress]\nhttp_aware = true',
      /^ingress\.http_aware needs tls\.enabled = true/,
    ],
    [
      'a wildcard domain',
      '[tls.acme]\ndomains = ["*.example.com"]',
      /^tls\.acme\.domains: "\*\.example\.com" is not allowed; expected a host name/,
    ],
    ['an IP address', '[tls.acme]\ndomains = ["10.0.0.1"]', /^tls\.acme\.domains: "10\.0\.0\.1" is not allowed/],
    [
      'a nonce-shaped domain',
      '[tls.acme]\nenabled = true\ndomains = ["x.attest.example.com"]',
      /^tls\.acme\.domains: "x\.attest\.example\.com" has the shape <nonce>\.attest\.<host>/,
    ],
    [
      'plain http directory',
      '[tls.acme]\ndirectory_url = "http://ca.example/dir"',
      /^tls\.acme\.directory_url: .*expected an https:\/\/ URL/,
    ],
    [
      'bad email',
      '[tls.acme]\nemail = "nobody"',
      /^tls\.acme\.email: "nobody" is not allowed; expected an email address/,
    ],
    [
      'fraction out of range',
      '[tls.acme]\nrenew_at_fraction = 1.5',
      /^tls\.acme\.renew_at_fraction: 1\.5 is not allowed; expected a number from 0\.1 to 0\.95/,
    ],
    [
      'http-01',
      '[tls.acme]\nchallenge = "http-01"',
      /^tls\.acme\.challenge: "http-01" is not allowed; expected one of "tls-alpn-01"/,
    ],
    [
      'retry min above max',
      '[tls.acme]\nenabled = true\ndomains = ["a.example"]\nretry_min_ms = 5000\nretry_max_ms = 1000',
      /^tls\.acme\.retry_min_ms \(5000\) is larger than tls\.acme\.retry_max_ms \(1000\)/,
    ],
    [
      'unknown key',
      '[tls.acme]\ndomain = ["a.example"]',
      /^tls\.acme\.domain: unknown key; did you mean "tls\.acme\.domains"\?/,
    ],
  ];
  for (const [name, toml, expected] of cases) {
    it(`refuses ${name}, naming the key`, () => {
      const problems = problemsOf(toml);
      assert.ok(
        problems.some((p) => expected.test(p)),
        `no problem matched ${expected}:\n${problems.join('\n')}`,
      );
    });
  }
});
