/**
 * A fake EC2 instance metadata service on loopback, IMDSv2 only: PUT /latest/api/token with
 * X-aws-ec2-metadata-token-ttl-seconds gives a token; every GET must carry it in
 * X-aws-ec2-metadata-token, else 401 (as an instance with IMDSv1 disabled answers). Test code only.
 */
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeImds {
  readonly url: string;
  readonly role: string;
  /** Each request: method, path, and whether it was let through. */
  readonly requests: Array<{ method: string; path: string; status: number }>;
  /** The credentials the next GET of the role returns; change them to see a refresh. */
  credentials: { AccessKeyId: string; SecretAccessKey: string; Token: string; Expiration: string };
  close(): Promise<void>;
}

export async function startFakeImds(
  credentials: FakeImds['credentials'],
  role = 'enclave-parent-role',
): Promise<FakeImds> {
  const tokens = new Set<string>();
  const requests: FakeImds['requests'] = [];
  const state = { credentials };
  const server = http.createServer((request, response) => {
    const path = request.url ?? '';
    const answer = (status: number, body: string) => {
      requests.push({ method: request.method ?? '', path, status });
      response.writeHead(status, { 'content-type': 'text/plain' }).end(body);
    };
    if (request.method === 'PUT' && path === '/latest/api/token') {
      const ttl = Number(request.headers['x-aws-ec2-metadata-token-ttl-seconds']);
      if (!Number.isInteger(ttl) || ttl < 1 || ttl > 21_600) return answer(400, 'missing or bad TTL header');
      const token = randomBytes(24).toString('base64');
      tokens.add(token);
      return answer(200, token);
    }
    if (request.method !== 'GET') return answer(405, '');
    if (!tokens.has(String(request.headers['x-aws-ec2-metadata-token'] ?? ''))) return answer(401, '');
    if (path === '/latest/meta-data/iam/security-credentials/') return answer(200, role);
    if (path === `/latest/meta-data/iam/security-credentials/${role}`)
      return answer(200, JSON.stringify({ Code: 'Success', Type: 'AWS-HMAC', ...state.credentials }));
    return answer(404, '');
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    role,
    requests,
    get credentials() {
      return state.credentials;
    },
    set credentials(value) {
      state.credentials = value;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
