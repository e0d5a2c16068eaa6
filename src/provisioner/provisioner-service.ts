// @peculiar/x509 needs the Reflect metadata polyfill loaded before it (see certificate-authority.ts).
import 'reflect-metadata';
import * as x509 from '@peculiar/x509';
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { AttestationError } from '../verify/attestation-error.js';
import { resolveTrustedRoots } from '../verify/root-store.js';
import { checkPolicy, MAX_EXPECTED_PCR_SETS, verifyAttestation, type AttestationDocument } from '../verify/verifier.js';
import { formatAddress, type Address } from '../net/address.js';
import { listen, type Listener } from '../net/transport.js';
import { ConfigError, errorCode, RuntimeError } from '../core/errors.js';
import { readBody as readRequestBody, sendJson as sendJsonAnswer } from '../core/http-kit.js';
import type { Logger } from '../core/log.js';
import { CertificateAuthority } from '../tls/certificate-authority.js';
import { ChallengeBook } from './challenge-book.js';
import {
  CHALLENGE_NONCE_BYTES,
  CHALLENGE_PATH,
  MAX_DOCUMENT_BASE64_CHARS,
  MAX_REQUEST_BODY_BYTES,
  PROVISIONING_BINDING_PREFIX,
  provisioningUserData,
  SIGN_PATH,
  type ChallengeAnswer,
  type RefusalBody,
  type SignAnswer,
} from '../wire/provisioner-protocol.js';
import { ProvisionerRefusal } from './provisioner-error.js';
import { SigningRequest } from './signing-request.js';

export const DEFAULT_CHALLENGE_TTL_MS = 60_000;
export const DEFAULT_CERT_LIFETIME_MS = 24 * 3600 * 1000;
export const DEFAULT_MAX_PENDING_CHALLENGES = 1024;
export const DEFAULT_MAX_CONNECTIONS = 256;
/** The CN prefix of a provisioner's root; a random suffix tells roots apart. */
export const PROVISIONER_ROOT_NAME = 'enclave-runtime provisioner root';
// One request per connection, so a connection older than this is stuck or hostile.
const CONNECTION_DEADLINE_MS = 30_000;
const CLOSE_GRACE_MS = 2_000;
const MAX_HEADER_BYTES = 16 * 1024;
const MAX_LOGGED_PATH_CHARS = 128;
const DNS_NAME =
  /^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const SIGN_FIELDS: ReadonlySet<string> = new Set(['csr', 'attestation_doc', 'nonce']);
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
const NONCE_HEX = new RegExp(`^[0-9a-f]{${CHALLENGE_NONCE_BYTES * 2}}$`);

export interface ProvisionerOptions {
  listen: Address;
  /** Where the root key (`ca-key.pem`, 0600) and certificate (`ca.pem`) live; created on first start. */
  caDir: string;
  /** PEM of the attestation root(s) documents must chain to; default the bundled AWS Nitro root G1. */
  attestationRootPem?: string;
  /** Accepted PCR sets: a document must match every PCR of one of them. Must not be empty. */
  allowedPcrs: ReadonlyArray<Readonly<Record<number, Uint8Array>>>;
  /** Accept debug-mode enclaves (PCR0-2 all zero); default false. */
  allowDebug?: boolean;
  challengeTtlMs?: number;
  /** Lifetime of each intermediate signed (capped at the root's own notAfter). */
  certLifetimeMs?: number;
  maxPendingChallenges?: number;
  /** When non-empty, every intermediate carries a critical nameConstraints permitting only these DNS subtrees. */
  permittedDns?: readonly string[];
  /** Open connections; more are closed at once. */
  maxConnections?: number;
  logger: Logger;
  /** The clock in ms since the epoch, for challenges, verification and validity; tests move it. */
  now?: () => number;
}

/** A running provisioner. */
export interface Provisioner {
  /** Where it listens (a tcp port 0 resolved). */
  readonly address: Address;
  /** PEM of the root every intermediate chains to: what TLS clients of the enclaves trust. */
  readonly rootPem: string;
  /** `<caDir>/ca.pem`. */
  readonly rootPath: string;
  readonly challenges: ChallengeBook;
  /** Stops accepting, gives requests in flight a moment, then cuts the rest. */
  close(): Promise<void>;
}

interface ParsedSignRequest {
  csr: SigningRequest;
  document: Uint8Array;
  nonce: Uint8Array;
}

/**
 * The reference provisioner: hands out single-use challenge nonces, and signs an enclave's
 * intermediate CA only after the enclave's attestation document verifies, carries an outstanding
 * challenge, matches an allowed PCR set, and binds the CSR's key, and the CSR proves possession.
 */
export async function startProvisioner(options: ProvisionerOptions): Promise<Provisioner> {
  const now = options.now ?? Date.now;
  const { logger } = options;
  const allowedPcrs = checkAllowedPcrs(options.allowedPcrs);
  const permittedDns = checkPermittedDns(options.permittedDns ?? []);
  const allowDebug = options.allowDebug ?? false;
  const certLifetimeMs = options.certLifetimeMs ?? DEFAULT_CERT_LIFETIME_MS;
  const maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  const attestationRoot = options.attestationRootPem;
  // Resolve the root now, so a missing or tampered root fails at start rather than on the first request.
  resolveTrustedRoots(attestationRoot);

  const root = await CertificateAuthority.open(options.caDir, {
    logger,
    now,
    commonName: PROVISIONER_ROOT_NAME,
    pathLength: 1,
  });
  checkRootCanSignIntermediates(root, options.caDir);
  const challenges = new ChallengeBook({
    ttlMs: options.challengeTtlMs ?? DEFAULT_CHALLENGE_TTL_MS,
    maxPending: options.maxPendingChallenges ?? DEFAULT_MAX_PENDING_CHALLENGES,
    now,
  });

  const server = createServer({ maxHeaderSize: MAX_HEADER_BYTES }, (req, res) => {
    const path = (req.url ?? '/').split('?', 1)[0]!.slice(0, MAX_LOGGED_PATH_CHARS);
    route(req, res, path).catch((error: unknown) => {
      if (error instanceof ProvisionerRefusal) {
        logger.warn(
          { path, code: error.code, reason: error.message, peer: peerOf(req) },
          'provisioner refused a request',
        );
        sendJson(res, error.status, { error: error.message, code: error.code } satisfies RefusalBody);
        return;
      }
      logger.error({ path, err: { message: (error as Error).message } }, 'provisioner request failed');
      sendJson(res, 500, { error: 'internal error', code: 'ERR_PROVISIONER_INTERNAL' } satisfies RefusalBody);
    });
  });

  async function route(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (path !== CHALLENGE_PATH && path !== SIGN_PATH) {
      throw new ProvisionerRefusal(
        404,
        'ERR_PROVISIONER_NOT_FOUND',
        `no route ${path}; the routes are POST ${CHALLENGE_PATH} and POST ${SIGN_PATH}`,
      );
    }
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST');
      throw new ProvisionerRefusal(
        405,
        'ERR_PROVISIONER_METHOD',
        `${String(req.method).slice(0, 16)} is not allowed on ${path}; use POST`,
      );
    }
    const body = await readBody(req);
    if (path === CHALLENGE_PATH) {
      const challenge = challenges.issue();
      sendJson(res, 200, {
        nonce: Buffer.from(challenge.nonce).toString('hex'),
        expires: new Date(challenge.expiresAt).toISOString(),
      } satisfies ChallengeAnswer);
      return;
    }
    const answer = await sign(parseSignRequest(body));
    sendJson(res, 200, answer);
  }

  async function sign(request: ParsedSignRequest): Promise<SignAnswer> {
    // The document first: its signature and chain at the present time, and that it carries the nonce named.
    let document: AttestationDocument;
    try {
      ({ document } = verifyAttestation(request.document, {
        ...(attestationRoot === undefined ? {} : { root: attestationRoot }),
        at: new Date(now()),
        allowDebug: true,
        nonce: request.nonce,
      }));
    } catch (error) {
      if (error instanceof AttestationError && error.code === 'ERR_ATTESTATION_NONCE') {
        throw refused(error, "the document's nonce is not the challenge nonce named in the request");
      }
      throw refused(error);
    }
    // Then the challenge is spent, whatever follows: a challenge is tried at most once.
    challenges.take(request.nonce);
    try {
      checkPolicy(document, { allowDebug, expectedPcrs: allowedPcrs });
    } catch (error) {
      throw refused(error);
    }
    try {
      checkPolicy(document, { allowDebug: true, userData: provisioningUserData(request.csr.spkiDer) });
    } catch (error) {
      throw refused(
        error,
        `the document's user_data does not bind the CSR's key: it must be "${PROVISIONING_BINDING_PREFIX}" followed by SHA-256 of the CSR's DER SubjectPublicKeyInfo`,
      );
    }
    await request.csr.verifySignature();

    const keyId = createHash('sha256').update(request.csr.spkiDer).digest('hex').slice(0, 16);
    const issued = await root.issueIntermediate({
      publicKeySpki: request.csr.spkiDer,
      subject: [{ CN: [`enclave-runtime enclave CA ${keyId}`] }, { O: ['enclave-runtime'] }],
      validityMs: certLifetimeMs,
      permittedDnsNames: permittedDns,
    });
    logger.info(
      { moduleId: document.moduleId, serial: issued.serialNumber, keyId, notAfter: issued.notAfter.toISOString() },
      'signed an enclave intermediate CA',
    );
    return { certificate: issued.certPem, chain: root.certificatePem };
  }

  const sockets = new Set<Duplex>();
  let refusedConnections = 0;
  let listener: Listener;
  try {
    listener = await listen(options.listen, (socket) => {
      if (sockets.size >= maxConnections) {
        socket.destroy();
        if (refusedConnections++ === 0)
          logger.warn({ maxConnections }, 'provisioner connection limit reached; closing new connections');
        return;
      }
      sockets.add(socket);
      const deadline = setTimeout(() => socket.destroy(), CONNECTION_DEADLINE_MS);
      deadline.unref();
      socket.once('close', () => {
        clearTimeout(deadline);
        sockets.delete(socket);
        if (sockets.size === 0) refusedConnections = 0;
      });
      // Any Duplex may be handed to an http.Server this way (Node's documented 'connection' injection).
      server.emit('connection', socket);
    });
  } catch (error) {
    throw new RuntimeError(
      'ERR_PROVISIONER_LISTEN',
      `the provisioner cannot listen on ${formatAddress(options.listen)}: ${errorCode(error) ?? (error as Error).message}`,
      { cause: error },
    );
  }
  logger.info(
    {
      listen: formatAddress(listener.address),
      root: root.certificatePath,
      attestationRoot: attestationRoot === undefined ? 'aws' : 'custom',
      allowedPcrSets: allowedPcrs.length,
      allowDebug,
    },
    'provisioner listening',
  );

  return {
    address: listener.address,
    rootPem: root.certificatePem,
    rootPath: root.certificatePath!,
    challenges,
    async close() {
      await listener.close();
      const deadline = Date.now() + CLOSE_GRACE_MS;
      while (sockets.size > 0 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20));
      for (const socket of sockets) socket.destroy();
    },
  };
}

/** A verifier or CSR failure as the refusal the client gets; `message` replaces the verifier's wording where ours is clearer. */
function refused(error: unknown, message?: string): unknown {
  if (error instanceof AttestationError) {
    return new ProvisionerRefusal(
      403,
      error.code,
      `the attestation document was refused: ${message ?? error.message}`,
      { cause: error },
    );
  }
  return error;
}

/** A CA made for `self` (pathLen 0) in ca_dir would sign intermediates no client accepts; say so at start. */
function checkRootCanSignIntermediates(root: CertificateAuthority, caDir: string): void {
  const constraints = new x509.X509Certificate(root.certificatePem).getExtension(x509.BasicConstraintsExtension);
  if (constraints?.pathLength !== undefined && constraints.pathLength < 1) {
    throw new RuntimeError(
      'ERR_PROVISIONER_ROOT',
      `the CA in ${caDir} has pathLen ${constraints.pathLength}: it cannot sign intermediates that clients accept; point provisioner.ca_dir at an empty directory`,
    );
  }
}

function checkAllowedPcrs(
  sets: ReadonlyArray<Readonly<Record<number, Uint8Array>>>,
): ReadonlyArray<Readonly<Record<number, Uint8Array>>> {
  if (sets.length === 0)
    throw new ConfigError(
      [
        'provisioner.allowed_pcrs is empty: no enclave could be provisioned; list the PCR sets of the enclave images to accept',
      ],
      'provisioner',
    );
  if (sets.length > MAX_EXPECTED_PCR_SETS)
    throw new ConfigError(
      [`provisioner.allowed_pcrs has ${sets.length} sets; at most ${MAX_EXPECTED_PCR_SETS}`],
      'provisioner',
    );
  for (const [i, set] of sets.entries()) {
    if (Object.keys(set).length === 0)
      throw new ConfigError(
        [`provisioner.allowed_pcrs set ${i + 1} is empty: it would match any enclave`],
        'provisioner',
      );
  }
  return sets;
}

function checkPermittedDns(names: readonly string[]): string[] {
  const bad = names.filter((name) => !DNS_NAME.test(name));
  if (bad.length > 0)
    throw new ConfigError(
      bad.map((name) => `provisioner.permitted_dns: ${JSON.stringify(name.slice(0, 64))} is not a DNS name`),
      'provisioner',
    );
  return names.map((name) => name.toLowerCase());
}

function parseSignRequest(body: Buffer): ParsedSignRequest {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body.toString('utf8'));
  } catch {
    throw badRequest('the body is not valid JSON');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw badRequest(
      'the body must be a JSON object {"csr": "<PEM>", "attestation_doc": "<base64>", "nonce": "<hex>"}',
    );
  }
  const fields = parsed as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!SIGN_FIELDS.has(key))
      throw badRequest(`unknown field ${JSON.stringify(key.slice(0, 64))}; the fields are csr, attestation_doc, nonce`);
  }
  const csr = stringField(fields, 'csr');
  const document = stringField(fields, 'attestation_doc');
  const nonce = stringField(fields, 'nonce').toLowerCase();
  if (document.length > MAX_DOCUMENT_BASE64_CHARS || !BASE64.test(document) || document.length % 4 !== 0) {
    throw badRequest(`attestation_doc must be standard base64 of at most ${MAX_DOCUMENT_BASE64_CHARS} characters`);
  }
  if (!NONCE_HEX.test(nonce))
    throw badRequest(`nonce must be the ${CHALLENGE_NONCE_BYTES * 2} hex digits POST ${CHALLENGE_PATH} gave`);
  return {
    csr: SigningRequest.parse(csr),
    document: new Uint8Array(Buffer.from(document, 'base64')),
    nonce: new Uint8Array(Buffer.from(nonce, 'hex')),
  };
}

function stringField(fields: Record<string, unknown>, name: string): string {
  const value = fields[name];
  if (typeof value !== 'string' || value.length === 0) throw badRequest(`${name} is missing or not a non-empty string`);
  return value;
}

function badRequest(message: string): ProvisionerRefusal {
  return new ProvisionerRefusal(400, 'ERR_PROVISIONER_REQUEST', message);
}

function readBody(req: IncomingMessage): Promise<Buffer> {
  return readRequestBody(req, {
    maxBytes: MAX_REQUEST_BODY_BYTES,
    tooLarge: () =>
      new ProvisionerRefusal(413, 'ERR_PROVISIONER_TOO_LARGE', `the body is more than ${MAX_REQUEST_BODY_BYTES} bytes`),
    gone: (cause) => (cause instanceof Error ? cause : new Error('the client went away before the end of its request')),
  });
}

/** One request per connection: nothing is left unread on a reused socket, and the deadline stays simple. */
function sendJson(res: ServerResponse, status: number, body: unknown): void {
  sendJsonAnswer(res, status, body, { connection: 'close' });
}

function peerOf(req: IncomingMessage): string {
  const remote = (req.socket as { remoteAddress?: unknown }).remoteAddress;
  if (typeof remote === 'string') return remote;
  if (remote && typeof remote === 'object') return JSON.stringify(remote).slice(0, 128);
  return 'unknown';
}
