import { request as httpRequest } from 'node:http';
import { formatAddress, type Address } from '../net/address.js';
import { connect, type TransportSocket } from '../net/transport.js';
import {
  CHALLENGE_NONCE_BYTES,
  CHALLENGE_PATH,
  MAX_RESPONSE_BODY_BYTES,
  SIGN_PATH,
  type SignAnswer,
  type SignRequestBody,
} from '../wire/provisioner-protocol.js';
import { ProvisioningError } from './provisioner-error.js';
import { errorCode } from '../core/errors.js';

export interface ProvisionerClientOptions {
  /** Where the provisioner answers: the parent's relay (vsock:3:PORT) in an enclave, tcp in dev. */
  address: Address;
  /** Bound on one request, connect included. */
  timeoutMs: number;
}

/** A challenge as the enclave holds it. */
export interface ReceivedChallenge {
  nonce: Uint8Array;
  expires: Date;
}

/**
 * The enclave's side of the provisioner protocol (see protocol.ts): HTTP/1.1 over whatever
 * transport the address names, one request per connection. A refusal becomes a ProvisioningError
 * carrying the provisioner's own code and reason.
 */
export class ProvisionerClient {
  readonly address: Address;
  readonly #timeoutMs: number;

  constructor(options: ProvisionerClientOptions) {
    this.address = options.address;
    this.#timeoutMs = options.timeoutMs;
  }

  /** POST /challenge: a fresh single-use nonce for the attestation document. */
  async challenge(): Promise<ReceivedChallenge> {
    const answer = await this.#post(CHALLENGE_PATH, {}, 'a challenge');
    const nonce =
      typeof answer.nonce === 'string' && new RegExp(`^[0-9a-f]{${CHALLENGE_NONCE_BYTES * 2}}$`).test(answer.nonce)
        ? answer.nonce
        : undefined;
    const expires = typeof answer.expires === 'string' ? new Date(answer.expires) : undefined;
    if (nonce === undefined || expires === undefined || !Number.isFinite(expires.getTime())) {
      throw this.#badAnswer('its challenge is not {"nonce": "<64 hex digits>", "expires": "<ISO-8601>"}');
    }
    return { nonce: new Uint8Array(Buffer.from(nonce, 'hex')), expires };
  }

  /** POST /sign: the intermediate certificate and the chain above it, as PEM (checked by the caller). */
  async sign(body: SignRequestBody): Promise<SignAnswer> {
    const answer = await this.#post(SIGN_PATH, body, 'the enclave CA');
    if (typeof answer.certificate !== 'string' || typeof answer.chain !== 'string') {
      throw this.#badAnswer('its answer is not {"certificate": "<PEM>", "chain": "<PEM>"}');
    }
    return { certificate: answer.certificate, chain: answer.chain };
  }

  async #post(path: string, body: object, what: string): Promise<Record<string, unknown>> {
    const target = formatAddress(this.address);
    const started = Date.now();
    let socket: TransportSocket;
    try {
      socket = await connect(this.address, { timeoutMs: this.#timeoutMs });
    } catch (error) {
      throw new ProvisioningError(
        'ERR_PROVISIONING_UNREACHABLE',
        `cannot reach the provisioner at ${target}: ${errorCode(error) ?? (error as Error).message}`,
        { cause: error },
      );
    }
    const remainingMs = Math.max(1, this.#timeoutMs - (Date.now() - started));
    const { status, text } = await exchange(
      socket,
      path,
      Buffer.from(JSON.stringify(body)),
      remainingMs,
      this.address,
    ).catch((error: unknown) => {
      if (error instanceof ProvisioningError) throw error;
      throw new ProvisioningError(
        'ERR_PROVISIONING_UNREACHABLE',
        `the provisioner at ${target} did not answer POST ${path}: ${errorCode(error) ?? (error as Error).message}`,
        { cause: error },
      );
    });
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      parsed = undefined;
    }
    const fields =
      typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed)
        ? (parsed as Record<string, unknown>)
        : undefined;
    if (status === 200 && fields) return fields;
    if (status !== 200 && fields && typeof fields.code === 'string' && typeof fields.error === 'string') {
      const code = fields.code.slice(0, 64);
      throw new ProvisioningError(
        'ERR_PROVISIONING_REFUSED',
        `the provisioner at ${target} refused ${what} (HTTP ${status}, ${code}): ${fields.error.slice(0, 512)}`,
        {
          remoteCode: code,
          status,
        },
      );
    }
    throw this.#badAnswer(`POST ${path} answered HTTP ${status} without the JSON the protocol defines`);
  }

  #badAnswer(detail: string): ProvisioningError {
    return new ProvisioningError(
      'ERR_PROVISIONING_RESPONSE',
      `the provisioner at ${formatAddress(this.address)} is not speaking the provisioner protocol: ${detail}`,
    );
  }
}

/** One POST over an open socket; resolves with the status and the (bounded) body text. */
function exchange(
  socket: TransportSocket,
  path: string,
  payload: Buffer,
  timeoutMs: number,
  address: Address,
): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      method: 'POST',
      path,
      // Any Duplex serves as the connection; the agent is bypassed, so nothing is pooled.
      createConnection: () => socket,
      headers: {
        host: address.transport === 'tcp' ? `${address.host}:${address.port}` : 'provisioner',
        'content-type': 'application/json',
        'content-length': String(payload.byteLength),
        accept: 'application/json',
        connection: 'close',
      },
    });
    const timer = setTimeout(
      () => req.destroy(Object.assign(new Error(`no answer within ${timeoutMs} ms`), { code: 'ETIMEDOUT' })),
      timeoutMs,
    );
    const fail = (error: Error) => {
      clearTimeout(timer);
      socket.destroy();
      reject(error);
    };
    req.once('error', fail);
    req.once('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.byteLength;
        if (size > MAX_RESPONSE_BODY_BYTES) {
          res.destroy();
          fail(
            new ProvisioningError(
              'ERR_PROVISIONING_RESPONSE',
              `the provisioner at ${formatAddress(address)} answered with more than ${MAX_RESPONSE_BODY_BYTES} bytes`,
            ),
          );
          return;
        }
        chunks.push(chunk);
      });
      res.once('error', fail);
      res.once('end', () => {
        clearTimeout(timer);
        socket.destroy();
        resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks, size).toString('utf8') });
      });
    });
    req.end(payload);
  });
}
