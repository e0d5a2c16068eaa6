import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import { ConfigError, RuntimeError } from '../core/errors.js';
import { readBody, send, sendJson, withTimeout } from '../core/http-kit.js';
import type { Logger } from '../core/log.js';
import { NSM_MAX_FIELD_BYTES, NsmError, type AttestationRequest, type Nsm } from './nsm.js';
import { reservedUserDataReason, reservedUserDataRule } from './reserved-binding.js';

/** What GET /health reports: 200 when `status` is 'ok', 503 otherwise. */
export interface HealthReport {
  status: 'ok' | 'degraded' | 'down';
  parts: Record<string, { ok: boolean; detail?: string }>;
}

export type HealthProvider = () => HealthReport | Promise<HealthReport>;

/** Every bound the internal API enforces; all are optional with the defaults below. */
export interface AttestationApiLimits {
  /** POST bodies beyond this get 413 (default 8 KiB). */
  maxBodyBytes?: number;
  /** Time to receive the request headers (default 5 s). */
  headersTimeoutMs?: number;
  /** Time to receive the whole request (default 10 s). */
  requestTimeoutMs?: number;
  /** Idle time before a keep-alive connection is closed (default 5 s). */
  keepAliveTimeoutMs?: number;
  /** Requests in progress at once; beyond this the answer is 503 (default 128). */
  maxConcurrentRequests?: number;
  /** Open connections; beyond this new ones are dropped (default 512). */
  maxConnections?: number;
  /** Time one NSM call may take before the answer is 503 (default 15 s). */
  attestTimeoutMs?: number;
  /** Time the health provider may take (default 2 s). */
  healthTimeoutMs?: number;
  /** On close, time in-flight requests get before their connections are cut (default 2 s). */
  closeGraceMs?: number;
}

/** The app's fleet blob as the API serves it (src/fleet/fleet-state.ts holds it). */
export interface FleetBlobStore {
  readonly app: { version: number; writer: string; data: string; updatedAt: string } | undefined;
  putApp(data: Uint8Array): Promise<{ version: number; writer: string }>;
}

export interface AttestationApiOptions {
  listen: { host: string; port: number };
  nsm: Nsm;
  logger: Logger;
  health?: HealthProvider;
  limits?: AttestationApiLimits;
  /** Serves GET/PUT /fleet/state when the fleet is on. */
  fleet?: FleetBlobStore | undefined;
}

export interface AttestationApi {
  readonly address: { host: string; port: number };
  close(): Promise<void>;
}

/** The internal API could not start (e.g. its port is taken). */
export class AttestationApiError extends RuntimeError {}

const DEFAULT_LIMITS: Required<AttestationApiLimits> = {
  maxBodyBytes: 8 * 1024,
  headersTimeoutMs: 5_000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5_000,
  maxConcurrentRequests: 128,
  maxConnections: 512,
  attestTimeoutMs: 15_000,
  healthTimeoutMs: 2_000,
  closeGraceMs: 2_000,
};
const MAX_HEADER_BYTES = 16 * 1024;
const MAX_LOGGED_PATH_CHARS = 128;
const ATTESTATION_PATH = '/attestation-doc';
const HEALTH_PATH = '/health';
const FLEET_STATE_PATH = '/fleet/state';
/** SPEC: the app's fleet blob is at most 1 MiB (wire/fleet-message.ts MAX_APP_STATE_BYTES). */
const MAX_FLEET_BLOB_BYTES = 1024 * 1024;
const GET_FIELDS = { nonce: 'nonce', user_data: 'userData', public_key: 'publicKey' } as const;
const POST_FIELDS = new Set(['nonce', 'challenge', 'publicKey']);
const HEX = /^(?:[0-9a-fA-F]{2})*$/;
const BASE64 = /^[A-Za-z0-9+/_-]*={0,2}$/;

/** A 4xx answer: the status, the message and the request field at fault. */
class BadRequest extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly field?: string,
  ) {
    super(message);
  }
}

/** The client disconnected before its request was complete: nobody is left to answer. */
class ClientGone extends Error {}

/** Starts the app-facing attestation and health API (SPEC "Internal API on 127.0.0.1:9999"). */
export async function startAttestationApi(options: AttestationApiOptions): Promise<AttestationApi> {
  const limits = resolveLimits(options.limits ?? {});
  const bodyLimits = {
    maxBytes: limits.maxBodyBytes,
    tooLarge: (declared?: number) =>
      new BadRequest(
        413,
        declared === undefined
          ? `the body is more than ${limits.maxBodyBytes} bytes`
          : `the body is ${declared} bytes; at most ${limits.maxBodyBytes} are allowed`,
        'body',
      ),
    gone: () => new ClientGone(),
  };
  const { nsm, logger } = options;
  const health: HealthProvider =
    options.health ?? (() => ({ status: 'ok', parts: { attestation: { ok: true, detail: `${nsm.kind} NSM` } } }));
  let active = 0;

  const server = createServer(
    {
      headersTimeout: limits.headersTimeoutMs,
      requestTimeout: limits.requestTimeoutMs,
      keepAliveTimeout: limits.keepAliveTimeoutMs,
      maxHeaderSize: MAX_HEADER_BYTES,
      // Node checks the two timeouts above only this often; its 30 s default would stretch them.
      connectionsCheckingInterval: Math.max(100, Math.min(1_000, Math.floor(limits.headersTimeoutMs / 2))),
    },
    (req, res) => {
      const started = performance.now();
      const path = (req.url ?? '/').split('?', 1)[0]!;
      active++;
      res.once('close', () => {
        active--;
        const line = {
          method: req.method,
          path: path.slice(0, MAX_LOGGED_PATH_CHARS),
          status: res.headersSent ? res.statusCode : null,
          ms: Math.round(performance.now() - started),
        };
        logger.debug(res.writableFinished ? line : { ...line, aborted: true }, 'internal API request');
      });
      if (active > limits.maxConcurrentRequests) {
        sendJson(
          res,
          503,
          { error: `more than ${limits.maxConcurrentRequests} requests in progress; retry shortly` },
          { 'retry-after': '1' },
        );
        return;
      }
      route(req, res, path).catch((error: unknown) => {
        logger.error(
          { err: { message: (error as Error).message }, path: path.slice(0, MAX_LOGGED_PATH_CHARS) },
          'internal API request failed',
        );
        if (!res.headersSent) sendJson(res, 500, { error: 'internal error' });
        else res.destroy();
      });
    },
  );
  server.maxConnections = limits.maxConnections;

  async function route(req: IncomingMessage, res: ServerResponse, path: string): Promise<void> {
    if (path === ATTESTATION_PATH) {
      if (req.method !== 'GET' && req.method !== 'POST')
        return methodNotAllowed(res, req.method, path, ['GET', 'POST']);
      let request: AttestationRequest;
      try {
        request = req.method === 'GET' ? parseQuery(req.url ?? '') : parseBody(await readBody(req, bodyLimits));
      } catch (error) {
        if (error instanceof BadRequest) return sendBadRequest(res, error);
        if (error instanceof ClientGone) return;
        throw error;
      }
      const rule = request.userData === undefined ? undefined : reservedUserDataRule(request.userData);
      if (rule !== undefined) {
        // Never the bytes themselves: they may be a key the app wants kept private.
        logger.warn(
          { rule, field: 'user_data', method: req.method, bytes: request.userData!.byteLength },
          'internal API refused a reserved user_data',
        );
        return sendBadRequest(res, new BadRequest(400, reservedUserDataReason(rule), 'user_data'));
      }
      return attest(req, res, request);
    }
    if (path === HEALTH_PATH) {
      if (req.method !== 'GET' && req.method !== 'HEAD')
        return methodNotAllowed(res, req.method, path, ['GET', 'HEAD']);
      return reportHealth(req, res);
    }
    if (path === FLEET_STATE_PATH) {
      if (req.method !== 'GET' && req.method !== 'PUT') return methodNotAllowed(res, req.method, path, ['GET', 'PUT']);
      return fleetState(req, res);
    }
    sendJson(res, 404, {
      error: `no route ${path.slice(0, MAX_LOGGED_PATH_CHARS)}; the routes are GET/POST ${ATTESTATION_PATH}, GET ${HEALTH_PATH} and GET/PUT ${FLEET_STATE_PATH}`,
    });
  }

  /**
   * GET: the blob (application/octet-stream) with x-fleet-version, x-fleet-writer and
   * x-fleet-updated-at; 404 before any write. PUT: a new version (the highest known + 1), answered
   * {version, writer}; with x-fleet-if-version, only when that is still the current version (409 otherwise).
   */
  async function fleetState(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const fleet = options.fleet;
    if (!fleet) return sendJson(res, 404, { error: 'the fleet is off ([fleet] enabled = false)' });
    if (req.method === 'GET') {
      const app = fleet.app;
      if (!app) return sendJson(res, 404, { error: 'no fleet state has been written yet', version: 0 });
      return send(res, 200, 'application/octet-stream', Buffer.from(app.data, 'base64'), undefined, {
        'x-fleet-version': String(app.version),
        'x-fleet-writer': app.writer,
        'x-fleet-updated-at': app.updatedAt,
      });
    }
    let body: Buffer;
    try {
      body = await readBody(req, {
        maxBytes: MAX_FLEET_BLOB_BYTES,
        tooLarge: (declared) =>
          new BadRequest(
            413,
            declared === undefined
              ? `the fleet state is more than ${MAX_FLEET_BLOB_BYTES} bytes`
              : `the fleet state is ${declared} bytes; at most ${MAX_FLEET_BLOB_BYTES} are allowed`,
            'body',
          ),
        gone: () => new ClientGone(),
      });
    } catch (error) {
      if (error instanceof BadRequest) return sendBadRequest(res, error);
      if (error instanceof ClientGone) return;
      throw error;
    }
    const expected = req.headers['x-fleet-if-version'];
    if (typeof expected === 'string') {
      const current = fleet.app?.version ?? 0;
      if (!/^\d{1,15}$/.test(expected))
        return sendBadRequest(
          res,
          new BadRequest(400, 'x-fleet-if-version must be a version number', 'x-fleet-if-version'),
        );
      if (Number(expected) !== current)
        return sendJson(res, 409, {
          error: `the fleet state is at version ${current}, not ${expected}`,
          version: current,
        });
    }
    const written = await fleet.putApp(new Uint8Array(body));
    // Sizes and versions only: the blob is the app's secret.
    logger.info({ version: written.version, bytes: body.byteLength }, 'fleet state written by the app');
    sendJson(res, 200, { version: written.version, writer: written.writer });
  }

  async function attest(req: IncomingMessage, res: ServerResponse, request: AttestationRequest): Promise<void> {
    let document: Uint8Array;
    try {
      document = await withTimeout(
        nsm.attest(request),
        limits.attestTimeoutMs,
        () => new NsmError('ERR_NSM_TIMEOUT', 'the NSM did not answer in time'),
      );
    } catch (error) {
      const code = error instanceof RuntimeError ? error.code : 'ERR_UNKNOWN';
      logger.warn({ code, err: { message: (error as Error).message } }, 'attestation failed');
      // Unreachable after our own checks unless the device is stricter than documented.
      if (code === 'ERR_NSM_INPUT_TOO_LARGE')
        return sendJson(res, 400, { error: (error as Error).message, field: 'request' });
      const transient = code === 'ERR_NSM_BUSY' || code === 'ERR_NSM_TIMEOUT' || code === 'ERR_NSM_CLOSED';
      return sendJson(
        res,
        transient ? 503 : 500,
        { error: 'the NSM could not produce an attestation document', code },
        transient ? { 'retry-after': '1' } : {},
      );
    }
    if (wantsJson(req.headers.accept)) {
      sendJson(res, 200, { attestation_doc: Buffer.from(document).toString('base64') });
    } else {
      send(res, 200, 'application/cbor', Buffer.from(document.buffer, document.byteOffset, document.byteLength));
    }
  }

  async function reportHealth(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let report: HealthReport;
    try {
      report = await withTimeout(
        Promise.resolve().then(health),
        limits.healthTimeoutMs,
        () => new Error('health provider timed out'),
      );
    } catch (error) {
      logger.warn({ err: { message: (error as Error).message } }, 'health provider failed');
      report = { status: 'down', parts: { runtime: { ok: false, detail: 'health could not be determined' } } };
    }
    const body = Buffer.from(JSON.stringify({ status: report.status, parts: report.parts }));
    send(
      res,
      report.status === 'ok' ? 200 : 503,
      'application/json; charset=utf-8',
      req.method === 'HEAD' ? undefined : body,
      body.byteLength,
    );
  }

  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      reject(
        new AttestationApiError(
          'ERR_API_LISTEN',
          `the internal API cannot listen on tcp:${options.listen.host}:${options.listen.port}: ${error.code ?? error.message}`,
          { cause: error },
        ),
      );
    };
    server.once('error', onError);
    server.listen({ host: options.listen.host, port: options.listen.port }, () => {
      server.off('error', onError);
      resolve();
    });
  });
  server.on('error', (error) => logger.error({ err: { message: error.message } }, 'internal API server error'));
  const bound = server.address() as AddressInfo;
  return {
    address: { host: bound.address, port: bound.port },
    close: () => closeServer(server, limits.closeGraceMs),
  };
}

function resolveLimits(given: AttestationApiLimits): Required<AttestationApiLimits> {
  const limits = { ...DEFAULT_LIMITS, ...given };
  const problems: string[] = [];
  for (const [key, value] of Object.entries(limits)) {
    if (!Number.isSafeInteger(value) || value <= 0)
      problems.push(`${key} must be a positive integer, got ${String(value)}`);
  }
  if (limits.headersTimeoutMs > limits.requestTimeoutMs)
    problems.push('headersTimeoutMs must not exceed requestTimeoutMs');
  if (problems.length > 0) throw new ConfigError(problems, 'internal API limits');
  return limits;
}

function parseQuery(url: string): AttestationRequest {
  const query = url.includes('?') ? url.slice(url.indexOf('?') + 1) : '';
  const request: AttestationRequest = {};
  const seen = new Set<string>();
  for (const [name, value] of new URLSearchParams(query)) {
    if (!Object.hasOwn(GET_FIELDS, name)) {
      throw new BadRequest(
        400,
        `unknown parameter ${JSON.stringify(name.slice(0, 64))}; allowed: nonce, user_data, public_key (hex)`,
        name.slice(0, 64),
      );
    }
    if (seen.has(name)) throw new BadRequest(400, `${name} is given more than once`, name);
    seen.add(name);
    // An empty value means the same as leaving the parameter out.
    if (value === '') continue;
    if (!HEX.test(value)) throw new BadRequest(400, `${name} must be hex: an even number of digits 0-9, a-f`, name);
    request[GET_FIELDS[name as keyof typeof GET_FIELDS]] = checkSize(Buffer.from(value, 'hex'), name);
  }
  return request;
}

function parseBody(body: Buffer): AttestationRequest {
  const text = body.toString('utf8');
  if (text.trim() === '') return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    throw new BadRequest(400, 'the body is not valid JSON', 'body');
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw new BadRequest(
      400,
      'the body must be a JSON object like {"nonce": "...", "challenge": "...", "publicKey": "<base64>"}',
      'body',
    );
  }
  const fields = parsed as Record<string, unknown>;
  for (const key of Object.keys(fields)) {
    if (!POST_FIELDS.has(key))
      throw new BadRequest(
        400,
        `unknown field ${JSON.stringify(key.slice(0, 64))}; allowed: nonce, challenge, publicKey`,
        key.slice(0, 64),
      );
  }
  const request: AttestationRequest = {};
  const nonce = stringField(fields, 'nonce');
  if (nonce !== undefined) request.nonce = checkSize(Buffer.from(nonce, 'utf8'), 'nonce');
  const challenge = stringField(fields, 'challenge');
  if (challenge !== undefined) request.userData = checkSize(Buffer.from(challenge, 'utf8'), 'challenge');
  const publicKey = stringField(fields, 'publicKey');
  if (publicKey !== undefined) {
    const decoded = decodeBase64(publicKey);
    if (decoded === undefined) throw new BadRequest(400, 'publicKey must be base64', 'publicKey');
    request.publicKey = checkSize(decoded, 'publicKey');
  }
  return request;
}

function stringField(fields: Record<string, unknown>, name: string): string | undefined {
  const value = fields[name];
  // null and "" mean the same as leaving the field out.
  if (value === undefined || value === null || value === '') return undefined;
  if (typeof value !== 'string') throw new BadRequest(400, `${name} must be a string`, name);
  return value;
}

function checkSize(bytes: Buffer, field: string): Uint8Array {
  if (bytes.byteLength > NSM_MAX_FIELD_BYTES) {
    throw new BadRequest(
      400,
      `${field} is ${bytes.byteLength} bytes; at most ${NSM_MAX_FIELD_BYTES} are allowed`,
      field,
    );
  }
  return new Uint8Array(bytes);
}

function decodeBase64(text: string): Buffer | undefined {
  if (!BASE64.test(text)) return undefined;
  const unpadded = text.replace(/=+$/, '');
  if (unpadded.length % 4 === 1) return undefined;
  if (unpadded.length !== text.length && text.length % 4 !== 0) return undefined;
  // Node's decoder takes both the standard and the URL-safe alphabet.
  return Buffer.from(unpadded, 'base64');
}

/** JSON only when the client ranks application/json above application/cbor; raw CBOR is the default. */
function wantsJson(accept: string | undefined): boolean {
  if (accept === undefined) return false;
  let json = 0;
  let cbor = 0;
  for (const entry of accept.slice(0, 1024).split(',')) {
    const [type = '', ...params] = entry.split(';').map((part) => part.trim().toLowerCase());
    const qParam = params.find((param) => param.startsWith('q='));
    const q = qParam === undefined ? 1 : Number(qParam.slice(2));
    if (!Number.isFinite(q)) continue;
    if (type === 'application/json') json = Math.max(json, q);
    if (type === 'application/cbor') cbor = Math.max(cbor, q);
  }
  return json > cbor;
}

function sendBadRequest(res: ServerResponse, error: BadRequest): void {
  // After 413 the unread rest of the body would be parsed as the next request: close instead.
  const headers: Record<string, string> = error.status === 413 ? { connection: 'close' } : {};
  sendJson(
    res,
    error.status,
    error.field === undefined ? { error: error.message } : { error: error.message, field: error.field },
    headers,
  );
}

function methodNotAllowed(res: ServerResponse, method: string | undefined, path: string, allowed: string[]): void {
  sendJson(
    res,
    405,
    { error: `${String(method).slice(0, 16)} is not allowed on ${path}; use ${allowed.join(' or ')}` },
    { allow: allowed.join(', ') },
  );
}

async function closeServer(server: Server, graceMs: number): Promise<void> {
  if (!server.listening) return;
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  const cut = setTimeout(() => server.closeAllConnections(), graceMs);
  cut.unref();
  await closed;
  clearTimeout(cut);
}
