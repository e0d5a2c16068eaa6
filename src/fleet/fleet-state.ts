/**
 * What a fleet shares, as one versioned document per member, merged entry by entry:
 *
 * - `app`: the app's blob (PUT /fleet/state). Last writer wins on (version, writer): a PUT takes
 *   the highest version this member knows plus one; two PUTs of the same version on two members
 *   (concurrent, or during a split) are ordered by writer id, the same way on every member, so
 *   all converge on one value and the other write is lost. Apps that cannot lose a write keep a
 *   single writer (or merge inside the blob).
 * - `acmeAccount`: the ACME account key, (version, writer) as well: the first member to need one
 *   makes version 1; after a split, the higher writer id's account is kept by all.
 * - `acmeCertificate`: the served ACME certificate with its key: the later notAfter wins (the newest
 *   renewal), writer id on a tie.
 * - `acmeChallenges`: the TLS-ALPN-01 answers the orderer has pending (at most MAX_SHARED_CHALLENGES,
 *   each expiring within MAX_SHARED_CHALLENGE_LIFETIME_MS), so whichever member the CA's validation
 *   reaches can answer. (version, writer) as the whole list; the version is at least the wall clock
 *   in ms, so a restarted orderer's list is newer than the one it left behind.
 *
 * Persisted in the state dir (0600) so a runtime restart in the same enclave keeps it, except the
 * challenges: they are minutes-long and belong to an order the restart abandoned.
 */
import { randomBytes } from 'node:crypto';
import { readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import {
  MAX_CHALLENGE_PEM_CHARS,
  MAX_SHARED_CHALLENGE_LIFETIME_MS,
  MAX_SHARED_CHALLENGES,
  normalizeDomain,
  type SharedChallenge,
} from '../tls/tls-alpn-challenges.js';
import { MAX_APP_STATE_BYTES, MAX_SEALED_STATE_BYTES } from '../wire/fleet-message.js';
import { FleetError } from './fleet-error.js';
import { errorCode } from '../core/errors.js';

export const FLEET_STATE_FILE = 'fleet-state.json';
const WRITER = /^[0-9a-f]{16,64}$/;
const MAX_PEM_CHARS = 64 * 1024;
/** updatedAt becomes a response header on GET /fleet/state: only this shape passes. */
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?Z$/;

interface Versioned {
  version: number;
  writer: string;
}

export interface AppEntry extends Versioned {
  /** The blob, base64. */
  data: string;
  updatedAt: string;
}

export interface AcmeAccountEntry extends Versioned {
  keyPem: string;
}

export interface AcmeCertificateEntry {
  writer: string;
  certPem: string;
  chainPem: string;
  keyPem: string;
  notBefore: string;
  notAfter: string;
}

export interface AcmeChallengesEntry extends Versioned {
  challenges: SharedChallenge[];
}

export interface FleetSnapshot {
  app?: AppEntry;
  acmeAccount?: AcmeAccountEntry;
  acmeCertificate?: AcmeCertificateEntry;
  acmeChallenges?: AcmeChallengesEntry;
}

/** Which entries a merge replaced. */
export interface MergeOutcome {
  app: boolean;
  acmeAccount: boolean;
  acmeCertificate: boolean;
  acmeChallenges: boolean;
}

const NOTHING: MergeOutcome = { app: false, acmeAccount: false, acmeCertificate: false, acmeChallenges: false };
const DOMAIN_CHARS = 253;

export class FleetState {
  /** This member's writer id: random per start, so two members never share one. */
  readonly writer: string;
  readonly #path: string | undefined;
  #snapshot: FleetSnapshot;
  #encoded: Buffer | undefined;
  readonly #listeners = new Set<(outcome: MergeOutcome) => void>();
  #saving: Promise<void> = Promise.resolve();

  private constructor(snapshot: FleetSnapshot, path: string | undefined, writer?: string) {
    this.#snapshot = snapshot;
    this.#path = path;
    this.writer = writer ?? randomBytes(8).toString('hex');
  }

  /** The state of `stateDir` (empty when there is none); undefined `stateDir` keeps it in memory only. */
  static async open(stateDir?: string, writer?: string): Promise<FleetState> {
    if (stateDir === undefined) return new FleetState({}, undefined, writer);
    const path = join(stateDir, FLEET_STATE_FILE);
    let text: string | undefined;
    try {
      text = await readFile(path, 'utf8');
    } catch (error) {
      if (errorCode(error) !== 'ENOENT')
        throw new FleetError('ERR_FLEET_STATE', `cannot read ${path}: ${(error as Error).message}`);
    }
    const snapshot = text === undefined ? {} : parseSnapshot(Buffer.from(text, 'utf8'), path);
    return new FleetState(snapshot, path, writer);
  }

  get app(): AppEntry | undefined {
    return this.#snapshot.app;
  }

  get acmeAccount(): AcmeAccountEntry | undefined {
    return this.#snapshot.acmeAccount;
  }

  get acmeCertificate(): AcmeCertificateEntry | undefined {
    return this.#snapshot.acmeCertificate;
  }

  /** The pending TLS-ALPN-01 answers, expired ones left out. */
  acmeChallenges(now = Date.now()): SharedChallenge[] {
    return (this.#snapshot.acmeChallenges?.challenges ?? []).filter((challenge) => challenge.expiresAt > now);
  }

  /** Adds (or replaces) the pending answer for `challenge.domain`; expired ones are dropped. */
  async putAcmeChallenge(challenge: SharedChallenge, now = Date.now()): Promise<void> {
    if (challenge.expiresAt > now + MAX_SHARED_CHALLENGE_LIFETIME_MS)
      throw new FleetError(
        'ERR_FLEET_STATE',
        `a shared challenge lives at most ${MAX_SHARED_CHALLENGE_LIFETIME_MS} ms`,
      );
    const domain = normalizeDomain(challenge.domain);
    const others = this.acmeChallenges(now).filter((entry) => entry.domain !== domain);
    if (others.length >= MAX_SHARED_CHALLENGES)
      throw new FleetError('ERR_FLEET_STATE', `${MAX_SHARED_CHALLENGES} shared challenges are already pending`);
    await this.#putChallenges([...others, { ...challenge, domain }], now);
  }

  /** Drops the pending answer for `domain` (and expired ones). */
  async removeAcmeChallenge(domain: string, now = Date.now()): Promise<void> {
    const name = normalizeDomain(domain);
    const current = this.#snapshot.acmeChallenges?.challenges ?? [];
    const kept = this.acmeChallenges(now).filter((entry) => entry.domain !== name);
    if (kept.length === current.length) return;
    await this.#putChallenges(kept, now);
  }

  async #putChallenges(challenges: SharedChallenge[], now: number): Promise<void> {
    const entry: AcmeChallengesEntry = {
      version: Math.max((this.#snapshot.acmeChallenges?.version ?? 0) + 1, now),
      writer: this.writer,
      challenges,
    };
    this.#snapshot = { ...this.#snapshot, acmeChallenges: entry };
    await this.#changed({ ...NOTHING, acmeChallenges: true });
  }

  /** The whole state as it travels to peers. */
  encode(): Buffer {
    this.#encoded ??= Buffer.from(JSON.stringify(this.#snapshot), 'utf8');
    return this.#encoded;
  }

  /** Called after every change (a local write or a merge that replaced something). */
  onChange(listener: (outcome: MergeOutcome) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** The app's write: one version above the highest known. */
  async putApp(data: Uint8Array, now = new Date()): Promise<AppEntry> {
    if (data.byteLength > MAX_APP_STATE_BYTES)
      throw new FleetError(
        'ERR_FLEET_STATE',
        `the app state is ${data.byteLength} bytes; at most ${MAX_APP_STATE_BYTES}`,
      );
    const entry: AppEntry = {
      version: (this.#snapshot.app?.version ?? 0) + 1,
      writer: this.writer,
      data: Buffer.from(data).toString('base64'),
      updatedAt: now.toISOString(),
    };
    this.#snapshot = { ...this.#snapshot, app: entry };
    await this.#changed({ ...NOTHING, app: true });
    return entry;
  }

  async putAcmeAccount(keyPem: string): Promise<AcmeAccountEntry> {
    const entry: AcmeAccountEntry = {
      version: (this.#snapshot.acmeAccount?.version ?? 0) + 1,
      writer: this.writer,
      keyPem,
    };
    this.#snapshot = { ...this.#snapshot, acmeAccount: entry };
    await this.#changed({ ...NOTHING, acmeAccount: true });
    return entry;
  }

  async putAcmeCertificate(entry: Omit<AcmeCertificateEntry, 'writer'>): Promise<void> {
    this.#snapshot = { ...this.#snapshot, acmeCertificate: { ...entry, writer: this.writer } };
    await this.#changed({ ...NOTHING, acmeCertificate: true });
  }

  /** Takes what is newer in a peer's state (bytes as `encode` wrote them); throws ERR_FLEET_STATE when malformed. */
  async merge(bytes: Buffer): Promise<MergeOutcome> {
    const incoming = parseSnapshot(bytes, 'the peer state');
    const next: FleetSnapshot = { ...this.#snapshot };
    const outcome: MergeOutcome = { ...NOTHING };
    if (incoming.app && newer(incoming.app, next.app)) {
      next.app = incoming.app;
      outcome.app = true;
    }
    if (incoming.acmeAccount && newer(incoming.acmeAccount, next.acmeAccount)) {
      next.acmeAccount = incoming.acmeAccount;
      outcome.acmeAccount = true;
    }
    if (incoming.acmeCertificate && newerCertificate(incoming.acmeCertificate, next.acmeCertificate)) {
      next.acmeCertificate = incoming.acmeCertificate;
      outcome.acmeCertificate = true;
    }
    if (incoming.acmeChallenges && newer(incoming.acmeChallenges, next.acmeChallenges)) {
      next.acmeChallenges = incoming.acmeChallenges;
      outcome.acmeChallenges = true;
    }
    if (outcome.app || outcome.acmeAccount || outcome.acmeCertificate || outcome.acmeChallenges) {
      this.#snapshot = next;
      await this.#changed(outcome);
    }
    return outcome;
  }

  async #changed(outcome: MergeOutcome): Promise<void> {
    this.#encoded = undefined;
    for (const listener of this.#listeners) listener(outcome);
    if (this.#path === undefined) return;
    const path = this.#path;
    const { acmeChallenges: _notKept, ...kept } = this.#snapshot;
    const bytes = Buffer.from(JSON.stringify(kept), 'utf8');
    // Writes are chained so an older snapshot never lands after a newer one; a failed write does
    // not poison the chain (its caller already got the error), so the next change retries the file.
    const write = this.#saving
      .catch(() => {})
      .then(async () => {
        const temp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
        try {
          await writeFile(temp, bytes, { mode: 0o600 });
          await rename(temp, path);
        } catch (error) {
          throw new FleetError('ERR_FLEET_STATE', `cannot write ${path}: ${(error as Error).message}`, {
            cause: error,
          });
        }
      });
    this.#saving = write;
    await write;
  }
}

function newer(candidate: Versioned, current: Versioned | undefined): boolean {
  if (current === undefined) return true;
  if (candidate.version !== current.version) return candidate.version > current.version;
  return candidate.writer > current.writer;
}

function newerCertificate(candidate: AcmeCertificateEntry, current: AcmeCertificateEntry | undefined): boolean {
  if (current === undefined) return true;
  const a = Date.parse(candidate.notAfter);
  const b = Date.parse(current.notAfter);
  if (a !== b) return a > b;
  return candidate.writer > current.writer;
}

/** A snapshot from bytes nobody here wrote: every field checked and bounded. */
export function parseSnapshot(bytes: Buffer, what: string): FleetSnapshot {
  const bad = (detail: string) => new FleetError('ERR_FLEET_STATE', `${what} is not a fleet state: ${detail}`);
  if (bytes.byteLength > MAX_SEALED_STATE_BYTES) throw bad(`${bytes.byteLength} bytes`);
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw bad('not JSON');
  }
  if (!isObject(parsed)) throw bad('not an object');
  const snapshot: FleetSnapshot = {};
  if (parsed.app !== undefined) {
    const app = parsed.app;
    if (
      !isObject(app) ||
      !versioned(app) ||
      typeof app.data !== 'string' ||
      typeof app.updatedAt !== 'string' ||
      !ISO_TIME.test(app.updatedAt)
    )
      throw bad('app is not {version, writer, data, updatedAt}');
    if (app.data.length > Math.ceil(MAX_APP_STATE_BYTES / 3) * 4 || !/^[A-Za-z0-9+/]*={0,2}$/.test(app.data))
      throw bad('app.data is not base64 of at most 1 MiB');
    snapshot.app = { version: app.version, writer: app.writer, data: app.data, updatedAt: app.updatedAt };
  }
  if (parsed.acmeAccount !== undefined) {
    const account = parsed.acmeAccount;
    if (!isObject(account) || !versioned(account) || !pem(account.keyPem))
      throw bad('acmeAccount is not {version, writer, keyPem}');
    snapshot.acmeAccount = { version: account.version, writer: account.writer, keyPem: account.keyPem };
  }
  if (parsed.acmeCertificate !== undefined) {
    const cert = parsed.acmeCertificate;
    if (
      !isObject(cert) ||
      typeof cert.writer !== 'string' ||
      !WRITER.test(cert.writer) ||
      !pem(cert.certPem) ||
      !pem(cert.chainPem, true) ||
      !pem(cert.keyPem) ||
      !Number.isFinite(Date.parse(String(cert.notBefore))) ||
      !Number.isFinite(Date.parse(String(cert.notAfter)))
    )
      throw bad('acmeCertificate is not {writer, certPem, chainPem, keyPem, notBefore, notAfter}');
    snapshot.acmeCertificate = {
      writer: cert.writer,
      certPem: cert.certPem as string,
      chainPem: cert.chainPem as string,
      keyPem: cert.keyPem as string,
      notBefore: String(cert.notBefore),
      notAfter: String(cert.notAfter),
    };
  }
  if (parsed.acmeChallenges !== undefined) {
    const entry = parsed.acmeChallenges;
    if (!isObject(entry) || !versioned(entry) || !Array.isArray(entry.challenges))
      throw bad('acmeChallenges is not {version, writer, challenges}');
    if (entry.challenges.length > MAX_SHARED_CHALLENGES)
      throw bad(`acmeChallenges has ${entry.challenges.length} challenges; at most ${MAX_SHARED_CHALLENGES}`);
    const challenges: SharedChallenge[] = [];
    for (const item of entry.challenges as unknown[]) {
      if (
        !isObject(item) ||
        typeof item.domain !== 'string' ||
        item.domain.length === 0 ||
        item.domain.length > DOMAIN_CHARS ||
        typeof item.certPem !== 'string' ||
        item.certPem.length > MAX_CHALLENGE_PEM_CHARS ||
        !item.certPem.includes('-----BEGIN ') ||
        typeof item.keyPem !== 'string' ||
        item.keyPem.length > MAX_CHALLENGE_PEM_CHARS ||
        !item.keyPem.includes('-----BEGIN ') ||
        !Number.isSafeInteger(item.expiresAt)
      )
        throw bad('an acmeChallenges entry is not {domain, certPem, keyPem, expiresAt} within bounds');
      challenges.push({
        domain: item.domain,
        certPem: item.certPem,
        keyPem: item.keyPem,
        expiresAt: item.expiresAt as number,
      });
    }
    snapshot.acmeChallenges = { version: entry.version, writer: entry.writer, challenges };
  }
  return snapshot;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function versioned(value: Record<string, unknown>): value is Record<string, unknown> & Versioned {
  return (
    Number.isSafeInteger(value.version) &&
    (value.version as number) > 0 &&
    typeof value.writer === 'string' &&
    WRITER.test(value.writer)
  );
}

function pem(value: unknown, emptyOk = false): value is string {
  return typeof value === 'string' && value.length <= MAX_PEM_CHARS && (emptyOk ? true : value.includes('-----BEGIN '));
}
