import assert from 'node:assert/strict';
import { createHash, generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { startAttestationApi, type AttestationApi } from '../src/attestation/attestation-api.js';
import { reservedUserDataRule } from '../src/attestation/reserved-binding.js';
import { openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { verifyAttestation } from '../src/verify/verifier.js';
import { provisioningUserData } from '../src/wire/provisioner-protocol.js';
import { captureLogs } from './helpers/log-capture.js';

const scratch = mkdtempSync(join(tmpdir(), 'reserved-binding-test-'));
const der = (key: { export(options: { type: 'spki'; format: 'der' }): Buffer }) =>
  key.export({ type: 'spki', format: 'der' });

/** DER SPKIs of every key type Node makes, and one of an algorithm nobody knows. */
const SPKIS: Record<string, Buffer> = {
  'EC P-256': der(generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey),
  'EC P-384': der(generateKeyPairSync('ec', { namedCurve: 'P-384' }).publicKey),
  'RSA 1024': der(generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey),
  Ed25519: der(generateKeyPairSync('ed25519').publicKey),
  X25519: der(generateKeyPairSync('x25519').publicKey),
  // SEQUENCE { SEQUENCE { OID 1.2.3.4 }, BIT STRING 00 01 02 }
  'unknown algorithm': Buffer.from('300c300506032a03040303000102', 'hex'),
};

/** The same SPKI with its lengths in long form (BER, not DER): a lenient parser reads the same key. */
function longFormLengths(spki: Buffer): Buffer {
  const outer = spki.subarray(2);
  assert.ok(spki[1]! < 0x80, 'a short-form SPKI for this helper');
  return Buffer.concat([Buffer.of(0x30, 0x88, 0, 0, 0, 0, 0, 0, 0, outer.length), outer]);
}

/** The same SPKI with the outer SEQUENCE of indefinite length (BER). */
function indefinite(spki: Buffer): Buffer {
  const header = spki[1]! < 0x80 ? 2 : 2 + (spki[1]! & 0x7f);
  return Buffer.concat([Buffer.of(0x30, 0x80), spki.subarray(header), Buffer.of(0, 0)]);
}

describe('reserved user_data: which bytes the runtime keeps for its own bindings', () => {
  it('refuses an SPKI of every key type, in DER and BER forms, with or without trailing bytes', () => {
    for (const [name, spki] of Object.entries(SPKIS)) {
      assert.equal(reservedUserDataRule(spki), 'spki', name);
      assert.equal(
        reservedUserDataRule(Buffer.concat([spki, Buffer.from('trailing garbage')])),
        'spki',
        `${name} + trailing bytes`,
      );
      assert.equal(reservedUserDataRule(indefinite(spki)), 'spki', `${name} indefinite length`);
    }
    assert.equal(reservedUserDataRule(longFormLengths(SPKIS['EC P-256']!)), 'spki');
    assert.equal(reservedUserDataRule(provisioningUserData(SPKIS['EC P-256']!)), 'prefix');
  });

  it('refuses the prefix in any ASCII case, and decoded from JSON unicode escapes alike', () => {
    for (const text of [
      'enclave-runtime/',
      'enclave-runtime/provisioner/v1:x',
      'ENCLAVE-RUNTIME/anything',
      'Enclave-Runtime/',
    ]) {
      assert.equal(reservedUserDataRule(Buffer.from(text)), 'prefix', text);
    }
    assert.equal(reservedUserDataRule(Buffer.from(JSON.parse('"\\u0065nclave-runtime\\u002fx"') as string)), 'prefix');
  });

  it('serves ordinary bytes: hashes, text, an SPKI wrapped in something else, near misses of the prefix', () => {
    const spki = SPKIS['EC P-256']!;
    const ordinary = [
      createHash('sha256').update(spki).digest(),
      Buffer.from('hello, world'),
      Buffer.from('enclave-runtime'),
      Buffer.from(' enclave-runtime/'),
      Buffer.from('enclave-runtime\\'),
      Buffer.from('ｅnclave-runtime/'),
      Buffer.concat([Buffer.of(0x04, spki.length), spki]),
      Buffer.concat([Buffer.of(0x00), spki]),
      spki.subarray(0, spki.length - 1),
      Buffer.from('3000', 'hex'),
      Buffer.from('30', 'hex'),
      Buffer.alloc(0),
      Buffer.from(spki.toString('base64')),
      // SEQUENCE { SEQUENCE { OID }, OCTET STRING }: not a BIT STRING
      Buffer.from('300c300506032a03040403000102', 'hex'),
    ];
    for (const bytes of ordinary) assert.equal(reservedUserDataRule(bytes), undefined, bytes.toString('hex'));
  });

  it('stops on deep or huge BER nesting without throwing', () => {
    const deep = Buffer.concat([
      Buffer.alloc(500, 0x30).map((_, i) => (i % 2 === 0 ? 0x30 : 0x80)),
      Buffer.alloc(500, 0),
    ]);
    assert.equal(reservedUserDataRule(deep), undefined);
    assert.equal(reservedUserDataRule(Buffer.from('3084ffffffff', 'hex')), undefined);
  });
});

describe('the internal API refuses reserved user_data (SPEC "Reserved bindings")', () => {
  let sim: SimulatedNsm;
  let api: AttestationApi;
  let base: string;
  const logs = captureLogs('debug');
  before(async () => {
    sim = await openSimulatedNsm({ stateDir: join(scratch, 'state') });
    api = await startAttestationApi({ listen: { host: '127.0.0.1', port: 0 }, nsm: sim, logger: logs.logger });
    base = `http://127.0.0.1:${api.address.port}`;
  });
  after(async () => {
    await api.close();
    await sim.close();
    rmSync(scratch, { recursive: true, force: true });
  });
  const refusals = () => logs.lines.filter((line) => line.msg === 'internal API refused a reserved user_data');

  it('GET user_data = an SPKI or the provisioner binding: 400 naming the rule and the field, one log line without the bytes', async () => {
    const spki = SPKIS['EC P-256']!;
    for (const [bytes, rule, reason] of [
      [spki, 'spki', /DER SubjectPublicKeyInfo/],
      [Buffer.concat([spki, Buffer.of(1, 2, 3)]), 'spki', /DER SubjectPublicKeyInfo/],
      [provisioningUserData(spki), 'prefix', /starts with "enclave-runtime\/"/],
    ] as const) {
      const before = refusals().length;
      const response = await fetch(`${base}/attestation-doc?user_data=${Buffer.from(bytes).toString('hex')}`);
      assert.equal(response.status, 400);
      const body = (await response.json()) as { error: string; field: string };
      assert.equal(body.field, 'user_data');
      assert.match(body.error, /user_data is reserved/);
      assert.match(body.error, reason);
      const lines = refusals().slice(before);
      assert.equal(lines.length, 1);
      assert.equal(lines[0]!.rule, rule);
      assert.equal(lines[0]!.level, 40);
      assert.ok(!logs.text().includes(Buffer.from(bytes).toString('hex')), 'the bytes are not logged');
    }
  });

  it('POST challenge with the prefix (plain, other case, unicode escapes): 400 with field user_data', async () => {
    for (const body of [
      '{"challenge": "enclave-runtime/provisioner/v1:abc"}',
      '{"challenge": "ENCLAVE-RUNTIME/x"}',
      '{"challenge": "\\u0065nclave-runtime\\u002fx"}',
    ]) {
      const response = await fetch(`${base}/attestation-doc`, {
        method: 'POST',
        body,
        headers: { 'content-type': 'application/json' },
      });
      assert.equal(response.status, 400, body);
      assert.equal(((await response.json()) as { field: string }).field, 'user_data');
    }
  });

  it("still serves ordinary user_data, a hash of a key, and the app's own public_key", async () => {
    const spki = SPKIS['EC P-256']!;
    const hash = createHash('sha256').update(spki).digest();
    const response = await fetch(
      `${base}/attestation-doc?user_data=${hash.toString('hex')}&public_key=${spki.toString('hex')}`,
    );
    assert.equal(response.status, 200);
    const { document } = verifyAttestation(new Uint8Array(await response.arrayBuffer()), { root: sim.rootPem });
    assert.deepEqual(Buffer.from(document.userData!), hash);
    assert.deepEqual(Buffer.from(document.publicKey!), spki);
    const post = await fetch(`${base}/attestation-doc`, { method: 'POST', body: '{"challenge": "a challenge"}' });
    assert.equal(post.status, 200);
  });
});
