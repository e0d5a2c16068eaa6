import { createHash, randomBytes, sign, type KeyObject } from 'node:crypto';
import { Encoder } from 'cbor-x';
import type { Logger } from '../core/log.js';
import { silentLogger } from '../core/log.js';
import { assertAttestationRequest, NsmError, type AttestationRequest, type Nsm, type PcrReading } from './nsm.js';
import { openSimulatedChain, type SimulatedChain } from './sim-chain.js';

/** Documents carry PCRs 0..15, each a SHA-384 value. */
export const DOCUMENT_PCR_COUNT = 16;
export const PCR_BYTES = 48;
/** Real hardware exposes 32 PCRs; 16..31 are the unlocked, application-extendable ones. */
export const NSM_PCR_COUNT = 32;
/** What the real NSM returns per GetRandom call. */
export const NSM_RANDOM_BYTES = 256;

// COSE protected header {1: -35}: alg ES384, byte for byte as in real documents.
const PROTECTED_HEADER = Uint8Array.of(0xa1, 0x01, 0x38, 0x22);
const EMPTY = new Uint8Array(0);
// Image, kernel, application and instance measurements are never zero on real non-debug enclaves;
// PCR3 (IAM role) and PCR8 (signing cert) are zero when unused, which is the common case.
const DEFAULT_NONZERO_PCRS = [0, 1, 2, 4];
const DEBUG_ZERO_PCRS = [0, 1, 2];
const MODULE_ID_PATTERN = /^[A-Za-z0-9._-]{1,128}$/;

// Integer keys stay integers, bytes stay untagged bstr, maps get minimal length headers: as the NSM writes them.
const cbor = new Encoder({ useRecords: false, tagUint8Array: false, variableMapSize: true, mapsAsObjects: false });

export interface SimulatedNsmOptions {
  /** Where the simulated PKI lives; `sim-nsm-root.pem` there is what verifiers trust. */
  stateDir: string;
  /** PCR values by index (0..15), 48 bytes each. Unset ones get the defaults of `defaultSimulatedPcr`. */
  pcrs?: Record<number, Uint8Array>;
  /** A debug-mode enclave: PCR0..2 read as all zero whatever was configured, as on real hardware. */
  debug?: boolean;
  /** Default: the chain's instance id plus a random enclave id, like `i-0123…-enc0123…`. */
  moduleId?: string;
  /** Default 3 h, like AWS. */
  signingCertLifetimeMs?: number;
  now?: () => number;
  logger?: Logger;
}

/** The deterministic PCR value used for `index` when none is configured (zero for unused PCRs). */
export function defaultSimulatedPcr(index: number): Uint8Array {
  if (!DEFAULT_NONZERO_PCRS.includes(index)) return new Uint8Array(PCR_BYTES);
  return new Uint8Array(createHash('sha384').update(`enclave-runtime simulated PCR${index}`).digest());
}

/** An NSM for `dev` and tests: real document schema and signature, signed by a chain from the state dir. */
export class SimulatedNsm implements Nsm {
  readonly kind = 'simulated' as const;
  readonly moduleId: string;
  readonly debug: boolean;
  readonly #pcrs: readonly Uint8Array[];
  readonly #chain: SimulatedChain;
  readonly #now: () => number;
  #closed = false;

  constructor(chain: SimulatedChain, pcrs: readonly Uint8Array[], moduleId: string, debug: boolean, now: () => number) {
    this.#chain = chain;
    this.#pcrs = pcrs;
    this.moduleId = moduleId;
    this.debug = debug;
    this.#now = now;
  }

  /** Path of the root certificate that verifies this NSM's documents. */
  get rootPath(): string {
    return this.#chain.rootPath;
  }

  /** The root certificate in PEM. */
  get rootPem(): string {
    return this.#chain.rootPem;
  }

  /** Returns a signed COSE_Sign1 document carrying exactly the given fields. */
  async attest(request: AttestationRequest): Promise<Uint8Array> {
    this.#assertOpen();
    assertAttestationRequest(request);
    const identity = await this.#chain.signingIdentity(this.moduleId);
    const pcrs = new Map<number, Uint8Array>();
    for (let i = 0; i < DOCUMENT_PCR_COUNT; i++) pcrs.set(i, this.#pcrs[i]!);
    // Key order and null-for-absent exactly as the NSM emits them; verifiers and parsers rely on neither, but tests compare.
    const payload = encode(
      new Map<string, unknown>([
        ['module_id', this.moduleId],
        ['digest', 'SHA384'],
        ['timestamp', BigInt(Math.trunc(this.#now()))],
        ['pcrs', pcrs],
        ['certificate', identity.certificate],
        ['cabundle', identity.cabundle],
        ['public_key', request.publicKey ?? null],
        ['user_data', request.userData ?? null],
        ['nonce', request.nonce ?? null],
      ]),
    );
    const toBeSigned = encode(['Signature1', PROTECTED_HEADER, EMPTY, payload]);
    // The callback form signs on the libuv pool: a P-384 signature is the costliest step of a
    // simulated attestation, and done inline it held the event loop for every nonce handshake.
    const signature = await signOffThread(toBeSigned, identity.privateKey);
    return encode([PROTECTED_HEADER, new Map(), payload, signature]);
  }

  /** PCRs 0..15 are locked (measured at boot); 16..31 are unlocked and zero. */
  async describePcr(index: number): Promise<PcrReading> {
    this.#assertOpen();
    if (!Number.isInteger(index) || index < 0 || index >= NSM_PCR_COUNT) {
      throw new NsmError('ERR_NSM_INVALID_INDEX', `PCR index ${index} is out of range 0..${NSM_PCR_COUNT - 1}`);
    }
    const data = index < DOCUMENT_PCR_COUNT ? this.#pcrs[index]! : new Uint8Array(PCR_BYTES);
    return { locked: index < DOCUMENT_PCR_COUNT, data: new Uint8Array(data) };
  }

  /** 256 bytes from the OS CSPRNG, the size the real NSM returns. */
  async getRandom(): Promise<Uint8Array> {
    this.#assertOpen();
    return new Uint8Array(randomBytes(NSM_RANDOM_BYTES));
  }

  /** Stops serving; the persisted chain stays for the next open. */
  async close(): Promise<void> {
    this.#closed = true;
  }

  #assertOpen(): void {
    if (this.#closed) throw new NsmError('ERR_NSM_CLOSED', 'the simulated NSM is closed');
  }
}

/** Opens the simulated NSM of `stateDir`, creating its chain on first use. */
export async function openSimulatedNsm(options: SimulatedNsmOptions): Promise<SimulatedNsm> {
  const debug = options.debug ?? false;
  const pcrs = resolvePcrs(options.pcrs ?? {}, debug);
  if (options.moduleId !== undefined && !MODULE_ID_PATTERN.test(options.moduleId)) {
    throw new NsmError(
      'ERR_NSM_INVALID_ARGUMENT',
      `moduleId must be 1-128 characters of A-Z a-z 0-9 . _ -, got ${JSON.stringify(options.moduleId)}`,
    );
  }
  const now = options.now ?? Date.now;
  const logger = options.logger ?? silentLogger();
  const chain = await openSimulatedChain({
    stateDir: options.stateDir,
    now,
    logger,
    ...(options.signingCertLifetimeMs !== undefined ? { signingCertLifetimeMs: options.signingCertLifetimeMs } : {}),
  });
  // Like a real launch: the instance stays, the enclave id is new each time.
  const moduleId = options.moduleId ?? `${chain.instanceId}-enc${randomBytes(8).toString('hex')}`;
  const nsm = new SimulatedNsm(chain, pcrs, moduleId, debug, now);
  // Issue the first leaf now so a broken state dir fails at startup, not on the first request.
  await chain.signingIdentity(moduleId);
  logger.debug({ moduleId, debug, root: chain.rootPath }, 'simulated NSM ready');
  return nsm;
}

function resolvePcrs(configured: Record<number, Uint8Array>, debug: boolean): Uint8Array[] {
  const pcrs = Array.from({ length: DOCUMENT_PCR_COUNT }, (_, i) => defaultSimulatedPcr(i));
  for (const [key, value] of Object.entries(configured)) {
    const index = Number(key);
    if (!/^(0|[1-9][0-9]?)$/.test(key) || index >= DOCUMENT_PCR_COUNT) {
      throw new NsmError(
        'ERR_NSM_INVALID_ARGUMENT',
        `PCR index ${JSON.stringify(key)} is not one of 0..${DOCUMENT_PCR_COUNT - 1}`,
      );
    }
    if (!(value instanceof Uint8Array) || value.byteLength !== PCR_BYTES) {
      const size = value instanceof Uint8Array ? `${value.byteLength} bytes` : typeof value;
      throw new NsmError('ERR_NSM_INVALID_ARGUMENT', `PCR${index} must be ${PCR_BYTES} bytes (SHA-384), got ${size}`);
    }
    pcrs[index] = new Uint8Array(value);
  }
  if (debug) for (const index of DEBUG_ZERO_PCRS) pcrs[index] = new Uint8Array(PCR_BYTES);
  return pcrs;
}

function signOffThread(data: Uint8Array, key: KeyObject): Promise<Uint8Array> {
  return new Promise((resolve, reject) => {
    sign('sha384', data, { key, dsaEncoding: 'ieee-p1363' }, (err, signature) =>
      err ? reject(err) : resolve(new Uint8Array(signature)),
    );
  });
}

function encode(value: unknown): Uint8Array {
  // cbor-x may hand back a view of its reusable buffer; copy so a later encode cannot touch it.
  return new Uint8Array(cbor.encode(value));
}
