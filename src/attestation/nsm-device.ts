import { stat } from 'node:fs/promises';
import { Worker } from 'node:worker_threads';
import { Decoder, Encoder } from 'cbor-x';
import type * as nativeBinding from '../native/native-binding.js';
import type { Logger } from '../core/log.js';
import { silentLogger } from '../core/log.js';
import { assertAttestationRequest, NsmError, type AttestationRequest, type Nsm, type PcrReading } from './nsm.js';
import { errorCode } from '../core/errors.js';

export const NSM_DEVICE_PATH = '/dev/nsm';
/** The driver's limits (aws-nitro-enclaves-nsm-api): 4 KiB of request, 12 KiB of response. */
export const NSM_REQUEST_MAX_BYTES = 0x1000;
export const NSM_RESPONSE_MAX_BYTES = 0x3000;
export const DEFAULT_NSM_TIMEOUT_MS = 10_000;
export const DEFAULT_NSM_MAX_QUEUE = 256;
const MAX_PCR_INDEX = 0xffff;
const MAX_ERROR_CODE_CHARS = 64;

/** /dev/nsm cannot be used here: not an enclave, no addon, or no permission. */
export class NsmUnavailableError extends NsmError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_NSM_UNAVAILABLE', message, options);
  }
}

/** One exchange with the device: CBOR request in, CBOR response out (at most `maxResponse` bytes). */
export type NsmIoctl = (request: Uint8Array, maxResponse: number) => Uint8Array | Promise<Uint8Array>;

/** The NSM operations this runtime uses, before CBOR encoding. */
export type NsmDeviceRequest =
  { kind: 'attestation'; request: AttestationRequest } | { kind: 'describePcr'; index: number } | { kind: 'getRandom' };

/** A decoded device response; `error` carries the NSM ErrorCode name (e.g. "InputTooLarge"). */
export type NsmDeviceResponse =
  | { kind: 'attestation'; document: Uint8Array }
  | { kind: 'describePcr'; locked: boolean; data: Uint8Array }
  | { kind: 'getRandom'; random: Uint8Array }
  | { kind: 'error'; code: string };

/** What the native addon (src/native/native-binding.ts) provides for the device. */
export interface NativeNsmBinding {
  openDevice(path: string): number;
  closeFd(fd: number): void;
  nsmRequest(fd: number, request: Uint8Array, maxResponse: number): Uint8Array;
}

// Compile-time only: the addon wrapper must keep offering what the worker calls.
type ConformingBinding<T extends NativeNsmBinding> = T;
type _CheckedBinding = ConformingBinding<typeof nativeBinding>;

export interface DeviceNsmOptions {
  /** Replaces the device: tests pass a fake; nothing is opened then. */
  ioctl?: NsmIoctl;
  /** How long one call may wait, queueing included. */
  timeoutMs?: number;
  /** Calls waiting for the device beyond this fail fast with ERR_NSM_BUSY. */
  maxQueue?: number;
  logger?: Logger;
  /** Module URL of the native binding; tests point it at a fake. */
  bindingUrl?: string;
}

// serde_cbor's encoding: externally tagged enums, struct fields as text-keyed maps, Option::None as null.
const cbor = new Encoder({ useRecords: false, tagUint8Array: false, variableMapSize: true, mapsAsObjects: false });
const decoder = new Decoder({ useRecords: false, mapsAsObjects: false });

/** CBOR for one request, as aws-nitro-enclaves-nsm-api encodes its `Request` enum. */
export function encodeNsmRequest(request: NsmDeviceRequest): Uint8Array {
  let value: unknown;
  switch (request.kind) {
    case 'attestation': {
      const { userData, nonce, publicKey } = request.request;
      value = new Map([
        [
          'Attestation',
          new Map([
            ['user_data', bytesOrNull(userData)],
            ['nonce', bytesOrNull(nonce)],
            ['public_key', bytesOrNull(publicKey)],
          ]),
        ],
      ]);
      break;
    }
    case 'describePcr':
      value = new Map([['DescribePCR', new Map([['index', request.index]])]]);
      break;
    case 'getRandom':
      // A unit variant is just its name.
      value = 'GetRandom';
      break;
  }
  return new Uint8Array(cbor.encode(value));
}

/** Decodes a device response; anything not in the NSM schema is an ERR_NSM_DEVICE error. */
export function decodeNsmResponse(bytes: Uint8Array): NsmDeviceResponse {
  let value: unknown;
  try {
    value = decoder.decode(bytes);
  } catch (error) {
    throw malformed('it is not CBOR', error);
  }
  if (!(value instanceof Map) || value.size !== 1) throw malformed('expected a map with one variant');
  const [variant, body] = [...value.entries()][0] as [unknown, unknown];
  if (variant === 'Error') {
    if (typeof body !== 'string') throw malformed('Error without a code name');
    return { kind: 'error', code: body.slice(0, MAX_ERROR_CODE_CHARS) };
  }
  if (!(body instanceof Map)) throw malformed(`${String(variant).slice(0, MAX_ERROR_CODE_CHARS)} without a field map`);
  switch (variant) {
    case 'Attestation':
      return { kind: 'attestation', document: bytesField(body, 'document') };
    case 'DescribePCR': {
      const lock = body.get('lock');
      if (typeof lock !== 'boolean') throw malformed('DescribePCR.lock is not a boolean');
      return { kind: 'describePcr', locked: lock, data: bytesField(body, 'data') };
    }
    case 'GetRandom':
      return { kind: 'getRandom', random: bytesField(body, 'random') };
    default:
      throw malformed(`unexpected variant ${JSON.stringify(String(variant).slice(0, MAX_ERROR_CODE_CHARS))}`);
  }
}

/** The real Nitro Secure Module. Calls reach the device one at a time, in order. */
export class DeviceNsm implements Nsm {
  readonly kind = 'device' as const;
  readonly #ioctl: NsmIoctl;
  readonly #release: () => Promise<void>;
  readonly #timeoutMs: number;
  readonly #maxQueue: number;
  readonly #logger: Logger;
  #tail: Promise<unknown> = Promise.resolve();
  #queued = 0;
  #closed = false;

  constructor(
    ioctl: NsmIoctl,
    release: () => Promise<void>,
    options: { timeoutMs: number; maxQueue: number; logger: Logger },
  ) {
    this.#ioctl = ioctl;
    this.#release = release;
    this.#timeoutMs = options.timeoutMs;
    this.#maxQueue = options.maxQueue;
    this.#logger = options.logger;
  }

  /** Asks the device for a signed document carrying exactly the given fields. */
  async attest(request: AttestationRequest): Promise<Uint8Array> {
    assertAttestationRequest(request);
    const response = await this.#call({ kind: 'attestation', request });
    if (response.kind !== 'attestation') throw mismatched('Attestation', response.kind);
    if (response.document.byteLength === 0) throw malformed('empty attestation document');
    return response.document;
  }

  /** Reads PCR `index` and whether it is locked. */
  async describePcr(index: number): Promise<PcrReading> {
    if (!Number.isInteger(index) || index < 0 || index > MAX_PCR_INDEX) {
      throw new NsmError('ERR_NSM_INVALID_INDEX', `PCR index ${index} is not a u16`);
    }
    const response = await this.#call({ kind: 'describePcr', index });
    if (response.kind !== 'describePcr') throw mismatched('DescribePCR', response.kind);
    return { locked: response.locked, data: response.data };
  }

  /** Entropy from the NSM's hardware generator. */
  async getRandom(): Promise<Uint8Array> {
    const response = await this.#call({ kind: 'getRandom' });
    if (response.kind !== 'getRandom') throw mismatched('GetRandom', response.kind);
    if (response.random.byteLength === 0) throw malformed('GetRandom returned no bytes');
    return response.random;
  }

  /** Waits (bounded) for the call in flight, then releases the device. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await withTimeout(this.#tail, this.#timeoutMs).catch(() => undefined);
    await this.#release();
  }

  async #call(request: NsmDeviceRequest): Promise<NsmDeviceResponse> {
    if (this.#closed) throw new NsmError('ERR_NSM_CLOSED', 'the NSM device is closed');
    if (this.#queued >= this.#maxQueue) {
      throw new NsmError('ERR_NSM_BUSY', `${this.#queued} NSM calls are already waiting; try again shortly`);
    }
    const encoded = encodeNsmRequest(request);
    if (encoded.byteLength > NSM_REQUEST_MAX_BYTES) {
      throw new NsmError(
        'ERR_NSM_INPUT_TOO_LARGE',
        `the request is ${encoded.byteLength} bytes; the NSM accepts at most ${NSM_REQUEST_MAX_BYTES}`,
      );
    }
    this.#queued++;
    let abandoned = false;
    const run = this.#tail.then(async () => {
      // A caller that timed out while queued no longer wants the answer: spare the device.
      if (abandoned) throw new NsmError('ERR_NSM_TIMEOUT', 'abandoned');
      return this.#ioctl(encoded, NSM_RESPONSE_MAX_BYTES);
    });
    this.#tail = run.then(
      () => this.#queued--,
      () => this.#queued--,
    );
    let raw: Uint8Array;
    try {
      raw = await withTimeout(run, this.#timeoutMs);
    } catch (error) {
      if (error instanceof NsmError) {
        if (error.code === 'ERR_NSM_TIMEOUT') abandoned = true;
        throw error;
      }
      const { message, code } = error as NodeJS.ErrnoException;
      this.#logger.warn({ op: request.kind, code, err: { message } }, 'NSM ioctl failed');
      // The driver's EMSGSIZE is the NSM's InputTooLarge, as the AWS driver library maps it.
      throw new NsmError(
        code === 'EMSGSIZE' ? 'ERR_NSM_INPUT_TOO_LARGE' : 'ERR_NSM_DEVICE',
        `the NSM ioctl failed: ${message}`,
        { cause: error },
      );
    }
    if (raw.byteLength > NSM_RESPONSE_MAX_BYTES)
      throw malformed(`the response is ${raw.byteLength} bytes, over ${NSM_RESPONSE_MAX_BYTES}`);
    const response = decodeNsmResponse(raw);
    if (response.kind === 'error') throw deviceError(response.code, request.kind);
    return response;
  }
}

/** Opens the real NSM; a missing device or addon is NsmUnavailableError (ERR_NSM_UNAVAILABLE). */
export async function openDeviceNsm(
  path: string = NSM_DEVICE_PATH,
  options: DeviceNsmOptions = {},
): Promise<DeviceNsm> {
  const settings = {
    timeoutMs: options.timeoutMs ?? DEFAULT_NSM_TIMEOUT_MS,
    maxQueue: options.maxQueue ?? DEFAULT_NSM_MAX_QUEUE,
    logger: options.logger ?? silentLogger(),
  };
  if (options.ioctl !== undefined) return new DeviceNsm(options.ioctl, async () => undefined, settings);

  try {
    await stat(path);
  } catch (error) {
    const code = errorCode(error);
    const what =
      code === 'ENOENT'
        ? `${path} is missing: this is not a Nitro Enclave.`
        : `${path} cannot be used (${code ?? 'unknown error'}).`;
    throw new NsmUnavailableError(
      `${what} To run outside an enclave use \`enclave-runtime dev\` or set attestation.mode = "simulated".`,
      { cause: error },
    );
  }
  // A literal import, so the single-file bundle carries the binding; tests name a fake module instead.
  let binding: NativeNsmBinding;
  let addonPath: string | undefined;
  try {
    if (options.bindingUrl !== undefined) {
      binding = (await import(options.bindingUrl)) as NativeNsmBinding;
    } else {
      const native = await import('../native/native-binding.js');
      binding = native;
      addonPath = native.NATIVE_ADDON_PATH;
    }
  } catch (error) {
    throw new NsmUnavailableError(
      `${path} exists but the native addon that talks to it could not be loaded: ${(error as Error).message}`,
      { cause: error },
    );
  }
  let fd: number;
  try {
    fd = binding.openDevice(path);
  } catch (error) {
    throw new NsmUnavailableError(`cannot open ${path}: ${(error as Error).message}`, { cause: error });
  }
  const worker = new WorkerIoctl({ fd, bindingUrl: options.bindingUrl, addonPath }, settings.logger);
  const release = async (): Promise<void> => {
    await worker.close(settings.timeoutMs);
    binding.closeFd(fd);
  };
  settings.logger.debug({ path }, 'NSM device open');
  return new DeviceNsm((request, maxResponse) => worker.call(request, maxResponse), release, settings);
}

interface WorkerReply {
  id: number;
  response?: Uint8Array;
  error?: { message: string; code?: string };
}

/**
 * Runs the blocking ioctl on its own thread, so the event loop serving ingress and egress never
 * waits on the NSM; the DeviceNsm queue keeps one call in flight. The addon is imported only
 * by openDeviceNsm and this worker, so a missing addon breaks only the device path.
 */
class WorkerIoctl {
  readonly #worker: Worker;
  readonly #pending = new Map<number, { resolve: (bytes: Uint8Array) => void; reject: (error: Error) => void }>();
  #nextId = 0;
  #failure: Error | undefined;

  constructor(data: { fd: number; bindingUrl: string | undefined; addonPath: string | undefined }, logger: Logger) {
    this.#worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: { ...data, responseCap: NSM_RESPONSE_MAX_BYTES },
    });
    // A forgotten close must not keep the process alive.
    this.#worker.unref();
    this.#worker.on('message', (reply: WorkerReply) => {
      const waiter = this.#pending.get(reply.id);
      if (waiter === undefined) return;
      this.#pending.delete(reply.id);
      if (reply.response !== undefined) waiter.resolve(reply.response);
      else waiter.reject(Object.assign(new Error(reply.error?.message ?? 'no response'), { code: reply.error?.code }));
    });
    const fail = (error: Error): void => {
      if (this.#failure === undefined) logger.error({ err: { message: error.message } }, 'NSM worker stopped');
      this.#failure ??= error;
      for (const waiter of this.#pending.values()) waiter.reject(error);
      this.#pending.clear();
    };
    this.#worker.on('error', fail);
    this.#worker.on('exit', (code) => fail(new Error(`the NSM worker exited with code ${code}`)));
  }

  call(request: Uint8Array, maxResponse: number): Promise<Uint8Array> {
    if (this.#failure !== undefined) return Promise.reject(this.#failure);
    const id = this.#nextId++;
    return new Promise((resolve, reject) => {
      this.#pending.set(id, { resolve, reject });
      this.#worker.postMessage({ id, request, maxResponse });
    });
  }

  async close(timeoutMs: number): Promise<void> {
    this.#failure ??= new Error('closed');
    // A thread stuck in the kernel cannot be joined; do not hang shutdown on it.
    await withTimeout(this.#worker.terminate(), timeoutMs).catch(() => undefined);
  }
}

/**
 * The worker's code, self-contained: in the single-file bundle there is no module file to start a worker from.
 * It loads the addon itself (process.dlopen of the path the main thread found), or, in tests, a fake binding module.
 */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { getSystemErrorName } = require('node:util');
const ready = workerData.bindingUrl !== undefined
  ? import(workerData.bindingUrl).then((binding) => (request, max) => binding.nsmRequest(workerData.fd, request, max))
  : new Promise((resolve) => {
      const addon = { exports: {} };
      process.dlopen(addon, workerData.addonPath);
      resolve((request, max) => {
        const result = addon.exports.nsmRequest(workerData.fd, request, Math.min(max, workerData.responseCap));
        if (typeof result !== 'number') return result;
        const code = getSystemErrorName(result);
        throw Object.assign(new Error('ioctl ' + code + ' NSM'), { code });
      });
    });
// Messages are handled in order and each ioctl blocks this thread, so the device sees one at a time.
parentPort.on('message', (message) => {
  void ready.then(
    (call) => {
      try {
        parentPort.postMessage({ id: message.id, response: call(message.request, message.maxResponse) });
      } catch (error) {
        parentPort.postMessage({ id: message.id, error: typeof error.code === 'string' ? { message: error.message, code: error.code } : { message: String(error.message) } });
      }
    },
    (error) => parentPort.postMessage({ id: message.id, error: { message: 'native addon: ' + error.message } }),
  );
});
`;

function bytesOrNull(value: Uint8Array | undefined): Uint8Array | null {
  return value === undefined ? null : value;
}

function bytesField(body: Map<unknown, unknown>, name: string): Uint8Array {
  const value = body.get(name);
  if (!(value instanceof Uint8Array)) throw malformed(`field ${name} is not a byte string`);
  return new Uint8Array(value);
}

function malformed(why: string, cause?: unknown): NsmError {
  return new NsmError('ERR_NSM_DEVICE', `malformed NSM response: ${why}`, { cause });
}

function mismatched(expected: string, got: string): NsmError {
  return new NsmError('ERR_NSM_DEVICE', `the NSM answered a ${expected} request with ${got}`);
}

function deviceError(code: string, op: NsmDeviceRequest['kind']): NsmError {
  const known: Record<string, `ERR_NSM_${string}`> = {
    InputTooLarge: 'ERR_NSM_INPUT_TOO_LARGE',
    InvalidIndex: 'ERR_NSM_INVALID_INDEX',
    InvalidArgument: 'ERR_NSM_INVALID_ARGUMENT',
  };
  return new NsmError(known[code] ?? 'ERR_NSM_DEVICE', `the NSM refused ${op}: ${code}`);
}

async function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new NsmError('ERR_NSM_TIMEOUT', `the NSM did not answer within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}
