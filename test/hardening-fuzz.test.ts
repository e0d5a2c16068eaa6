import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { AttestationError } from '../src/verify/attestation-error.js';
import { extractAttestationFromCertificate } from '../src/verify/certificate-binding.js';
import { decodeAttestation, verifyAttestation } from '../src/verify/verifier.js';
import { parseConfig } from '../src/config/load.js';
import { ConfigError } from '../src/core/errors.js';
import { parseNonceServerName } from '../src/tls/nonce-label.js';
import { Prng } from './helpers/prng.js';
import { NITRO_FIXTURES, REPO_ROOT } from './helpers/paths.js';

/**
 * Random, truncated and mutated input for the parsers that face untrusted bytes and are not
 * fuzzed beside their own unit tests. Each must answer with its typed error or a result:
 * never another exception, never a hang. Seeds are fixed, so a failure names its case.
 */
const CASES = 3000;

function expectOnly<E extends Error>(
  kind: new (...args: never[]) => E,
  run: () => unknown,
  describeCase: () => string,
): void {
  try {
    run();
  } catch (error) {
    if (!(error instanceof kind))
      assert.fail(`${describeCase()}: threw ${(error as Error)?.constructor?.name}: ${(error as Error)?.message}`);
  }
}

describe('fuzz: parsers of untrusted input', () => {
  it('enclave.toml: mutated example files give a ConfigError or a config, nothing else', () => {
    const example = Buffer.from(readFileSync(join(REPO_ROOT, 'enclave.toml.example'), 'utf8'));
    const prng = new Prng(0x70_6d_6c);
    for (let i = 0; i < CASES; i++) {
      const input = prng.mutate(example).toString('latin1');
      expectOnly(
        ConfigError,
        () => parseConfig(input, 'dev'),
        () => `case ${i}`,
      );
    }
  });

  it('enclave.toml: random bytes give a ConfigError', () => {
    const prng = new Prng(7);
    for (let i = 0; i < CASES; i++) {
      const input = prng.bytes(prng.int(300)).toString('latin1');
      expectOnly(
        ConfigError,
        () => parseConfig(input, 'run'),
        () => `case ${i}`,
      );
    }
  });

  it('COSE_Sign1 / CBOR documents: mutated real documents give an AttestationError', () => {
    const document = Buffer.from(
      readFileSync(join(NITRO_FIXTURES, 'evervault-ga-valid-attestation-doc.b64'), 'utf8').trim(),
      'base64',
    );
    const at = new Date(1695050165 * 1000);
    // The unmutated document verifies, so a mutation that is rejected is rejected for what changed.
    verifyAttestation(document, { at, allowDebug: true });
    const prng = new Prng(0xc0_5e);
    let rejected = 0;
    for (let i = 0; i < CASES; i++) {
      const input = prng.mutate(document);
      try {
        verifyAttestation(input, { at, allowDebug: true });
      } catch (error) {
        if (!(error instanceof AttestationError))
          assert.fail(`case ${i}: threw ${(error as Error).constructor.name}: ${(error as Error).message}`);
        rejected++;
      }
    }
    assert.ok(rejected > CASES * 0.9, `only ${rejected} of ${CASES} mutated documents were rejected`);
  });

  it('COSE_Sign1 / CBOR documents: truncation at every length and random bytes give an AttestationError', () => {
    const document = Buffer.from(
      readFileSync(join(NITRO_FIXTURES, 'evervault-ga-valid-attestation-doc.b64'), 'utf8').trim(),
      'base64',
    );
    for (let length = 0; length < document.length; length++) {
      assert.throws(
        () => decodeAttestation(document.subarray(0, length)),
        AttestationError,
        `truncated to ${length} bytes`,
      );
    }
    const prng = new Prng(99);
    for (let i = 0; i < CASES; i++) {
      const input = prng.bytes(prng.int(512));
      assert.throws(() => verifyAttestation(input), AttestationError, `random case ${i}`);
    }
  });

  it('SNI nonce labels: random names never throw', () => {
    const prng = new Prng(0x5e1);
    const alphabet = 'abcdef0123456789ABCDEF.-_=+/xyz\u0000\u00e9';
    for (let i = 0; i < CASES; i++) {
      const name = Array.from({ length: prng.int(200) }, () => prng.pick([...alphabet])).join('');
      for (const encoding of ['hex', 'base64'] as const) {
        const parsed = parseNonceServerName(`${name}.attest.localhost`, encoding);
        assert.ok(['base', 'nonce', 'invalid'].includes(parsed.kind), `case ${i}`);
        if (parsed.kind === 'nonce') assert.ok(parsed.nonce.length > 0 && parsed.nonce.length <= 1024);
      }
    }
  });

  it('certificate SAN extraction: mutated certificates give an AttestationError or the document', () => {
    const pem = readFileSync(
      join(NITRO_FIXTURES, 'evervault-beta-non-debug-cert-containing-attestation-document-18-1-23.der.crt'),
    );
    const prng = new Prng(0x5a4);
    for (let i = 0; i < 500; i++) {
      const input = prng.mutate(pem);
      expectOnly(
        AttestationError,
        () => extractAttestationFromCertificate(input),
        () => `case ${i}`,
      );
    }
  });
});
