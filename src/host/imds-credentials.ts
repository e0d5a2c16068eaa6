/**
 * The parent instance's role credentials from the instance metadata service, IMDSv2 only: a
 * session token first (PUT /latest/api/token with a TTL), then every GET carries it. IMDSv1's
 * token-less GETs are never sent, so an instance with IMDSv1 disabled works, and an SSRF that can
 * only GET cannot stand in for this client. Credentials are cached and fetched again before they
 * expire; they are held in private fields and never logged.
 */
import http from 'node:http';
import { errorCode, RuntimeError } from '../core/errors.js';
import { parseAwsCredentials, type AwsRoleCredentials } from '../wire/aws-credentials.js';

export class ImdsError extends RuntimeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('ERR_IMDS', message, options);
  }
}

const TOKEN_TTL_SECONDS = 21_600;
const MAX_ANSWER_BYTES = 64 * 1024;
/** Fetch new credentials when the cached ones have less than this left (AWS rotates them well before). */
export const CREDENTIALS_REFRESH_MARGIN_MS = 10 * 60 * 1000;
const CREDENTIALS_PATH = '/latest/meta-data/iam/security-credentials/';

export interface ImdsOptions {
  /** http://169.254.169.254 on EC2; a loopback fake in tests. */
  endpoint: string;
  timeoutMs: number;
  now?: () => number;
}

export class ImdsCredentials {
  readonly #endpoint: URL;
  readonly #timeoutMs: number;
  readonly #now: () => number;
  #token: { value: string; until: number } | undefined;
  #cached: AwsRoleCredentials | undefined;
  #pending: Promise<AwsRoleCredentials> | undefined;

  constructor(options: ImdsOptions) {
    this.#endpoint = new URL(options.endpoint);
    if (this.#endpoint.protocol !== 'http:') throw new ImdsError('the IMDS endpoint is plain http://HOST[:PORT]');
    this.#timeoutMs = options.timeoutMs;
    this.#now = options.now ?? Date.now;
  }

  /** Valid credentials: the cached ones while they have more than the margin left, else fresh ones (one fetch at a time). */
  get(): Promise<AwsRoleCredentials> {
    const cached = this.#cached;
    if (cached && cached.expiration.getTime() - this.#now() > CREDENTIALS_REFRESH_MARGIN_MS)
      return Promise.resolve(cached);
    this.#pending ??= this.#fetch().finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  async #fetch(): Promise<AwsRoleCredentials> {
    const roles = await this.#get(CREDENTIALS_PATH);
    const role = roles.split('\n')[0]?.trim() ?? '';
    if (!/^[\w+=,.@-]{1,128}$/.test(role))
      throw new ImdsError('the instance has no IAM role (instance profile) attached');
    const text = await this.#get(`${CREDENTIALS_PATH}${role}`);
    let value: Record<string, unknown>;
    try {
      value = JSON.parse(text) as Record<string, unknown>;
    } catch {
      throw new ImdsError('the role credentials from IMDS are not JSON');
    }
    const { Code } = value;
    if (Code !== undefined && Code !== 'Success')
      throw new ImdsError(
        `IMDS could not give the role's credentials (Code ${JSON.stringify(String(Code).slice(0, 40))})`,
      );
    const parsed = parseAwsCredentials(value, this.#now());
    if ('problem' in parsed) {
      throw new ImdsError(
        parsed.problem === 'expired'
          ? 'IMDS gave credentials that have already expired'
          : 'the role credentials from IMDS lack AccessKeyId, SecretAccessKey, Token or Expiration',
      );
    }
    this.#cached = parsed.credentials;
    return this.#cached;
  }

  /** GET with the session token; a 401 means the token lapsed: one new token, one retry. */
  async #get(path: string): Promise<string> {
    for (let attempt = 0; ; attempt++) {
      const token = await this.#sessionToken();
      const answer = await this.#request('GET', path, { 'x-aws-ec2-metadata-token': token });
      if (answer.status === 401 && attempt === 0) {
        this.#token = undefined;
        continue;
      }
      if (answer.status !== 200)
        throw new ImdsError(
          `IMDS answered ${answer.status} to GET ${path.startsWith(CREDENTIALS_PATH) ? CREDENTIALS_PATH : path}`,
        );
      return answer.body;
    }
  }

  async #sessionToken(): Promise<string> {
    if (this.#token && this.#token.until > this.#now()) return this.#token.value;
    const answer = await this.#request('PUT', '/latest/api/token', {
      'x-aws-ec2-metadata-token-ttl-seconds': String(TOKEN_TTL_SECONDS),
    });
    if (answer.status !== 200 || !/^[\x21-\x7e]{1,1024}$/.test(answer.body))
      throw new ImdsError(
        `IMDS refused a session token (${answer.status}); is the hop limit too low for this process?`,
      );
    // Renewed a minute early, so a request never carries a token about to lapse.
    this.#token = { value: answer.body, until: this.#now() + (TOKEN_TTL_SECONDS - 60) * 1000 };
    return answer.body;
  }

  #request(
    method: 'GET' | 'PUT',
    path: string,
    headers: Record<string, string>,
  ): Promise<{ status: number; body: string }> {
    return new Promise((resolve, reject) => {
      const request = http.request(
        {
          host: this.#endpoint.hostname,
          port: this.#endpoint.port || 80,
          method,
          path,
          headers,
          agent: false,
          timeout: this.#timeoutMs,
        },
        (response) => {
          const chunks: Buffer[] = [];
          let size = 0;
          response.on('data', (chunk: Buffer) => {
            size += chunk.length;
            if (size > MAX_ANSWER_BYTES)
              return request.destroy(new ImdsError(`an IMDS answer is larger than ${MAX_ANSWER_BYTES} bytes`));
            chunks.push(chunk);
          });
          response.on('end', () =>
            resolve({ status: response.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
          );
          response.on('error', reject);
        },
      );
      request.on('timeout', () => request.destroy(new ImdsError(`IMDS did not answer within ${this.#timeoutMs} ms`)));
      request.on('error', (error) =>
        reject(
          error instanceof ImdsError
            ? error
            : new ImdsError(
                `IMDS at ${this.#endpoint.host} could not be reached: ${errorCode(error) ?? error.message}`,
                { cause: error },
              ),
        ),
      );
      request.end();
    });
  }

  toJSON(): Record<string, unknown> {
    return { kind: 'ImdsCredentials', endpoint: this.#endpoint.origin };
  }
}
