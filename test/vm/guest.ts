/**
 * Shared by the test/vm files, which run only inside the QEMU guest of `npm run test:vm` (scripts/vm/run.mjs):
 * the guest check, the PID 1 runtime's settings (test/vm/enclave-vm.toml) and raw NSM requests.
 */
import { existsSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { Decoder, Encoder, Tag } from 'cbor-x';
import { closeFd, nsmRequest, openDevice } from '../../src/native/native-binding.js';
import { decodeAttestationPayload, type AttestationDocument } from '../../src/verify/document.js';
import { NSM_RESPONSE_MAX_BYTES } from '../../src/attestation/nsm-device.js';

/** Why a guest test cannot run here (it is not the guest), or undefined inside it. */
export const GUEST_SKIP: string | undefined =
  process.env.ENCLAVE_VM_GUEST !== '1'
    ? 'runs only inside the QEMU guest of `npm run test:vm` (a real kernel with vsock loopback and /dev/nsm)'
    : existsSync('/dev/nsm')
      ? undefined
      : 'the guest has no /dev/nsm (the nsm module did not load)';

/** The guest's own vsock address: connects to CID 1 loop back to listeners on CID_ANY. */
export const LOCAL_CID = 1;

/** The PID 1 runtime, as test/vm/enclave-vm.toml configures it (ports are `run`'s defaults). */
export const RUNTIME = {
  hostname: 'enclave-vm',
  serverName: 'enclave.test',
  stateDir: '/tmp/enclave-state',
  ingressPort: 7777,
  app: { host: '127.0.0.1', port: 8008 },
  api: { host: '127.0.0.1', port: 9999 },
  dns: { host: '127.0.0.1', port: 53 },
  proxy: { host: '127.0.0.1', port: 3128 },
  egressRelayPort: 4433,
  dnsRelayPort: 8585,
  allowed: 'internet.test',
} as const;

/** PCRs the boot measurement (boot-measure.ts) extends and locks, as a Nitro hypervisor does before the enclave runs. */
export const BOOT_PCRS = [0, 1, 2, 3, 4, 8] as const;

const encoder = new Encoder({ useRecords: false, tagUint8Array: false, variableMapSize: true, mapsAsObjects: false });
const decoder = new Decoder({ useRecords: false, mapsAsObjects: false });

/**
 * One request to /dev/nsm through the addon's ioctl (the same call the runtime's worker makes), for operations
 * the runtime itself never sends (ExtendPCR, LockPCR). `request` is the serde-style CBOR value, e.g.
 * `new Map([['LockPCR', new Map([['index', 16]])]])`. Returns the decoded response.
 */
export function nsmRaw(request: unknown): unknown {
  const fd = openDevice('/dev/nsm');
  try {
    return decoder.decode(nsmRequest(fd, new Uint8Array(encoder.encode(request)), NSM_RESPONSE_MAX_BYTES));
  } finally {
    closeFd(fd);
  }
}

export function extendPcr(index: number, data: Uint8Array): unknown {
  return nsmRaw(
    new Map([
      [
        'ExtendPCR',
        new Map<string, unknown>([
          ['index', index],
          ['data', data],
        ]),
      ],
    ]),
  );
}

export function lockPcr(index: number): unknown {
  return nsmRaw(new Map([['LockPCR', new Map([['index', index]])]]));
}

/**
 * SCHEMA ONLY: the payload of a COSE_Sign1 read without checking its header or signature, then held to the AWS
 * schema. QEMU's NSM signs nothing (alg -1, zero signature, zero certificate), so its documents can be checked for
 * their fields, never verified; the tests that use this say so and also assert that the verifier rejects them.
 */
export function schemaOnlyDecode(document: Uint8Array): {
  protectedHeader: Uint8Array;
  signature: Uint8Array;
  payload: AttestationDocument;
} {
  let value: unknown = decoder.decode(document);
  if (value instanceof Tag) value = value.value;
  if (!Array.isArray(value) || value.length !== 4) throw new Error('not a COSE_Sign1 array of 4');
  const [protectedHeader, , payload, signature] = value as [Uint8Array, unknown, Uint8Array, Uint8Array];
  return { protectedHeader, signature, payload: decodeAttestationPayload(payload) };
}

export function decodeCborValue(bytes: Uint8Array): unknown {
  return decoder.decode(bytes);
}

export function encodeCborValue(value: unknown): Uint8Array {
  return new Uint8Array(encoder.encode(value));
}

/** One request on a fresh connection (no keep-alive to go stale between tests); resolves with status and body. */
export function get(
  options: http.RequestOptions | https.RequestOptions,
  secure = false,
  body?: string,
): Promise<{ status: number; body: string; headers: http.IncomingHttpHeaders }> {
  return new Promise((resolve, reject) => {
    const request = (secure ? https : http).request({ agent: false, ...options }, (response) => {
      const chunks: Buffer[] = [];
      response.on('data', (chunk: Buffer) => chunks.push(chunk));
      response.on('end', () =>
        resolve({
          status: response.statusCode ?? 0,
          body: Buffer.concat(chunks).toString('latin1'),
          headers: response.headers,
        }),
      );
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}
