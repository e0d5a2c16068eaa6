import assert from 'node:assert/strict';
import { X509Certificate, createHash, verify } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { Decoder, Encoder } from 'cbor-x';
import { NSM_MAX_FIELD_BYTES } from '../src/attestation/nsm.js';
import { SIM_CHAIN_FILE, SIM_ROOT_FILE } from '../src/attestation/sim-chain.js';
import { defaultSimulatedPcr, openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { NITRO_FIXTURES } from './helpers/paths.js';

const decoder = new Decoder({ mapsAsObjects: false, useRecords: false });
const HOUR = 3600_000;
const scratch = mkdtempSync(join(tmpdir(), 'sim-nsm-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
let dirCount = 0;
const freshStateDir = (): string => join(scratch, `state-${dirCount++}`);

interface Cose {
  protectedHeader: Uint8Array;
  unprotected: unknown;
  payloadBytes: Uint8Array;
  signature: Uint8Array;
  payload: Map<string, unknown>;
}

function decodeCose(bytes: Uint8Array): Cose {
  const outer = decoder.decode(bytes) as unknown[];
  assert.ok(Array.isArray(outer) && outer.length === 4, 'COSE_Sign1 is an array of 4');
  const [protectedHeader, unprotected, payloadBytes, signature] = outer as [
    Uint8Array,
    unknown,
    Uint8Array,
    Uint8Array,
  ];
  return {
    protectedHeader,
    unprotected,
    payloadBytes,
    signature,
    payload: decoder.decode(payloadBytes) as Map<string, unknown>,
  };
}

function fixture(name: string): Uint8Array {
  const raw = readFileSync(join(NITRO_FIXTURES, name));
  return name.endsWith('.b64') ? Buffer.from(raw.toString('ascii').trim(), 'base64') : raw;
}

/** Each payload key with a type tag, in wire order. */
function shape(payload: Map<string, unknown>): Array<[string, string]> {
  return [...payload.entries()].map(([key, value]) => {
    if (value === null) return [key, 'null'];
    if (value instanceof Uint8Array) return [key, 'bytes'];
    if (Array.isArray(value))
      return [
        key,
        `array<${[...new Set(value.map((v) => (v instanceof Uint8Array ? 'bytes' : typeof v)))].join('|')}>`,
      ];
    if (value instanceof Map) {
      const keys = [...value.keys()].map((k) => typeof k).join(',');
      return [
        key,
        `map<${[...new Set(keys.split(','))].join('|')},${[...new Set([...value.values()].map((v) => (v instanceof Uint8Array ? `bytes${v.length}` : typeof v)))].join('|')}>`,
      ];
    }
    return [key, typeof value];
  });
}

/** The major type and additional info of the CBOR item that follows `key` in the payload. */
function headerAfterKey(payloadBytes: Uint8Array, key: string): number {
  const needle = Buffer.concat([Buffer.of(0x60 + key.length), Buffer.from(key)]);
  const at = Buffer.from(payloadBytes).indexOf(needle);
  assert.ok(at >= 0, `payload has key ${key}`);
  return payloadBytes[at + needle.length]!;
}

describe('simulated NSM document schema', () => {
  test('has exactly the layout of a real Nitro document', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    const field = (b: number): Uint8Array => new Uint8Array(NSM_MAX_FIELD_BYTES).fill(b);
    const doc = await nsm.attest({ publicKey: field(1), userData: field(2), nonce: field(3) });
    // blocky's document also carries all three optional fields, at 1024 bytes each.
    const real = fixture('blocky-nitrite-nitro_attestation.b64');

    const ours = decodeCose(doc);
    const theirs = decodeCose(real);
    assert.deepEqual(shape(ours.payload), shape(theirs.payload));
    assert.deepEqual(
      [...ours.payload.keys()],
      ['module_id', 'digest', 'timestamp', 'pcrs', 'certificate', 'cabundle', 'public_key', 'user_data', 'nonce'],
    );
    // Outer framing byte for byte: untagged array(4), bstr {1: -35}, empty map, bstr payload.
    assert.deepEqual(Buffer.from(doc.subarray(0, 7)), Buffer.from(real.subarray(0, 7)));
    assert.equal(doc[0], 0x84);
    assert.deepEqual(Buffer.from(ours.protectedHeader), Buffer.from('a1013822', 'hex'));
    assert.ok(ours.unprotected instanceof Map && ours.unprotected.size === 0);
    assert.equal(ours.signature.length, 96);
    assert.equal(ours.payloadBytes[0], theirs.payloadBytes[0], 'definite map(9) like most real documents');
    // timestamp is an unsigned integer (major type 0, 8 bytes), not a float.
    assert.equal(headerAfterKey(ours.payloadBytes, 'timestamp'), headerAfterKey(theirs.payloadBytes, 'timestamp'));
    assert.equal(headerAfterKey(ours.payloadBytes, 'timestamp'), 0x1b);
    assert.equal(headerAfterKey(ours.payloadBytes, 'pcrs'), 0xb0, 'map(16) with integer keys');
    assert.equal(ours.payload.get('digest'), 'SHA384');
    assert.equal(typeof ours.payload.get('timestamp'), typeof theirs.payload.get('timestamp'));
  });

  test('absent optional fields are CBOR null, not left out', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    const { payload, payloadBytes } = decodeCose(await nsm.attest({ nonce: Uint8Array.of(9) }));
    assert.equal(payload.get('public_key'), null);
    assert.equal(payload.get('user_data'), null);
    assert.deepEqual(Buffer.from(payload.get('nonce') as Uint8Array), Buffer.of(9));
    assert.equal(headerAfterKey(payloadBytes, 'public_key'), 0xf6);
    assert.equal(headerAfterKey(payloadBytes, 'user_data'), 0xf6);
  });

  test('ES384 signature over the Sig_structure verifies with the leaf key', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    const cose = decodeCose(await nsm.attest({ userData: Buffer.from('hello') }));
    const leaf = new X509Certificate(cose.payload.get('certificate') as Uint8Array);
    const toBeSigned = new Encoder({ useRecords: false, tagUint8Array: false }).encode([
      'Signature1',
      cose.protectedHeader,
      new Uint8Array(0),
      cose.payloadBytes,
    ]);
    assert.ok(verify('sha384', toBeSigned, { key: leaf.publicKey, dsaEncoding: 'ieee-p1363' }, cose.signature));
    assert.equal(leaf.publicKey.asymmetricKeyDetails?.namedCurve, 'secp384r1');
  });

  test('carries 16 PCRs of 48 bytes, non-debug by default', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    const pcrs = decodeCose(await nsm.attest({})).payload.get('pcrs') as Map<number, Uint8Array>;
    assert.deepEqual([...pcrs.keys()], [...Array(16).keys()]);
    for (const value of pcrs.values()) assert.equal(value.length, 48);
    for (const index of [0, 1, 2])
      assert.ok(
        pcrs.get(index)!.some((b) => b !== 0),
        `PCR${index} is not zero`,
      );
    const label = createHash('sha384').update('enclave-runtime simulated PCR0').digest();
    assert.deepEqual(Buffer.from(pcrs.get(0)!), label, 'defaults are deterministic');
    assert.deepEqual(Buffer.from(defaultSimulatedPcr(0)), label);
  });

  test('uses configured PCRs, and debug mode zeroes PCR0-2 like real hardware', async () => {
    const configured = {
      0: new Uint8Array(48).fill(0xaa),
      3: new Uint8Array(48).fill(0xbb),
      8: new Uint8Array(48).fill(0xcc),
    };
    const normal = await openSimulatedNsm({ stateDir: freshStateDir(), pcrs: configured });
    const pcrs = decodeCose(await normal.attest({})).payload.get('pcrs') as Map<number, Uint8Array>;
    assert.deepEqual(Buffer.from(pcrs.get(0)!), Buffer.from(configured[0]));
    assert.deepEqual(Buffer.from(pcrs.get(3)!), Buffer.from(configured[3]));
    assert.deepEqual(Buffer.from(pcrs.get(8)!), Buffer.from(configured[8]));
    assert.deepEqual(Buffer.from(pcrs.get(1)!), Buffer.from(defaultSimulatedPcr(1)));

    const debug = await openSimulatedNsm({ stateDir: freshStateDir(), pcrs: configured, debug: true });
    const debugPcrs = decodeCose(await debug.attest({})).payload.get('pcrs') as Map<number, Uint8Array>;
    for (const index of [0, 1, 2])
      assert.ok(
        debugPcrs.get(index)!.every((b) => b === 0),
        `PCR${index} is zero`,
      );
    assert.deepEqual(Buffer.from(debugPcrs.get(3)!), Buffer.from(configured[3]));
    assert.deepEqual((await debug.describePcr(0)).data, new Uint8Array(48));
  });

  test('rejects bad PCR configuration and module ids', async () => {
    const stateDir = freshStateDir();
    await assert.rejects(openSimulatedNsm({ stateDir, pcrs: { 16: new Uint8Array(48) } }), {
      code: 'ERR_NSM_INVALID_ARGUMENT',
    });
    await assert.rejects(openSimulatedNsm({ stateDir, pcrs: { 0: new Uint8Array(32) } }), {
      code: 'ERR_NSM_INVALID_ARGUMENT',
    });
    await assert.rejects(openSimulatedNsm({ stateDir, moduleId: 'a,CN=evil' }), { code: 'ERR_NSM_INVALID_ARGUMENT' });
  });

  test('module_id and timestamp come from the options and the clock', async () => {
    let now = Date.UTC(2025, 0, 1, 12);
    const nsm = await openSimulatedNsm({
      stateDir: freshStateDir(),
      moduleId: 'i-0123456789abcdef0-enc0123456789abcdef',
      now: () => now,
    });
    now += 1234;
    const { payload } = decodeCose(await nsm.attest({}));
    assert.equal(payload.get('module_id'), 'i-0123456789abcdef0-enc0123456789abcdef');
    assert.equal(payload.get('timestamp'), BigInt(now));
    const leaf = new X509Certificate(payload.get('certificate') as Uint8Array);
    assert.match(leaf.subject, /CN=i-0123456789abcdef0-enc0123456789abcdef\.sim\.aws/);
  });

  test('default module id looks like a real one', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    assert.match(nsm.moduleId, /^i-[0-9a-f]{17}-enc[0-9a-f]{16}$/);
  });

  test('enforces the 1024-byte field limit like the NSM', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    await nsm.attest({ nonce: new Uint8Array(1024), userData: new Uint8Array(1024), publicKey: new Uint8Array(1024) });
    for (const key of ['nonce', 'userData', 'publicKey'] as const) {
      await assert.rejects(nsm.attest({ [key]: new Uint8Array(1025) }), { code: 'ERR_NSM_INPUT_TOO_LARGE' });
    }
  });

  test('describePcr, getRandom and close', async () => {
    const nsm = await openSimulatedNsm({ stateDir: freshStateDir() });
    const pcr4 = await nsm.describePcr(4);
    assert.equal(pcr4.locked, true);
    assert.deepEqual(pcr4.data, defaultSimulatedPcr(4));
    assert.deepEqual(await nsm.describePcr(16), { locked: false, data: new Uint8Array(48) });
    await assert.rejects(nsm.describePcr(32), { code: 'ERR_NSM_INVALID_INDEX' });
    await assert.rejects(nsm.describePcr(-1), { code: 'ERR_NSM_INVALID_INDEX' });
    const a = await nsm.getRandom();
    const b = await nsm.getRandom();
    assert.equal(a.length, 256);
    assert.notDeepEqual(a, b);
    await nsm.close();
    await assert.rejects(nsm.attest({}), { code: 'ERR_NSM_CLOSED' });
  });
});

describe('simulated NSM chain', () => {
  test('cabundle is root first, then regional, zonal, instance; each issues the next', async () => {
    const stateDir = freshStateDir();
    const nsm = await openSimulatedNsm({ stateDir });
    const { payload } = decodeCose(await nsm.attest({}));
    const cabundle = (payload.get('cabundle') as Uint8Array[]).map((der) => new X509Certificate(der));
    const leaf = new X509Certificate(payload.get('certificate') as Uint8Array);
    assert.equal(cabundle.length, 4);
    const root = new X509Certificate(readFileSync(join(stateDir, SIM_ROOT_FILE)));
    assert.ok(cabundle[0]!.raw.equals(root.raw), 'cabundle[0] is the persisted root');
    assert.ok(root.verify(root.publicKey), 'root is self-signed');
    const chain = [...cabundle, leaf];
    for (let i = 1; i < chain.length; i++) {
      assert.ok(chain[i]!.checkIssued(chain[i - 1]!), `cert ${i} is issued by cert ${i - 1}`);
      assert.ok(chain[i]!.verify(chain[i - 1]!.publicKey), `cert ${i} is signed by cert ${i - 1}`);
    }
    assert.ok(
      cabundle.every((ca) => ca.ca),
      'the bundle holds CAs only',
    );
    assert.equal(leaf.ca, false);
    assert.match(cabundle[2]!.subject, /zonal/);
    const lifetime = Date.parse(leaf.validTo) - Date.parse(leaf.validFrom);
    assert.ok(lifetime >= 3 * HOUR && lifetime <= 3 * HOUR + 5 * 60_000, `leaf lives about 3 h (${lifetime} ms)`);
  });

  test('persists in the state dir with private files and is reused by the next open', async () => {
    const stateDir = freshStateDir();
    const first = await openSimulatedNsm({ stateDir });
    const firstDoc = decodeCose(await first.attest({}));
    const rootPem = readFileSync(join(stateDir, SIM_ROOT_FILE), 'utf8');
    assert.match(rootPem, /^-----BEGIN CERTIFICATE-----/);
    assert.equal(statSync(stateDir).mode & 0o777, 0o700);
    assert.equal(statSync(join(stateDir, SIM_CHAIN_FILE)).mode & 0o777, 0o600);

    const second = await openSimulatedNsm({ stateDir });
    const secondDoc = decodeCose(await second.attest({}));
    assert.equal(readFileSync(join(stateDir, SIM_ROOT_FILE), 'utf8'), rootPem);
    assert.deepEqual(secondDoc.payload.get('cabundle'), firstDoc.payload.get('cabundle'));
    assert.notEqual(second.moduleId, first.moduleId, 'a new enclave id per launch');
    assert.equal(second.moduleId.split('-enc')[0], first.moduleId.split('-enc')[0], 'same instance');
  });

  test('a deleted root file is rewritten from the persisted chain', async () => {
    const stateDir = freshStateDir();
    await openSimulatedNsm({ stateDir });
    const rootPem = readFileSync(join(stateDir, SIM_ROOT_FILE), 'utf8');
    rmSync(join(stateDir, SIM_ROOT_FILE));
    await openSimulatedNsm({ stateDir });
    assert.equal(readFileSync(join(stateDir, SIM_ROOT_FILE), 'utf8'), rootPem);
  });

  test('concurrent first opens agree on one root', async () => {
    const stateDir = freshStateDir();
    const nsms = await Promise.all(Array.from({ length: 6 }, () => openSimulatedNsm({ stateDir })));
    const roots = await Promise.all(
      nsms.map(async (nsm) =>
        Buffer.from((decodeCose(await nsm.attest({})).payload.get('cabundle') as Uint8Array[])[0]!).toString('hex'),
      ),
    );
    assert.equal(new Set(roots).size, 1);
    const persisted = new X509Certificate(readFileSync(join(stateDir, SIM_ROOT_FILE)));
    assert.equal(persisted.raw.toString('hex'), roots[0]);
  });

  test('a corrupt chain file is an error, not a silent new root', async () => {
    const stateDir = freshStateDir();
    await openSimulatedNsm({ stateDir });
    writeFileSync(join(stateDir, SIM_CHAIN_FILE), '{"version": 1, "instanceId": "nope"}');
    await assert.rejects(openSimulatedNsm({ stateDir }), { code: 'ERR_NSM_SIM_STATE' });
  });

  test('rotates the signing certificate as it nears expiry; the root stays', async () => {
    let now = Date.now();
    const stateDir = freshStateDir();
    const nsm = await openSimulatedNsm({ stateDir, now: () => now });
    const leafOf = async (): Promise<X509Certificate> =>
      new X509Certificate(decodeCose(await nsm.attest({})).payload.get('certificate') as Uint8Array);
    const bundleOf = async (): Promise<unknown> => decodeCose(await nsm.attest({})).payload.get('cabundle');
    const first = await leafOf();
    const bundle = await bundleOf();

    now += 1.5 * HOUR; // half the lifetime left: keep it
    assert.equal((await leafOf()).serialNumber, first.serialNumber);

    now += 0.6 * HOUR; // under a third left: replace it
    const second = await leafOf();
    assert.notEqual(second.serialNumber, first.serialNumber);
    assert.ok(!second.publicKey.equals(first.publicKey), 'a new key, too');
    assert.ok(Date.parse(second.validTo) > now + 2.9 * HOUR);
    assert.ok(Date.parse(second.validFrom) <= now);
    assert.deepEqual(await bundleOf(), bundle, 'root and intermediates unchanged');

    // Concurrent callers during a rotation share one new leaf.
    now += 2.5 * HOUR;
    const leaves = await Promise.all(Array.from({ length: 8 }, leafOf));
    assert.equal(new Set(leaves.map((leaf) => leaf.serialNumber)).size, 1);
    assert.notEqual(leaves[0]!.serialNumber, second.serialNumber);
  });

  test('honours a custom signing certificate lifetime', async () => {
    let now = Date.now();
    const nsm = await openSimulatedNsm({
      stateDir: freshStateDir(),
      signingCertLifetimeMs: 30 * 60_000,
      now: () => now,
    });
    const serial = async (): Promise<string> =>
      new X509Certificate(decodeCose(await nsm.attest({})).payload.get('certificate') as Uint8Array).serialNumber;
    const first = await serial();
    now += 15 * 60_000;
    assert.equal(await serial(), first);
    now += 6 * 60_000;
    assert.notEqual(await serial(), first);
    await assert.rejects(openSimulatedNsm({ stateDir: freshStateDir(), signingCertLifetimeMs: 10 }), {
      code: 'ERR_NSM_INVALID_ARGUMENT',
    });
  });
});
