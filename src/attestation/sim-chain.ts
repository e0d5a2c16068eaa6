// @peculiar/x509 resolves its services through tsyringe, which needs the Reflect metadata
// polyfill loaded first; ESM evaluates imports in order, so this line must stay above it.
import 'reflect-metadata';
import { KeyObject, createPrivateKey, createPublicKey, randomBytes, webcrypto } from 'node:crypto';
import { link, mkdir, open, readFile, rename, stat, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import * as x509 from '@peculiar/x509';
import type { Logger } from '../core/log.js';
import { silentLogger } from '../core/log.js';
import { NsmError } from './nsm.js';
import { errorCode } from '../core/errors.js';

/** SPEC: the simulated NSM's root certificate, for verifiers to trust. */
export const SIM_ROOT_FILE = 'sim-nsm-root.pem';
/** The persisted CA keys and certificates (mode 0600): the same root on every start. */
export const SIM_CHAIN_FILE = 'sim-nsm-chain.json';

/** AWS issues each enclave signing certificate for 3 hours. */
export const DEFAULT_SIGNING_CERT_LIFETIME_MS = 3 * 60 * 60 * 1000;

const HOUR = 60 * 60 * 1000;
const DAY = 24 * HOUR;
const YEAR = 365 * DAY;
const ROOT_LIFETIME_MS = 30 * YEAR;
// Real intermediates live days; ours are persisted, so they live long and are re-issued when a leaf no longer fits.
const INTERMEDIATE_LIFETIMES_MS = [3 * YEAR, 2 * YEAR, YEAR] as const;
// Backdating absorbs clock skew between this host and a verifier.
const CA_BACKDATE_MS = DAY;
const LEAF_BACKDATE_MS = 60 * 1000;
const MIN_LEAF_LIFETIME_MS = 60 * 1000;
const MAX_LEAF_LIFETIME_MS = 30 * DAY;
const MAX_STATE_FILE_BYTES = 64 * 1024;
const STATE_VERSION = 1;
const REGION = 'sim';

const EC_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-384' } as const;
const SIGNING_ALGORITHM = { name: 'ECDSA', hash: 'SHA-384' } as const;
const CA_USAGES = x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign;

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const crypto = webcrypto;
x509.cryptoProvider.set(crypto);

/** What signs documents right now: the leaf, its issuers (root first) and its in-memory key. */
export interface SigningIdentity {
  /** DER of the leaf certificate that goes into `certificate`. */
  readonly certificate: Uint8Array;
  /** DER certificates for `cabundle`: root, regional, zonal, instance. */
  readonly cabundle: readonly Uint8Array[];
  readonly privateKey: KeyObject;
  readonly moduleId: string;
  readonly notBefore: number;
  readonly notAfter: number;
}

export interface SimulatedChainOptions {
  stateDir: string;
  /** Leaf lifetime; the leaf is replaced once less than a third of it remains. */
  signingCertLifetimeMs?: number;
  now?: () => number;
  logger?: Logger;
}

interface CaEntry {
  cert: x509.X509Certificate;
  der: Uint8Array;
  key: KeyObject;
  pkcs8Pem: string;
}

interface ChainState {
  instanceId: string;
  root: CaEntry;
  /** regional, zonal, instance: each issued by the one before it, the first by the root. */
  intermediates: CaEntry[];
}

interface StoredCa {
  cert: string;
  key: string;
}

interface StoredChain {
  version: number;
  instanceId: string;
  root: StoredCa;
  intermediates: StoredCa[];
}

/**
 * The simulated Nitro PKI of one state dir: a persisted root and three intermediates, and a
 * short-lived signing leaf whose key never leaves memory.
 */
export class SimulatedChain {
  /** The AWS-like instance id (`i-` and 17 hex digits), persisted with the chain. */
  readonly instanceId: string;
  readonly rootPath: string;
  readonly #stateDir: string;
  readonly #lifetimeMs: number;
  readonly #now: () => number;
  readonly #logger: Logger;
  #state: ChainState;
  #leaf: SigningIdentity | undefined;
  #pending: Promise<SigningIdentity> | undefined;

  constructor(stateDir: string, state: ChainState, lifetimeMs: number, now: () => number, logger: Logger) {
    this.#stateDir = stateDir;
    this.#state = state;
    this.#lifetimeMs = lifetimeMs;
    this.#now = now;
    this.#logger = logger;
    this.instanceId = state.instanceId;
    this.rootPath = join(stateDir, SIM_ROOT_FILE);
  }

  /** The root certificate in PEM, as written to `<state-dir>/sim-nsm-root.pem`. */
  get rootPem(): string {
    return this.#state.root.cert.toString('pem');
  }

  /** DER of the root certificate. */
  get rootDer(): Uint8Array {
    return this.#state.root.der;
  }

  /** The current signing identity for `moduleId`, issuing a new leaf when the old one is near its end. */
  async signingIdentity(moduleId: string): Promise<SigningIdentity> {
    const now = this.#now();
    const leaf = this.#leaf;
    if (leaf !== undefined && leaf.moduleId === moduleId && this.#leafUsable(leaf, now)) return leaf;
    // One rotation at a time: concurrent callers share it instead of minting several leaves.
    if (this.#pending === undefined) {
      this.#pending = this.#issueLeaf(moduleId).finally(() => {
        this.#pending = undefined;
      });
    }
    const issued = await this.#pending;
    return issued.moduleId === moduleId ? issued : this.signingIdentity(moduleId);
  }

  #leafUsable(leaf: SigningIdentity, now: number): boolean {
    return now >= leaf.notBefore && leaf.notAfter - now >= this.#lifetimeMs / 3;
  }

  async #issueLeaf(moduleId: string): Promise<SigningIdentity> {
    const now = this.#now();
    const notBefore = now - LEAF_BACKDATE_MS;
    const notAfter = now + this.#lifetimeMs;
    if (!covers(this.#state.root.cert, notBefore, notAfter)) {
      this.#logger.warn(
        { stateDir: this.#stateDir },
        'simulated NSM root does not cover the clock; generating a new root',
      );
      this.#state = await generateState(now, this.#state.instanceId);
      await writeState(this.#stateDir, this.#state, 'replace');
    } else if (!this.#state.intermediates.every((ca) => covers(ca.cert, notBefore, notAfter))) {
      this.#logger.info({ stateDir: this.#stateDir }, 're-issuing simulated NSM intermediates');
      this.#state = {
        ...this.#state,
        intermediates: await issueIntermediates(this.#state.root, now, this.#state.instanceId),
      };
      await writeState(this.#stateDir, this.#state, 'replace');
    }
    const issuer = this.#state.intermediates[this.#state.intermediates.length - 1]!;
    const keys = (await crypto.subtle.generateKey(EC_ALGORITHM, false, ['sign', 'verify'])) as CryptoKeyPair;
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: serialNumber(),
        subject: `C=US, O=enclave-runtime, OU=Simulated NSM, CN=${moduleId}.${REGION}.aws`,
        issuer: issuer.cert.subject,
        notBefore: new Date(notBefore),
        notAfter: new Date(notAfter),
        publicKey: keys.publicKey,
        signingKey: await importSigningKey(issuer.key),
        signingAlgorithm: SIGNING_ALGORITHM,
        extensions: [
          new x509.BasicConstraintsExtension(false, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        ],
      },
      crypto,
    );
    const leaf: SigningIdentity = {
      certificate: new Uint8Array(cert.rawData),
      cabundle: [this.#state.root.der, ...this.#state.intermediates.map((ca) => ca.der)],
      privateKey: KeyObject.from(keys.privateKey),
      moduleId,
      notBefore: cert.notBefore.getTime(),
      notAfter: cert.notAfter.getTime(),
    };
    this.#leaf = leaf;
    this.#logger.debug({ moduleId, notAfter: cert.notAfter.toISOString() }, 'issued simulated NSM signing certificate');
    return leaf;
  }
}

/** Opens (or creates once, atomically) the simulated PKI persisted in `stateDir`. */
export async function openSimulatedChain(options: SimulatedChainOptions): Promise<SimulatedChain> {
  const now = options.now ?? Date.now;
  const logger = options.logger ?? silentLogger();
  const lifetimeMs = options.signingCertLifetimeMs ?? DEFAULT_SIGNING_CERT_LIFETIME_MS;
  if (!Number.isFinite(lifetimeMs) || lifetimeMs < MIN_LEAF_LIFETIME_MS || lifetimeMs > MAX_LEAF_LIFETIME_MS) {
    throw new NsmError(
      'ERR_NSM_INVALID_ARGUMENT',
      `signingCertLifetimeMs must be between ${MIN_LEAF_LIFETIME_MS} and ${MAX_LEAF_LIFETIME_MS}, got ${lifetimeMs}`,
    );
  }
  await mkdir(options.stateDir, { recursive: true, mode: 0o700 });
  let state = await readState(options.stateDir);
  if (state === undefined) {
    const fresh = await generateState(now(), undefined);
    // Two first starts race: whoever links first wins, the other adopts the winner's chain.
    const won = await writeState(options.stateDir, fresh, 'create');
    state = won ? fresh : await readState(options.stateDir);
    if (state === undefined)
      throw new NsmError('ERR_NSM_SIM_STATE', `${join(options.stateDir, SIM_CHAIN_FILE)} vanished while opening it`);
    if (won) logger.info({ stateDir: options.stateDir }, 'generated the simulated NSM certificate chain');
  }
  // Also repairs a deleted or edited root file; racing writers write identical bytes.
  await writeRootPem(options.stateDir, state);
  return new SimulatedChain(options.stateDir, state, lifetimeMs, now, logger);
}

function covers(cert: x509.X509Certificate, from: number, to: number): boolean {
  return cert.notBefore.getTime() <= from && cert.notAfter.getTime() >= to;
}

function serialNumber(): string {
  const bytes = randomBytes(16);
  // A positive, full-length DER INTEGER: clear the sign bit, keep the top byte non-zero.
  bytes[0] = (bytes[0]! & 0x7f) | 0x01;
  return bytes.toString('hex');
}

function randomHex(digits: number): string {
  return randomBytes(Math.ceil(digits / 2))
    .toString('hex')
    .slice(0, digits);
}

async function importSigningKey(key: KeyObject): Promise<CryptoKey> {
  const der = key.export({ format: 'der', type: 'pkcs8' });
  return crypto.subtle.importKey('pkcs8', der, EC_ALGORITHM, false, ['sign']);
}

async function newCaKeys(): Promise<{ keys: CryptoKeyPair; key: KeyObject; pkcs8Pem: string }> {
  const keys = (await crypto.subtle.generateKey(EC_ALGORITHM, true, ['sign', 'verify'])) as CryptoKeyPair;
  const key = KeyObject.from(keys.privateKey);
  return { keys, key, pkcs8Pem: key.export({ format: 'pem', type: 'pkcs8' }).toString() };
}

function caEntry(cert: x509.X509Certificate, key: KeyObject, pkcs8Pem: string): CaEntry {
  return { cert, der: new Uint8Array(cert.rawData), key, pkcs8Pem };
}

async function generateState(now: number, instanceId: string | undefined): Promise<ChainState> {
  const id = instanceId ?? `i-0${randomHex(16)}`;
  const { keys, key, pkcs8Pem } = await newCaKeys();
  const cert = await x509.X509CertificateGenerator.createSelfSigned(
    {
      serialNumber: serialNumber(),
      name: 'C=US, O=enclave-runtime, OU=Simulated NSM, CN=simulated.aws.nitro-enclaves',
      notBefore: new Date(now - CA_BACKDATE_MS),
      notAfter: new Date(now + ROOT_LIFETIME_MS),
      keys,
      signingAlgorithm: SIGNING_ALGORITHM,
      extensions: [
        new x509.BasicConstraintsExtension(true, undefined, true),
        new x509.KeyUsagesExtension(CA_USAGES, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
      ],
    },
    crypto,
  );
  const root = caEntry(cert, key, pkcs8Pem);
  return { instanceId: id, root, intermediates: await issueIntermediates(root, now, id) };
}

async function issueIntermediates(root: CaEntry, now: number, instanceId: string): Promise<CaEntry[]> {
  const names = [
    `C=US, O=enclave-runtime, OU=Simulated NSM, CN=${randomHex(16)}.${REGION}.aws.nitro-enclaves`,
    `C=US, O=enclave-runtime, OU=Simulated NSM, CN=${randomHex(16)}.zonal.${REGION}.aws.nitro-enclaves`,
    `C=US, O=enclave-runtime, OU=Simulated NSM, CN=${instanceId}.${REGION}.aws.nitro-enclaves`,
  ];
  const issued: CaEntry[] = [];
  let issuer = root;
  for (const [depth, subject] of names.entries()) {
    const { keys, key, pkcs8Pem } = await newCaKeys();
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: serialNumber(),
        subject,
        issuer: issuer.cert.subject,
        notBefore: new Date(now - CA_BACKDATE_MS),
        notAfter: new Date(Math.min(now + INTERMEDIATE_LIFETIMES_MS[depth]!, issuer.cert.notAfter.getTime())),
        publicKey: keys.publicKey,
        signingKey: await importSigningKey(issuer.key),
        signingAlgorithm: SIGNING_ALGORITHM,
        extensions: [
          // pathLen 2, 1, 0 as in the AWS chain: regional, zonal, instance.
          new x509.BasicConstraintsExtension(true, names.length - 1 - depth, true),
          new x509.KeyUsagesExtension(CA_USAGES, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, crypto),
          await x509.AuthorityKeyIdentifierExtension.create(issuer.cert.publicKey, false, crypto),
        ],
      },
      crypto,
    );
    const entry = caEntry(cert, key, pkcs8Pem);
    issued.push(entry);
    issuer = entry;
  }
  return issued;
}

function serialize(state: ChainState): string {
  const stored: StoredChain = {
    version: STATE_VERSION,
    instanceId: state.instanceId,
    root: { cert: state.root.cert.toString('pem'), key: state.root.pkcs8Pem },
    intermediates: state.intermediates.map((ca) => ({ cert: ca.cert.toString('pem'), key: ca.pkcs8Pem })),
  };
  return `${JSON.stringify(stored, null, 2)}\n`;
}

async function readState(stateDir: string): Promise<ChainState | undefined> {
  const path = join(stateDir, SIM_CHAIN_FILE);
  let text: string;
  try {
    const info = await stat(path);
    if (info.size > MAX_STATE_FILE_BYTES)
      throw corrupt(path, `it is ${info.size} bytes, more than ${MAX_STATE_FILE_BYTES}`);
    text = await readFile(path, 'utf8');
  } catch (error) {
    if (errorCode(error) === 'ENOENT') return undefined;
    throw error;
  }
  try {
    return await parseState(text);
  } catch (error) {
    if (error instanceof NsmError) throw error;
    // Regenerating would silently change the root that verifiers trust, so the user decides.
    throw corrupt(path, error instanceof Error ? error.message : String(error), error);
  }
}

function corrupt(path: string, why: string, cause?: unknown): NsmError {
  return new NsmError(
    'ERR_NSM_SIM_STATE',
    `${path} is unusable (${why}); delete it to generate a new simulated chain`,
    { cause },
  );
}

async function parseState(text: string): Promise<ChainState> {
  const stored = JSON.parse(text) as Partial<StoredChain>;
  if (stored.version !== STATE_VERSION) throw new Error(`version ${String(stored.version)}, expected ${STATE_VERSION}`);
  if (typeof stored.instanceId !== 'string' || !/^i-[0-9a-f]{17}$/.test(stored.instanceId))
    throw new Error('bad instanceId');
  if (stored.root === undefined || !Array.isArray(stored.intermediates) || stored.intermediates.length !== 3) {
    throw new Error('expected a root and 3 intermediates');
  }
  const root = loadCa(stored.root);
  const intermediates = stored.intermediates.map(loadCa);
  let issuer = root;
  for (const ca of [root, ...intermediates]) {
    if (!(await ca.cert.verify({ publicKey: issuer.cert.publicKey, signatureOnly: true }, crypto))) {
      throw new Error(`${ca.cert.subject} is not signed by ${issuer.cert.subject}`);
    }
    issuer = ca;
  }
  return { instanceId: stored.instanceId, root, intermediates };
}

function loadCa(stored: StoredCa): CaEntry {
  if (typeof stored?.cert !== 'string' || typeof stored.key !== 'string')
    throw new Error('a CA entry lacks cert or key');
  const cert = new x509.X509Certificate(stored.cert);
  const key = createPrivateKey(stored.key);
  const derivedSpki = createPublicKey(key).export({ format: 'der', type: 'spki' });
  if (!derivedSpki.equals(Buffer.from(cert.publicKey.rawData)))
    throw new Error(`the key of ${cert.subject} does not match its certificate`);
  return caEntry(cert, key, stored.key);
}

/**
 * Persists the chain ('replace' also rewrites the root PEM). 'create' never overwrites: it
 * returns false when another process created the chain first.
 */
async function writeState(stateDir: string, state: ChainState, how: 'create' | 'replace'): Promise<boolean> {
  const path = join(stateDir, SIM_CHAIN_FILE);
  const tmp = await writeTemp(path, serialize(state), 0o600);
  try {
    if (how === 'replace') {
      await rename(tmp, path);
    } else {
      try {
        await link(tmp, path);
      } catch (error) {
        const code = errorCode(error);
        if (code === 'EEXIST') return false;
        // Filesystems without hard links: fall back to a plain rename, losing only the race guard.
        if (code !== 'EPERM' && code !== 'ENOTSUP' && code !== 'ENOSYS') throw error;
        await rename(tmp, path);
      }
    }
  } finally {
    await unlink(tmp).catch(() => undefined);
  }
  if (how === 'replace') await writeRootPem(stateDir, state);
  return true;
}

async function writeRootPem(stateDir: string, state: ChainState): Promise<void> {
  const path = join(stateDir, SIM_ROOT_FILE);
  const pem = `${state.root.cert.toString('pem')}\n`;
  const current = await readFile(path, 'utf8').catch(() => undefined);
  if (current === pem) return;
  await rename(await writeTemp(path, pem, 0o644), path);
}

async function writeTemp(path: string, content: string, mode: number): Promise<string> {
  const tmp = `${path}.${process.pid}.${randomHex(8)}.tmp`;
  const handle = await open(tmp, 'wx', mode);
  try {
    await handle.writeFile(content);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return tmp;
}
