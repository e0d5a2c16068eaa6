import { createHash, X509Certificate } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AttestationError } from './attestation-error.js';

/**
 * SHA-256 of the DER of AWS's "aws.nitro-enclaves" root G1, as AWS publishes it. The bundled
 * PEM must hash to this, so a tampered or swapped file in an install cannot become the trust anchor.
 */
export const AWS_NITRO_ROOT_G1_SHA256 = '641A0321A3E244EFE456463195D606317ED7CDCC3C1756E09893F3C68F79BB5B';
export const AWS_NITRO_ROOT_G1_FILE = 'aws-nitro-root-g1.pem';
/** A root PEM is one or a few certificates; anything bigger is not a root file. */
export const MAX_ROOT_PEM_BYTES = 64 * 1024;
export const MAX_TRUSTED_ROOTS = 16;
const MAX_PACKAGE_ROOT_DEPTH = 6;
const MAX_CACHED_ROOT_SETS = 16;

/** What a chain may end at: certificates pinned by exact DER, keyed by their SHA-256. */
export interface TrustedRoots {
  /** Uppercase hex SHA-256 of each root's DER → the root. */
  readonly byFingerprint: ReadonlyMap<string, X509Certificate>;
}

/** The `root` option of verification: PEM text (one or more certificates), DER bytes, or a parsed certificate. */
export type RootInput = X509Certificate | string | Uint8Array;

let bundled: TrustedRoots | undefined;
const byPem = new Map<string, TrustedRoots>();
const byDer = new Map<string, TrustedRoots>();
const byObject = new WeakMap<X509Certificate, TrustedRoots>();

/** Uppercase hex SHA-256 of DER bytes, the form AWS publishes fingerprints in. */
export function sha256Fingerprint(der: Uint8Array): string {
  return createHash('sha256').update(der).digest('hex').toUpperCase();
}

/** The path of the bundled AWS root PEM, from src/ or from dist/src/ alike. */
export function bundledRootPath(): string {
  const here = dirname(fileURLToPath(import.meta.url));
  const beside = join(here, 'roots', AWS_NITRO_ROOT_G1_FILE);
  if (existsSync(beside)) return beside;
  // tsc does not copy the PEM into dist/, and the package ships it under src/verify/roots.
  let dir = here;
  for (let depth = 0; depth < MAX_PACKAGE_ROOT_DEPTH; depth++) {
    if (existsSync(join(dir, 'package.json'))) return join(dir, 'src', 'verify', 'roots', AWS_NITRO_ROOT_G1_FILE);
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return beside;
}

/** The bundled AWS Nitro root G1, loaded once and checked against the published fingerprint. */
export function awsNitroRoot(): TrustedRoots {
  if (bundled !== undefined) return bundled;
  const path = bundledRootPath();
  let pem: string;
  try {
    pem = readFileSync(path, 'utf8');
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_ROOT', `cannot read the bundled AWS Nitro root ${path}`, {
      cause: error,
    });
  }
  const roots = parseRootPem(pem, path);
  const [fingerprint] = roots.byFingerprint.keys();
  if (roots.byFingerprint.size !== 1 || fingerprint !== AWS_NITRO_ROOT_G1_SHA256) {
    throw new AttestationError(
      'ERR_ATTESTATION_ROOT',
      `the bundled root ${path} has SHA-256 ${fingerprint ?? 'none'}, not the published AWS Nitro root G1 ${AWS_NITRO_ROOT_G1_SHA256}`,
    );
  }
  bundled = roots;
  return roots;
}

/** Resolves the `root` option (default: the bundled AWS root) into pinned roots; parsed roots are cached. */
export function resolveTrustedRoots(root?: RootInput): TrustedRoots {
  if (root === undefined) return awsNitroRoot();
  if (root instanceof X509Certificate) {
    let roots = byObject.get(root);
    if (roots === undefined) {
      roots = { byFingerprint: new Map([[sha256Fingerprint(root.raw), root]]) };
      byObject.set(root, roots);
    }
    return roots;
  }
  if (typeof root === 'string') return cached(byPem, root, () => parseRootPem(root, 'the root PEM'));
  if (root instanceof Uint8Array) {
    const fingerprint = sha256Fingerprint(root);
    return cached(byDer, fingerprint, () => ({
      byFingerprint: new Map([[fingerprint, parseRootDer(root, 'the root DER')]]),
    }));
  }
  throw new AttestationError('ERR_ATTESTATION_ROOT', 'root must be PEM text, DER bytes or an X509Certificate');
}

/** Reads a user's root PEM file (relative paths resolve against the working directory). */
export function readRootFile(path: string): TrustedRoots {
  let pem: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.byteLength > MAX_ROOT_PEM_BYTES) throw new Error(`larger than ${MAX_ROOT_PEM_BYTES} bytes`);
    pem = bytes.toString('utf8');
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_ROOT', `cannot read root file ${path}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  return parseRootPem(pem, path);
}

/** Parses every CERTIFICATE block of a PEM text into pinned roots. */
export function parseRootPem(pem: string, source: string): TrustedRoots {
  if (pem.length > MAX_ROOT_PEM_BYTES) {
    throw new AttestationError('ERR_ATTESTATION_ROOT', `${source} is larger than ${MAX_ROOT_PEM_BYTES} bytes`);
  }
  const blocks = [...pem.matchAll(/-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]+?)-----END CERTIFICATE-----/g)];
  if (blocks.length === 0)
    throw new AttestationError('ERR_ATTESTATION_ROOT', `${source} holds no PEM CERTIFICATE block`);
  if (blocks.length > MAX_TRUSTED_ROOTS) {
    throw new AttestationError(
      'ERR_ATTESTATION_ROOT',
      `${source} holds ${blocks.length} certificates, at most ${MAX_TRUSTED_ROOTS} are accepted`,
    );
  }
  const byFingerprint = new Map<string, X509Certificate>();
  for (const block of blocks) {
    const der = Buffer.from(block[1]!.replace(/\s+/g, ''), 'base64');
    byFingerprint.set(sha256Fingerprint(der), parseRootDer(der, source));
  }
  return { byFingerprint };
}

function parseRootDer(der: Uint8Array, source: string): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch (error) {
    throw new AttestationError('ERR_ATTESTATION_ROOT', `${source} is not an X.509 certificate`, { cause: error });
  }
}

function cached(cache: Map<string, TrustedRoots>, key: string, load: () => TrustedRoots): TrustedRoots {
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const roots = load();
  if (cache.size >= MAX_CACHED_ROOT_SETS) cache.delete(cache.keys().next().value!);
  cache.set(key, roots);
  return roots;
}
