/**
 * Our NSM ioctl (src/native/nsm_device.cc, src/attestation/nsm-device.ts) against a real driver: the 6.12
 * kernel's nsm module over QEMU's virtio-nsm device, in the guest of `npm run test:vm`. Expected values are
 * computed here independently (SHA-384 of old || data), not read back from the device alone.
 *
 * QEMU's NSM signs nothing (protected header {1: -1}, zero signature, zero-byte certificate and cabundle). Its
 * documents are checked with a SCHEMA-ONLY decode (guest.ts schemaOnlyDecode), and the verifier must keep
 * rejecting them: that is asserted below too.
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import type { AttestationError } from '../../src/verify/attestation-error.js';
import { openDeviceNsm, type DeviceNsm } from '../../src/attestation/nsm-device.js';
import { verifyAttestation } from '../../src/verify/verifier.js';
import {
  BOOT_PCRS,
  GUEST_SKIP,
  decodeCborValue,
  encodeCborValue,
  extendPcr,
  lockPcr,
  schemaOnlyDecode,
} from './guest.js';

const sha384 = (...parts: Uint8Array[]): Buffer => {
  const hash = createHash('sha384');
  for (const part of parts) hash.update(part);
  return hash.digest();
};

/** What boot-measure.ts extended each boot PCR with, from all zeros. */
const bootValue = (index: number): Buffer =>
  sha384(Buffer.alloc(48), sha384(Buffer.from(`enclave-runtime test:vm boot measurement of PCR${index}`)));

describe(
  '/dev/nsm through our ioctl (QEMU virtio-nsm, kernel nsm driver)',
  { skip: GUEST_SKIP, timeout: 120_000 },
  () => {
    let nsm: DeviceNsm;
    before(async () => {
      nsm = await openDeviceNsm('/dev/nsm');
    });
    after(() => nsm?.close());

    it('nsm: DescribePCR reads the boot PCRs locked, each SHA-384(zeros || measurement)', async () => {
      for (const index of BOOT_PCRS) {
        const reading = await nsm.describePcr(index);
        assert.equal(reading.locked, true, `PCR${index} is locked`);
        assert.deepEqual(Buffer.from(reading.data), bootValue(index), `PCR${index}`);
      }
      const untouched = await nsm.describePcr(31);
      assert.equal(untouched.locked, false);
      assert.deepEqual(Buffer.from(untouched.data), Buffer.alloc(48));
    });

    it('nsm: ExtendPCR answers SHA-384(old || data), computed independently, and DescribePCR agrees', async () => {
      const index = 16;
      const old = Buffer.from((await nsm.describePcr(index)).data);
      const data = randomBytes(100);
      const answer = extendPcr(index, data) as Map<string, Map<string, Uint8Array>>;
      const extended = Buffer.from(answer.get('ExtendPCR')!.get('data')!);
      assert.deepEqual(extended, sha384(old, data));
      assert.deepEqual(Buffer.from((await nsm.describePcr(index)).data), extended);
      // Twice more: each step chains on the last.
      const next = randomBytes(7);
      extendPcr(index, next);
      assert.deepEqual(Buffer.from((await nsm.describePcr(index)).data), sha384(extended, next));
    });

    it('nsm: LockPCR locks a PCR; then ExtendPCR and a second LockPCR answer ReadOnlyIndex', async () => {
      const index = 17;
      extendPcr(index, Buffer.from('before the lock'));
      const value = Buffer.from((await nsm.describePcr(index)).data);
      assert.equal(lockPcr(index), 'LockPCR');
      const reading = await nsm.describePcr(index);
      assert.equal(reading.locked, true);
      assert.deepEqual(Buffer.from(reading.data), value);
      assert.deepEqual(extendPcr(index, Buffer.from('after the lock')), new Map([['Error', 'ReadOnlyIndex']]));
      assert.deepEqual(lockPcr(index), new Map([['Error', 'ReadOnlyIndex']]));
      assert.deepEqual(Buffer.from((await nsm.describePcr(index)).data), value, 'the refused extend changed nothing');
    });

    it('nsm: an out-of-range PCR index is refused with ERR_NSM_INVALID_INDEX', async () => {
      // 200: past the device's 32 PCRs, yet a one-byte CBOR integer, the only width QEMU's device decodes.
      await assert.rejects(nsm.describePcr(200), { code: 'ERR_NSM_INVALID_INDEX' });
    });

    it('nsm: GetRandom returns fresh bytes on each call', async () => {
      const first = await nsm.getRandom();
      const second = await nsm.getRandom();
      assert.ok(first.byteLength >= 32, `${first.byteLength} random bytes`);
      assert.notDeepEqual(Buffer.from(first), Buffer.from(second));
    });

    it('nsm: Attestation echoes nonce, user_data and public_key and lists the locked PCRs (schema-only decode: QEMU signs nothing)', async () => {
      const nonce = randomBytes(32);
      const userData = randomBytes(1024);
      const publicKey = randomBytes(91);
      const document = await nsm.attest({ nonce, userData, publicKey });
      const { protectedHeader, signature, payload } = schemaOnlyDecode(document);
      assert.deepEqual(Buffer.from(payload.nonce!), nonce);
      assert.deepEqual(Buffer.from(payload.userData!), userData);
      assert.deepEqual(Buffer.from(payload.publicKey!), publicKey);
      assert.equal(payload.digest, 'SHA384');
      assert.ok(payload.moduleId.length > 0);
      for (const index of BOOT_PCRS)
        assert.deepEqual(Buffer.from(payload.pcrs.get(index)!), bootValue(index), `PCR${index} in the document`);
      for (const index of payload.pcrs.keys())
        assert.equal(
          (await nsm.describePcr(index)).locked,
          true,
          `only locked PCRs are listed, PCR${index} is not locked`,
        );
      // What makes it unverifiable: QEMU's emulation has no key.
      assert.deepEqual(decodeCborValue(protectedHeader), new Map([[1, -1]]));
      assert.ok(signature.every((byte) => byte === 0));
      assert.ok(payload.certificate.every((byte) => byte === 0));

      const fieldless = schemaOnlyDecode(await nsm.attest({})).payload;
      assert.equal(fieldless.nonce, null);
      assert.equal(fieldless.userData, null);
      assert.equal(fieldless.publicKey, null);
    });

    it('nsm: a field over 1024 bytes is refused before the device (ERR_NSM_INPUT_TOO_LARGE)', async () => {
      await assert.rejects(nsm.attest({ nonce: randomBytes(1025) }), { code: 'ERR_NSM_INPUT_TOO_LARGE' });
    });

    it("nsm: the verifier rejects QEMU's unsigned document (ERR_ATTESTATION_SIGNATURE), and with ES384 written in (ERR_ATTESTATION_CHAIN)", async () => {
      const nonce = randomBytes(16);
      const document = await nsm.attest({ nonce });
      assert.throws(
        () => verifyAttestation(document, { nonce, allowDebug: true }),
        (error: AttestationError) => error.code === 'ERR_ATTESTATION_SIGNATURE' && /-1/.test(error.message),
      );
      // An attacker relabelling the header as ES384 gets no further: the zero "certificate" is no certificate.
      const [, unprotected, payload, signature] = decodeCborValue(document) as [
        Uint8Array,
        Map<unknown, unknown>,
        Uint8Array,
        Uint8Array,
      ];
      const relabelled = encodeCborValue([encodeCborValue(new Map([[1, -35]])), unprotected, payload, signature]);
      assert.throws(
        () => verifyAttestation(relabelled, { nonce, allowDebug: true }),
        (error: AttestationError) => error.code === 'ERR_ATTESTATION_CHAIN',
      );
    });
  },
);
