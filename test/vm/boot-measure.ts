/**
 * Run by the guest's /init before the runtime starts (not a test): extends and locks the boot PCRs, as the Nitro
 * hypervisor does before an enclave runs. QEMU's NSM starts with every PCR zero and unlocked, and lists only locked
 * PCRs in its documents; without this they would have none, which the AWS schema does not allow.
 */
import { createHash } from 'node:crypto';
import { BOOT_PCRS, extendPcr, lockPcr } from './guest.js';

for (const index of BOOT_PCRS) {
  extendPcr(index, createHash('sha384').update(`enclave-runtime test:vm boot measurement of PCR${index}`).digest());
  const locked = lockPcr(index);
  if (locked !== 'LockPCR') throw new Error(`LockPCR ${index} answered ${JSON.stringify(locked)}`);
}
