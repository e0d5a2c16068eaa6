import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { after, describe, test } from 'node:test';
import { Decoder, Encoder } from 'cbor-x';
import {
  decodeNsmResponse,
  encodeNsmRequest,
  NSM_RESPONSE_MAX_BYTES,
  NsmUnavailableError,
  openDeviceNsm,
  type NsmIoctl,
} from '../src/attestation/nsm-device.js';
import { nativeUnavailable } from '../src/native/native-binding.js';

const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');
const text = (s: string): string => (0x60 + s.length).toString(16) + Buffer.from(s).toString('hex');
const decoder = new Decoder({ mapsAsObjects: false, useRecords: false });
const encoder = new Encoder({ useRecords: false, tagUint8Array: false, variableMapSize: true, mapsAsObjects: false });
const respond = (variant: string, fields: Array<[string, unknown]> | string): Uint8Array =>
  encoder.encode(new Map([[variant, typeof fields === 'string' ? fields : new Map(fields)]]));

const scratch = mkdtempSync(join(tmpdir(), 'nsm-device-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));

describe('NSM request encoding (serde_cbor layout of aws-nitro-enclaves-nsm-api)', () => {
  test('Attestation: a one-entry map of a text-keyed struct map, None as null', () => {
    const bytes = encodeNsmRequest({ kind: 'attestation', request: { nonce: Uint8Array.of(1, 2) } });
    const expected = `a1${text('Attestation')}a3${text('user_data')}f6${text('nonce')}420102${text('public_key')}f6`;
    assert.equal(hex(bytes), expected);
  });

  test('Attestation with every field keeps the struct order user_data, nonce, public_key', () => {
    const view = new Uint8Array([0, 7, 8, 0]).subarray(1, 3);
    const bytes = encodeNsmRequest({
      kind: 'attestation',
      request: { publicKey: Uint8Array.of(3), userData: Uint8Array.of(1), nonce: view },
    });
    assert.equal(
      hex(bytes),
      `a1${text('Attestation')}a3${text('user_data')}4101${text('nonce')}420708${text('public_key')}4103`,
    );
  });

  test('DescribePCR carries the index as an unsigned integer', () => {
    assert.equal(
      hex(encodeNsmRequest({ kind: 'describePcr', index: 3 })),
      `a1${text('DescribePCR')}a1${text('index')}03`,
    );
    assert.equal(
      hex(encodeNsmRequest({ kind: 'describePcr', index: 300 })),
      `a1${text('DescribePCR')}a1${text('index')}19012c`,
    );
  });

  test('GetRandom is the bare variant name', () => {
    assert.equal(hex(encodeNsmRequest({ kind: 'getRandom' })), text('GetRandom'));
  });
});

describe('NSM response decoding', () => {
  test('decodes each response variant', () => {
    assert.deepEqual(decodeNsmResponse(respond('Attestation', [['document', Buffer.from('doc')]])), {
      kind: 'attestation',
      document: new Uint8Array(Buffer.from('doc')),
    });
    assert.deepEqual(
      decodeNsmResponse(
        respond('DescribePCR', [
          ['lock', true],
          ['data', new Uint8Array(48)],
        ]),
      ),
      { kind: 'describePcr', locked: true, data: new Uint8Array(48) },
    );
    assert.deepEqual(decodeNsmResponse(respond('GetRandom', [['random', Uint8Array.of(1, 2, 3)]])), {
      kind: 'getRandom',
      random: Uint8Array.of(1, 2, 3),
    });
    assert.deepEqual(decodeNsmResponse(respond('Error', 'InvalidIndex')), { kind: 'error', code: 'InvalidIndex' });
  });

  test('rejects what is not in the schema', () => {
    for (const bad of [
      Uint8Array.of(0xff, 0x00),
      encoder.encode('GetRandom'),
      encoder.encode(new Map([['Attestation', new Map([['document', 'not bytes']])]])),
      encoder.encode(
        new Map([
          [
            'DescribePCR',
            new Map<string, unknown>([
              ['lock', 1],
              ['data', new Uint8Array(48)],
            ]),
          ],
        ]),
      ),
      encoder.encode(new Map([['Mystery', new Map()]])),
      encoder.encode(new Map([['Error', 7]])),
    ]) {
      assert.throws(() => decodeNsmResponse(bad), { code: 'ERR_NSM_DEVICE' });
    }
  });
});

/** A fake NSM behind the ioctl: decodes each request the way the device would and records it. */
function fakeDevice(): { ioctl: NsmIoctl; requests: unknown[]; maxResponses: number[] } {
  const requests: unknown[] = [];
  const maxResponses: number[] = [];
  const ioctl: NsmIoctl = (request, maxResponse) => {
    maxResponses.push(maxResponse);
    const decoded = decoder.decode(request) as unknown;
    requests.push(decoded);
    if (decoded === 'GetRandom') return respond('GetRandom', [['random', new Uint8Array(256).fill(7)]]);
    const [variant, body] = [...(decoded as Map<string, Map<string, unknown>>).entries()][0]!;
    if (variant === 'Attestation') {
      if ((body.get('nonce') as Uint8Array | null)?.length === 5) return respond('Error', 'InternalError');
      return respond('Attestation', [['document', encoder.encode([...body.values()])]]);
    }
    if (variant === 'DescribePCR') {
      const index = body.get('index') as number;
      if (index >= 32) return respond('Error', 'InvalidIndex');
      return respond('DescribePCR', [
        ['lock', index < 16],
        ['data', new Uint8Array(48).fill(index)],
      ]);
    }
    return respond('Error', 'InvalidOperation');
  };
  return { ioctl, requests, maxResponses };
}

describe('DeviceNsm over an injected ioctl', () => {
  test('attest sends the fields and returns the document bytes', async () => {
    const device = fakeDevice();
    const nsm = await openDeviceNsm('/dev/nsm', { ioctl: device.ioctl });
    assert.equal(nsm.kind, 'device');
    const doc = await nsm.attest({ userData: Uint8Array.of(1), publicKey: Uint8Array.of(3) });
    const fields = (decoder.decode(doc) as Array<Uint8Array | null>).map((field) =>
      field === null ? null : hex(field),
    );
    assert.deepEqual(fields, ['01', null, '03']);
    assert.deepEqual(device.maxResponses, [NSM_RESPONSE_MAX_BYTES]);
    await nsm.close();
  });

  test('describePcr and getRandom', async () => {
    const nsm = await openDeviceNsm('/dev/nsm', { ioctl: fakeDevice().ioctl });
    assert.deepEqual(await nsm.describePcr(4), { locked: true, data: new Uint8Array(48).fill(4) });
    assert.deepEqual(await nsm.describePcr(20), { locked: false, data: new Uint8Array(48).fill(20) });
    assert.equal((await nsm.getRandom()).length, 256);
    await assert.rejects(nsm.describePcr(40), { code: 'ERR_NSM_INVALID_INDEX' });
    await assert.rejects(nsm.describePcr(70000), { code: 'ERR_NSM_INVALID_INDEX' });
  });

  test('maps NSM errors and bad responses to NsmError codes', async () => {
    const nsm = await openDeviceNsm('/dev/nsm', { ioctl: fakeDevice().ioctl });
    await assert.rejects(nsm.attest({ nonce: new Uint8Array(5) }), {
      code: 'ERR_NSM_DEVICE',
      message: /InternalError/,
    });
    await assert.rejects(nsm.attest({ nonce: new Uint8Array(1025) }), { code: 'ERR_NSM_INPUT_TOO_LARGE' });
    const wrong = await openDeviceNsm('/dev/nsm', {
      ioctl: () => respond('GetRandom', [['random', Uint8Array.of(1)]]),
    });
    await assert.rejects(wrong.attest({}), { code: 'ERR_NSM_DEVICE', message: /Attestation/ });
    const tooLarge = await openDeviceNsm('/dev/nsm', { ioctl: () => respond('Error', 'InputTooLarge') });
    await assert.rejects(tooLarge.attest({}), { code: 'ERR_NSM_INPUT_TOO_LARGE' });
    const throwing = await openDeviceNsm('/dev/nsm', {
      ioctl: () => {
        throw new Error('EIO');
      },
    });
    await assert.rejects(throwing.getRandom(), { code: 'ERR_NSM_DEVICE', message: /EIO/ });
    const oversized = await openDeviceNsm('/dev/nsm', {
      ioctl: () => {
        throw Object.assign(new Error('ioctl EMSGSIZE NSM'), { code: 'EMSGSIZE' });
      },
    });
    await assert.rejects(oversized.attest({}), { code: 'ERR_NSM_INPUT_TOO_LARGE' });
  });

  test('one call in flight at a time, in order', async () => {
    let inFlight = 0;
    let maxInFlight = 0;
    const order: number[] = [];
    const device = fakeDevice();
    const ioctl: NsmIoctl = async (request, maxResponse) => {
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise((resolve) => setTimeout(resolve, 2));
      const response = device.ioctl(request, maxResponse);
      order.push((device.requests.at(-1) as Map<string, Map<string, number>>).get('DescribePCR')!.get('index')!);
      inFlight--;
      return response;
    };
    const nsm = await openDeviceNsm('/dev/nsm', { ioctl });
    const readings = await Promise.all(Array.from({ length: 20 }, (_, i) => nsm.describePcr(i)));
    assert.equal(maxInFlight, 1);
    assert.deepEqual(order, [...Array(20).keys()]);
    assert.deepEqual(
      readings.map((r) => r.data[0]),
      [...Array(20).keys()],
    );
  });

  test('bounds waiting: timeout and queue limit', async () => {
    let release: () => void = () => undefined;
    let calls = 0;
    const hanging: NsmIoctl = () => {
      calls++;
      return new Promise((resolve) => {
        release = () => resolve(respond('GetRandom', [['random', Uint8Array.of(1)]]));
      });
    };
    const nsm = await openDeviceNsm('/dev/nsm', { ioctl: hanging, timeoutMs: 50, maxQueue: 2 });
    const first = nsm.getRandom();
    const second = nsm.getRandom();
    await assert.rejects(nsm.getRandom(), { code: 'ERR_NSM_BUSY' });
    await assert.rejects(first, { code: 'ERR_NSM_TIMEOUT' });
    await assert.rejects(second, { code: 'ERR_NSM_TIMEOUT' });
    release();
    await new Promise((resolve) => setTimeout(resolve, 10));
    // The queued call whose caller gave up never reached the device.
    assert.equal(calls, 1);
    const third = nsm.getRandom();
    await new Promise((resolve) => setTimeout(resolve, 5));
    release();
    assert.deepEqual(await third, Uint8Array.of(1));
    await nsm.close();
    await assert.rejects(nsm.getRandom(), { code: 'ERR_NSM_CLOSED' });
  });
});

describe('opening the device', () => {
  test('a missing device says how to run outside an enclave', async () => {
    const path = join(scratch, 'no-such-nsm');
    const error = await openDeviceNsm(path).then(
      () => assert.fail('opened a missing device'),
      (e: unknown) => e,
    );
    assert.ok(error instanceof NsmUnavailableError);
    assert.equal(error.code, 'ERR_NSM_UNAVAILABLE');
    assert.match(error.message, new RegExp(`${path} is missing`));
    assert.match(error.message, /enclave-runtime dev/);
    assert.match(error.message, /attestation\.mode = "simulated"/);
  });

  test(
    'the default path is /dev/nsm',
    { skip: existsSync('/dev/nsm') ? 'this machine has /dev/nsm' : false },
    async () => {
      await assert.rejects(openDeviceNsm(), { code: 'ERR_NSM_UNAVAILABLE', message: /\/dev\/nsm is missing/ });
    },
  );

  test('a native addon that cannot load breaks only the device path, with ERR_NSM_UNAVAILABLE', async () => {
    const device = join(scratch, 'nsm-present');
    writeFileSync(device, '');
    const binding = join(scratch, 'broken-binding.mjs');
    writeFileSync(binding, "throw new Error('addon not built');\n");
    await assert.rejects(openDeviceNsm(device, { bindingUrl: pathToFileURL(binding).href }), {
      code: 'ERR_NSM_UNAVAILABLE',
      message: /addon not built/,
    });
  });

  test('runs ioctls on a worker thread through the native binding', async () => {
    const device = join(scratch, 'nsm-worker');
    writeFileSync(device, '');
    const random = respond('GetRandom', [['random', Uint8Array.of(9, 8, 7)]]);
    // {"Attestation": {"document": h''}} without its final empty-bstr byte: the fake appends a bstr of its own.
    const attestationPrefix = hex(respond('Attestation', [['document', new Uint8Array(0)]])).slice(0, -2);
    const binding = join(scratch, 'fake-binding.mjs');
    // Echoes each request back as the "document", so the test sees exactly what reached the device.
    writeFileSync(
      binding,
      `
      export function openDevice(path) { if (path !== ${JSON.stringify(device)}) throw new Error('wrong path ' + path); return 42; }
      export function closeFd(fd) { globalThis.fakeNsmClosed = fd; }
      export function nsmRequest(fd, request, maxResponse) {
        if (fd !== 42) throw new Error('wrong fd ' + fd);
        if (maxResponse !== ${NSM_RESPONSE_MAX_BYTES}) throw new Error('wrong maxResponse ' + maxResponse);
        const hex = Buffer.from(request).toString('hex');
        if (hex === ${JSON.stringify(hex(encodeNsmRequest({ kind: 'getRandom' })))}) return Buffer.from(${JSON.stringify(hex(random))}, 'hex');
        const doc = Buffer.from(request);
        return Buffer.concat([Buffer.from(${JSON.stringify(attestationPrefix)}, 'hex'), Buffer.of(0x59, doc.length >> 8, doc.length & 255), doc]);
      }
      `,
    );
    const nsm = await openDeviceNsm(device, { bindingUrl: pathToFileURL(binding).href });
    assert.deepEqual(await nsm.getRandom(), Uint8Array.of(9, 8, 7));
    const echoed = await Promise.all([1, 2, 3].map((n) => nsm.attest({ nonce: Uint8Array.of(n) })));
    echoed.forEach((doc, i) =>
      assert.deepEqual(doc, encodeNsmRequest({ kind: 'attestation', request: { nonce: Uint8Array.of(i + 1) } })),
    );
    await nsm.close();
    assert.equal((globalThis as { fakeNsmClosed?: number }).fakeNsmClosed, 42);
  });

  test(
    'the real addon runs the ioctl on the worker thread (ENOTTY on a non-NSM file)',
    { skip: nativeUnavailable() ?? false },
    async () => {
      const notNsm = join(scratch, 'not-an-nsm');
      writeFileSync(notNsm, '');
      const nsm = await openDeviceNsm(notNsm, { timeoutMs: 5000 });
      await assert.rejects(nsm.getRandom(), { code: 'ERR_NSM_DEVICE', message: /ENOTTY/ });
      await assert.rejects(nsm.attest({ nonce: Uint8Array.of(1) }), { code: 'ERR_NSM_DEVICE', message: /ENOTTY/ });
      await nsm.close();
      await assert.rejects(nsm.getRandom(), { code: 'ERR_NSM_CLOSED' });
    },
  );
});
