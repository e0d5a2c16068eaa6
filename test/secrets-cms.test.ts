import assert from 'node:assert/strict';
import {
  constants,
  createCipheriv,
  createDecipheriv,
  generateKeyPairSync,
  privateDecrypt,
  randomBytes,
  type KeyObject,
} from 'node:crypto';
import { inspect } from 'node:util';
import { before, describe, it } from 'node:test';
import { MAX_ENVELOPE_BYTES, openEnvelope, parseEnvelope } from '../src/secrets/cms-envelope.js';
import { RecipientKey } from '../src/secrets/recipient-key.js';
import { SecretError } from '../src/secrets/secret-error.js';
import { opensslCmsEncrypt } from './helpers/openssl-cms.js';
import { Prng } from './helpers/prng.js';

const DECRYPT_MESSAGE = "the ciphertext could not be decrypted with this enclave's key";

function rejects(fn: () => unknown, code: string): SecretError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof SecretError, `expected a SecretError, got ${error}`);
    assert.equal(error.code, code, error.message);
    return error;
  }
  assert.fail(`expected ${code}, but it opened`);
}

/** A test-held RSA key, so a test can reach inside the envelope (the runtime's RecipientKey never lets it out). */
function rsaKey(bits = 2048): { privateKey: KeyObject; spki: Buffer } {
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: bits });
  return { privateKey, spki: publicKey.export({ type: 'spki', format: 'der' }) };
}

describe('CMS EnvelopedData from openssl cms -encrypt (RSAES-OAEP-SHA256, AES-256-CBC)', () => {
  let key: RecipientKey;
  before(async () => {
    key = await RecipientKey.generate();
  });

  it('the recipient key is RSA 2048 whose SPKI fits an attestation document, and it never shows its private half', () => {
    assert.equal(key.publicKeySpki.byteLength, 294);
    assert.ok(key.publicKeySpki.byteLength <= 1024);
    assert.doesNotMatch(inspect(key, { showHidden: true, depth: 5 }), /PRIVATE|BEGIN/);
    assert.doesNotMatch(JSON.stringify(key), /PRIVATE|BEGIN|"d"/);
  });

  for (const [shape, options] of [
    ['DER, issuer and serial (openssl defaults)', {}],
    [
      'BER indefinite lengths, chunked content, subjectKeyIdentifier (the shape KMS sends)',
      { stream: true, keyid: true },
    ],
  ] as const) {
    it(`decrypts ${shape}`, async () => {
      for (const size of [1, 15, 16, 17, 4096]) {
        const plaintext = randomBytes(size);
        const envelope = await opensslCmsEncrypt(plaintext, key.publicKeySpki, options);
        assert.deepEqual(key.open(envelope), plaintext, `${size} bytes`);
      }
    });
  }

  it('a KMS-sized text secret comes back byte for byte', async () => {
    const secret = Buffer.from('correct horse battery staple ✓ — pässwörd', 'utf8');
    assert.deepEqual(
      key.open(await opensslCmsEncrypt(secret, key.publicKeySpki, { stream: true, keyid: true })),
      secret,
    );
  });

  it('an envelope for another key fails with ERR_SECRET_DECRYPT', async () => {
    const other = rsaKey();
    const envelope = await opensslCmsEncrypt(Buffer.from('for someone else'), other.spki, {
      stream: true,
      keyid: true,
    });
    const error = rejects(() => key.open(envelope), 'ERR_SECRET_DECRYPT');
    assert.equal(error.message, DECRYPT_MESSAGE);
  });

  it('a tampered wrapped key fails with ERR_SECRET_DECRYPT (OAEP)', async () => {
    const envelope = await opensslCmsEncrypt(Buffer.from('tamper with my key'), key.publicKeySpki, { keyid: true });
    const { encryptedKey } = parseEnvelope(envelope);
    const at = envelope.indexOf(Buffer.from(encryptedKey));
    assert.ok(at > 0);
    for (const offset of [0, 100, encryptedKey.byteLength - 1]) {
      const tampered = Buffer.from(envelope);
      tampered[at + offset]! ^= 0x01;
      assert.equal(rejects(() => key.open(tampered), 'ERR_SECRET_DECRYPT').message, DECRYPT_MESSAGE);
    }
  });

  it('bad CBC padding fails exactly like a bad wrapped key: same code, same message, no cause', async () => {
    const { privateKey, spki } = rsaKey();
    const plaintext = Buffer.from('sixteen byte msg and a bit more');
    const envelope = await opensslCmsEncrypt(plaintext, spki);
    const parts = parseEnvelope(envelope);
    // Re-encrypt the padded plaintext with its last byte (the pad length) set to 0, an invalid pad, under the same key and IV.
    const cek = privateDecrypt(
      { key: privateKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' },
      parts.encryptedKey,
    );
    const decipher = createDecipheriv('aes-256-cbc', cek, parts.iv).setAutoPadding(false);
    const padded = Buffer.concat([decipher.update(parts.encryptedContent), decipher.final()]);
    padded[padded.length - 1] = 0;
    const cipher = createCipheriv('aes-256-cbc', cek, parts.iv).setAutoPadding(false);
    const badContent = Buffer.concat([cipher.update(padded), cipher.final()]);
    const at = envelope.indexOf(Buffer.from(parts.encryptedContent));
    assert.ok(at > 0);
    const badPadding = Buffer.from(envelope);
    badContent.copy(badPadding, at);

    const badKey = Buffer.from(envelope);
    badKey[envelope.indexOf(Buffer.from(parts.encryptedKey)) + 7]! ^= 0x80;

    assert.deepEqual(openEnvelope(envelope, privateKey), plaintext);
    const padding = rejects(() => openEnvelope(badPadding, privateKey), 'ERR_SECRET_DECRYPT');
    const oaep = rejects(() => openEnvelope(badKey, privateKey), 'ERR_SECRET_DECRYPT');
    assert.equal(padding.message, oaep.message);
    assert.equal(padding.cause, undefined);
    assert.equal(oaep.cause, undefined);
    assert.equal(padding.constructor, oaep.constructor);
  });

  it('truncated envelopes fail with ERR_SECRET_CMS, DER and BER alike', async () => {
    for (const options of [{}, { stream: true, keyid: true }]) {
      const envelope = await opensslCmsEncrypt(randomBytes(100), key.publicKeySpki, options);
      for (const length of [0, 1, 2, 10, 60, envelope.length >> 1, envelope.length - 20, envelope.length - 1]) {
        const error = rejects(() => key.open(envelope.subarray(0, length)), 'ERR_SECRET_CMS');
        assert.match(error.message, /^CiphertextForRecipient is not an envelope this enclave accepts: /);
      }
    }
  });

  it('refuses what is not an RSAES-OAEP-SHA256 / AES-256-CBC envelope, naming what is wrong', async () => {
    const sha1 = await opensslCmsEncrypt(Buffer.from('x'), key.publicKeySpki, { oaepHash: 'sha1' });
    assert.match(rejects(() => key.open(sha1), 'ERR_SECRET_CMS').message, /OAEP|SHA-256/);
    const aes128 = await opensslCmsEncrypt(Buffer.from('x'), key.publicKeySpki, { cipher: 'aes128' });
    assert.match(rejects(() => key.open(aes128), 'ERR_SECRET_CMS').message, /content cipher .* not AES-256-CBC/);
  });

  it('fuzz: mutated and truncated KMS-shaped envelopes give a SecretError or the plaintext, nothing else', async () => {
    const plaintext = Buffer.from('fuzzed secret value');
    const envelope = await opensslCmsEncrypt(plaintext, key.publicKeySpki, { stream: true, keyid: true });
    const prng = new Prng(0x5ec2e75);
    const inputs: Buffer[] = [];
    for (let length = 0; length < envelope.length; length += 3) inputs.push(envelope.subarray(0, length));
    for (let i = 0; i < 400; i++) inputs.push(prng.mutate(Buffer.from(envelope)));
    for (const [i, input] of inputs.entries()) {
      try {
        key.open(input);
      } catch (error) {
        assert.ok(
          error instanceof SecretError && (error.code === 'ERR_SECRET_CMS' || error.code === 'ERR_SECRET_DECRYPT'),
          `input ${i}: ${error}`,
        );
      }
    }
  });

  it('refuses garbage, empty and oversized input before any crypto', () => {
    rejects(() => key.open(new Uint8Array(0)), 'ERR_SECRET_CMS');
    rejects(() => key.open(randomBytes(600)), 'ERR_SECRET_CMS');
    rejects(() => key.open(Buffer.from('MIAGCSqGSIb3DQEHA6CAMIACAQIxggFb', 'base64')), 'ERR_SECRET_CMS');
    const huge = rejects(() => key.open(new Uint8Array(MAX_ENVELOPE_BYTES + 1)), 'ERR_SECRET_CMS');
    assert.match(huge.message, /at most 65536/);
  });
});
