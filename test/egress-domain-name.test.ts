import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { DomainNameError, normaliseDomainName, tryNormaliseDomainName } from '../src/wire/domain-name.js';
import { Prng } from './helpers/prng.js';

function rejects(input: string, pattern: RegExp): void {
  assert.throws(
    () => normaliseDomainName(input),
    (error: unknown) =>
      error instanceof DomainNameError &&
      error.code === 'ERR_DOMAIN_NAME' &&
      error.value === input &&
      pattern.test(error.message),
    input,
  );
}

describe('normaliseDomainName', () => {
  it('case-folds, drops one trailing dot and keeps underscores', () => {
    assert.equal(normaliseDomainName('EXAMPLE.com.'), 'example.com');
    assert.equal(normaliseDomainName('Api.Example.COM'), 'api.example.com');
    assert.equal(normaliseDomainName('_acme-challenge.example.com'), '_acme-challenge.example.com');
    assert.equal(normaliseDomainName('localhost'), 'localhost');
  });

  it('turns IDN into punycode, so look-alikes stay distinct', () => {
    assert.equal(normaliseDomainName('bücher.example'), 'xn--bcher-kva.example');
    assert.equal(normaliseDomainName('XN--BCHER-KVA.example'), 'xn--bcher-kva.example');
    const cyrillic = normaliseDomainName('ex\u0430mple.com');
    assert.match(cyrillic, /^xn--/);
    assert.notEqual(cyrillic, 'example.com');
    // Full-width letters are a compatibility spelling of ASCII (UTS #46 maps them), as in browsers.
    assert.equal(normaliseDomainName('ＥＸＡＭＰＬＥ.com'), 'example.com');
  });

  it('rejects bad names, naming the value and the reason', () => {
    rejects('', /"": empty name/);
    rejects('.', /empty name/);
    rejects('example.com..', /empty label/);
    rejects('a..example.com', /empty label/);
    rejects('.example.com', /empty label/);
    rejects(`${'a'.repeat(64)}.com`, /label longer than 63/);
    rejects(`${'abcdefghi.'.repeat(25)}abcd`, /longer than 253/);
    rejects('x'.repeat(5000), /longer than 253/);
    rejects('exa mple.com', /invalid character " "/);
    rejects('a%2e.com', /invalid character "%"/);
    rejects('user@example.com', /invalid character "@"/);
    rejects('example.com:443', /invalid character ":"/);
    rejects('*.example.com', /invalid character "\*"/);
    rejects('-example.com', /must be letters, digits/);
    rejects('example-.com', /must be letters, digits/);
    rejects('xn--zz.com', /not a valid internationalised/);
    rejects('a\u200db.com', /not a valid internationalised/);
    rejects('127.1', /read as an IPv4 address/);
    rejects('1.2.3.4', /read as an IPv4 address/);
    rejects('0x7f.1', /read as an IPv4 address/);
    rejects('example.0x10', /read as an IPv4 address/);
    rejects('１２７.１', /read as an IPv4 address/);
  });

  it('has a non-throwing variant', () => {
    assert.equal(tryNormaliseDomainName('A.b.'), 'a.b');
    assert.equal(tryNormaliseDomainName('a..b'), undefined);
  });

  it('is idempotent and throws only DomainNameError on random strings', () => {
    const prng = new Prng(0x5eed_0002);
    const alphabet = [
      'a',
      'Z',
      '0',
      '-',
      '_',
      '.',
      '.',
      '*',
      '%',
      ' ',
      'é',
      'а',
      '。',
      '\u200d',
      'ß',
      'x',
      'n',
      '\u0000',
    ];
    for (let i = 0; i < 5000; i++) {
      let input = '';
      const length = prng.int(40);
      for (let j = 0; j < length; j++) input += prng.pick(alphabet);
      try {
        const out = normaliseDomainName(input);
        assert.equal(normaliseDomainName(out), out, input);
        assert.match(out, /^[a-z0-9_.-]+$/);
      } catch (error) {
        if (!(error instanceof DomainNameError)) throw error;
      }
    }
  });
});
