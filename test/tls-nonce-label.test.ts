import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  formatNonceServerName,
  parseNonceLabel,
  parseNonceServerName,
  SNI_NONCE_MAX_BYTES,
} from '../src/tls/nonce-label.js';

const bytes = (hex: string) => new Uint8Array(Buffer.from(hex, 'hex'));

describe('SNI nonce labels, hex (the default)', () => {
  it('decodes <hex>.attest.<base-host> into the nonce bytes and the base host', () => {
    const parsed = parseNonceServerName('00ff10ab.attest.example.com');
    assert.deepEqual(parsed, { kind: 'nonce', nonce: bytes('00ff10ab'), baseHost: 'example.com' });
    assert.deepEqual(parseNonceLabel('0a.attest.localhost'), bytes('0a'));
  });

  it('accepts the attest label in any case, as DNS does', () => {
    assert.deepEqual(parseNonceLabel('0a0b.ATTEST.localhost'), bytes('0a0b'));
  });

  it('treats names without the .attest. shape as base-certificate requests', () => {
    for (const name of [
      'localhost',
      'example.com',
      'attest.example.com',
      '0a.attest',
      '0a.attest.',
      '.attest.example.com',
      'a.b.attest.example.com',
      '',
      undefined,
      null,
    ]) {
      assert.deepEqual(parseNonceServerName(name), { kind: 'base' }, String(name));
      assert.equal(parseNonceLabel(name), undefined);
    }
  });

  it('refuses uppercase, odd-length and non-hex labels (they get the base certificate)', () => {
    for (const label of ['0A', 'abc', 'zz', '0x00', 'a-b0']) {
      const parsed = parseNonceServerName(`${label}.attest.localhost`);
      assert.equal(parsed.kind, 'invalid', label);
      assert.equal(parseNonceLabel(`${label}.attest.localhost`), undefined);
    }
  });

  it('accepts up to the NSM limit of 1024 bytes and no more', () => {
    const max = 'ab'.repeat(SNI_NONCE_MAX_BYTES);
    assert.equal(parseNonceLabel(`${max}.attest.h`)?.length, SNI_NONCE_MAX_BYTES);
    assert.equal(parseNonceServerName(`${max}ab.attest.h`).kind, 'invalid');
  });

  it('round-trips through formatNonceServerName', () => {
    const nonce = bytes('0123456789abcdef0123456789abcdef');
    const name = formatNonceServerName(nonce, 'enclave.example');
    assert.equal(name, '0123456789abcdef0123456789abcdef.attest.enclave.example');
    assert.deepEqual(parseNonceLabel(name), nonce);
  });
});

describe('SNI nonce labels, base64 (evervault clients)', () => {
  const nonce = new Uint8Array([0xfb, 0xff, 0x00, 0x01, 0x02]);

  it('accepts standard and URL-safe alphabets, with or without padding', () => {
    const std = Buffer.from(nonce).toString('base64'); // +/8AAQI=
    const url = Buffer.from(nonce).toString('base64url'); // -_8AAQI
    for (const label of [std, std.replace(/=+$/, ''), url, `${url}=`]) {
      assert.deepEqual(parseNonceLabel(`${label}.attest.cage.example`, 'base64'), nonce, label);
    }
  });

  it('refuses wrong padding, impossible lengths, stray bits and foreign characters', () => {
    for (const label of ['AAAAA', 'AQI==', 'AQ===', 'AR', 'A!B', 'A*B', '====']) {
      assert.equal(parseNonceServerName(`${label}.attest.h`, 'base64').kind, 'invalid', label);
    }
  });

  it('does not read hex labels as hex when base64 is configured', () => {
    assert.deepEqual(parseNonceLabel('abcd.attest.h', 'base64'), new Uint8Array(Buffer.from('abcd', 'base64')));
  });

  it('formats as unpadded base64url, which is a valid host label', () => {
    const name = formatNonceServerName(nonce, 'h', 'base64');
    assert.match(name, /^[A-Za-z0-9_-]+\.attest\.h$/);
    assert.deepEqual(parseNonceLabel(name, 'base64'), nonce);
  });

  it('refuses labels over 1024 decoded bytes', () => {
    const big = Buffer.alloc(SNI_NONCE_MAX_BYTES + 3, 7).toString('base64url');
    assert.equal(parseNonceServerName(`${big}.attest.h`, 'base64').kind, 'invalid');
    const max = Buffer.alloc(SNI_NONCE_MAX_BYTES, 7).toString('base64url');
    assert.equal(parseNonceLabel(`${max}.attest.h`, 'base64')?.length, SNI_NONCE_MAX_BYTES);
  });
});

describe('formatNonceServerName', () => {
  it('refuses empty and over-long nonces', () => {
    assert.throws(() => formatNonceServerName(new Uint8Array(0), 'h'), RangeError);
    assert.throws(() => formatNonceServerName(new Uint8Array(SNI_NONCE_MAX_BYTES + 1), 'h'), RangeError);
  });
});
