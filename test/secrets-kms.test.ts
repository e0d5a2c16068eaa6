import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { Agent } from 'undici';
import { defaultSimulatedPcr, openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { tunnelAgent } from '../src/kms/connect-tunnel.js';
import { KmsClient, kmsEndpoint, type KmsClientOptions } from '../src/kms/kms-client.js';
import { KmsError } from '../src/kms/kms-error.js';
import { kmsDispatcher, kmsSettings } from '../src/kms/kms-settings.js';
import { RecipientKey } from '../src/secrets/recipient-key.js';
import { startFakeKms, type FakeKms } from './helpers/fake-kms.js';

const credentials = { accessKeyId: 'AKIAFAKEKMSTEST00001', secretAccessKey: 'fake/secret/access/key/for/tests/only' };
const dir = mkdtempSync(join(tmpdir(), 'secrets-kms-'));
let nsm: SimulatedNsm;
let key: RecipientKey;
let kms: FakeKms;

before(async () => {
  nsm = await openSimulatedNsm({ stateDir: dir });
  key = await RecipientKey.generate();
  kms = await startFakeKms({
    root: () => nsm.rootPem,
    expectedPcrs: [{ 0: defaultSimulatedPcr(0), 1: defaultSimulatedPcr(1) }],
    credentials,
  });
});
after(async () => {
  await kms.close();
  rmSync(dir, { recursive: true, force: true });
});

function client(options: Partial<KmsClientOptions> = {}): KmsClient {
  return new KmsClient({ region: kms.region, endpoint: kms.url, credentials, ...options });
}

async function rejectsWith(promise: Promise<unknown>, code: string, kmsCode?: string): Promise<KmsError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof KmsError, `expected a KmsError, got ${error}`);
    assert.equal(error.code, code, error.message);
    if (kmsCode !== undefined) assert.equal(error.kmsCode, kmsCode);
    return error;
  }
  assert.fail(`expected ${code}`);
}

/** A plain HTTP server that answers every request with `reply`. */
async function fakeAnswer(
  reply: (response: http.ServerResponse) => void,
): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((request, response) => {
    request.resume();
    request.on('end', () => reply(response));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    close: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe('KMS client against the fake KMS (SigV4, JSON protocol, Recipient)', () => {
  it('Decrypt with a Recipient returns CMS that only the recipient key opens', async () => {
    const secret = Buffer.from('the database password');
    const answer = await client().decrypt({
      ciphertextBlob: kms.encrypt(secret),
      recipient: { attestationDocument: await key.attest(nsm) },
    });
    assert.equal(answer.plaintext, undefined);
    assert.equal(answer.keyId, kms.keyArn);
    assert.deepEqual(key.open(answer.ciphertextForRecipient!), secret);
    const other = await RecipientKey.generate();
    assert.throws(() => other.open(answer.ciphertextForRecipient!), { code: 'ERR_SECRET_DECRYPT' });
    assert.deepEqual(kms.calls.at(-1), { target: 'Decrypt', recipient: true, status: 200 });
  });

  it('Decrypt without a Recipient returns the plaintext (outside an enclave), and key_id is checked by KMS', async () => {
    const blob = kms.encrypt(Buffer.from('plain'));
    assert.equal((await client().decrypt({ ciphertextBlob: blob, keyId: kms.alias })).plaintext?.toString(), 'plain');
    await rejectsWith(
      client().decrypt({ ciphertextBlob: blob, keyId: 'alias/some-other-key' }),
      'ERR_KMS_REQUEST',
      'IncorrectKeyException',
    );
  });

  it('GenerateDataKey and GenerateRandom with a Recipient', async () => {
    const document = await key.attest(nsm);
    const dataKey = await client().generateDataKey({ keyId: kms.alias, recipient: { attestationDocument: document } });
    const plaintextKey = key.open(dataKey.ciphertextForRecipient!);
    assert.equal(plaintextKey.length, 32);
    // The KMS-encrypted copy decrypts (here without a recipient) to the same key.
    assert.deepEqual((await client().decrypt({ ciphertextBlob: dataKey.ciphertextBlob })).plaintext, plaintextKey);
    const random = await client().generateRandom({ numberOfBytes: 48, recipient: { attestationDocument: document } });
    assert.equal(key.open(random.ciphertextForRecipient!).length, 48);
  });

  it('a document whose PCRs are not in the key policy is refused with AccessDeniedException, not retried', async () => {
    const foreign = await openSimulatedNsm({ stateDir: dir, pcrs: { 0: Buffer.alloc(48, 0xab) } });
    const before = kms.calls.length;
    const error = await rejectsWith(
      client().decrypt({
        ciphertextBlob: kms.encrypt(Buffer.from('x')),
        recipient: { attestationDocument: await key.attest(foreign) },
      }),
      'ERR_KMS_REQUEST',
      'AccessDeniedException',
    );
    assert.equal(error.status, 400);
    assert.match(error.message, /^KMS Decrypt refused \(AccessDeniedException\): .*PCR/);
    assert.equal(kms.calls.length - before, 1);
  });

  it('wrong credentials are refused by the signature check', async () => {
    await rejectsWith(
      client({ credentials: { ...credentials, secretAccessKey: 'not/the/right/secret/key/at/all' } }).generateRandom({
        numberOfBytes: 8,
      }),
      'ERR_KMS_REQUEST',
      'InvalidSignatureException',
    );
    await rejectsWith(
      client({ credentials: { ...credentials, accessKeyId: 'AKIAUNKNOWNKEY000000' } }).generateRandom({
        numberOfBytes: 8,
      }),
      'ERR_KMS_REQUEST',
      'UnrecognizedClientException',
    );
  });

  it('retries throttling and 5xx up to max attempts, then reports the last KMS error', async () => {
    const before = kms.calls.length;
    kms.script.push({ status: 400, type: 'ThrottlingException' }, { status: 500, type: 'KMSInternalException' });
    const random = await client({ maxAttempts: 3 }).generateRandom({ numberOfBytes: 16 });
    assert.equal(random.plaintext?.length, 16);
    assert.equal(kms.calls.length - before, 3);
    kms.script.push({ status: 400, type: 'ThrottlingException' });
    await rejectsWith(
      client({ maxAttempts: 1 }).generateRandom({ numberOfBytes: 16 }),
      'ERR_KMS_REQUEST',
      'ThrottlingException',
    );
  });

  it('an unreachable endpoint is ERR_KMS_UNREACHABLE after the attempts', async () => {
    const server = net.createServer().listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as net.AddressInfo;
    await new Promise((resolve) => server.close(resolve));
    const error = await rejectsWith(
      client({ endpoint: `http://127.0.0.1:${port}`, maxAttempts: 2 }).generateRandom({ numberOfBytes: 8 }),
      'ERR_KMS_UNREACHABLE',
    );
    assert.match(error.message, /ECONNREFUSED/);
  });

  it('a silent endpoint times out', async () => {
    const silent = net.createServer((socket) => socket.on('error', () => {})).listen(0, '127.0.0.1');
    await once(silent, 'listening');
    try {
      const { port } = silent.address() as net.AddressInfo;
      const error = await rejectsWith(
        client({ endpoint: `http://127.0.0.1:${port}`, timeoutMs: 200, maxAttempts: 1 }).generateRandom({
          numberOfBytes: 8,
        }),
        'ERR_KMS_UNREACHABLE',
      );
      assert.match(error.message, /timed out|Timeout/i);
    } finally {
      silent.close();
    }
  });

  it('refuses answers KMS would not give: Plaintext despite a Recipient, oversized, not JSON', async () => {
    const document = await key.attest(nsm);
    const cases: Array<[string, (response: http.ServerResponse) => void, RegExp]> = [
      [
        'plaintext',
        (r) => r.writeHead(200).end(JSON.stringify({ Plaintext: 'c2VjcmV0', CiphertextForRecipient: 'AAAA' })),
        /Plaintext although a Recipient/,
      ],
      ['huge', (r) => r.writeHead(200).end(Buffer.alloc(300 * 1024, 0x20)), /larger than/],
      ['html', (r) => r.writeHead(200).end('<html>'), /not a JSON object/],
      ['missing field', (r) => r.writeHead(200).end('{}'), /no valid base64 CiphertextForRecipient/],
    ];
    for (const [name, reply, expected] of cases) {
      const server = await fakeAnswer(reply);
      try {
        const error = await rejectsWith(
          client({ endpoint: server.url }).generateRandom({
            numberOfBytes: 8,
            recipient: { attestationDocument: document },
          }),
          'ERR_KMS_RESPONSE',
        );
        assert.match(error.message, expected, name);
      } finally {
        await server.close();
      }
    }
  });

  it('an error without a JSON body is still named by status, with the message bounded and on one line', async () => {
    const server = await fakeAnswer((r) =>
      r
        .writeHead(503, { 'x-amzn-errortype': 'ServiceUnavailable' })
        .end(JSON.stringify({ message: `down\n${'x'.repeat(1000)}` })),
    );
    try {
      const error = await rejectsWith(
        client({ endpoint: server.url, maxAttempts: 1 }).generateRandom({ numberOfBytes: 8 }),
        'ERR_KMS_REQUEST',
        'ServiceUnavailable',
      );
      assert.equal(error.status, 503);
      assert.ok(error.message.length <= 300 && !error.message.includes('\n'));
    } finally {
      await server.close();
    }
  });

  it('sends through the Dispatcher it is given', async () => {
    let connections = 0;
    const dispatcher = new Agent({
      connect: (options, callback) => {
        connections++;
        const socket = net.connect({ host: options.hostname, port: Number(options.port) });
        socket.once('connect', () => callback(null, socket)).once('error', (error) => callback(error, null));
      },
    });
    try {
      await client({ dispatcher }).generateRandom({ numberOfBytes: 8 });
      assert.equal(connections, 1);
    } finally {
      await dispatcher.close();
    }
  });

  it('kms.via = "egress_proxy" tunnels through the HTTP proxy at egress.proxy_listen with CONNECT', async () => {
    const target = new URL(kms.url);
    const proxy = await startConnectProxy();
    // A fresh dispatcher per case: a kept-alive tunnel would carry the next request without a new CONNECT.
    const viaProxy = () =>
      kmsDispatcher({
        kms: { via: 'egress_proxy', timeoutMs: 5000 } as never,
        egress: { proxyListen: { transport: 'tcp', host: '127.0.0.1', port: proxy.port } } as never,
      });
    const dispatchers = [viaProxy(), viaProxy(), viaProxy()] as const;
    try {
      const random = await client({ dispatcher: dispatchers[0] }).generateRandom({ numberOfBytes: 4 });
      assert.equal(random.plaintext?.length, 4);
      assert.deepEqual(proxy.seen, [`tunnel CONNECT ${target.host}`]);

      // A refusal carries the proxy's reason; a dropped CONNECT fails after the bounded attempts, no reconnect loop.
      proxy.mode = 'refuse';
      const refused = await rejectsWith(
        client({ dispatcher: dispatchers[1], maxAttempts: 1 }).generateRandom({ numberOfBytes: 4 }),
        'ERR_KMS_UNREACHABLE',
      );
      assert.match(
        refused.message,
        /could not open a tunnel to 127\.0\.0\.1:\d+: HTTP\/1\.1 403 Forbidden \(egress to that host is not allowed \(deny\)\)/,
      );
      proxy.mode = 'drop';
      const before = proxy.seen.length;
      const dropped = await rejectsWith(
        client({ dispatcher: dispatchers[2], maxAttempts: 2 }).generateRandom({ numberOfBytes: 4 }),
        'ERR_KMS_UNREACHABLE',
      );
      assert.match(dropped.message, /closed the connection before answering CONNECT/);
      assert.equal(proxy.seen.length - before, 2);
    } finally {
      for (const dispatcher of dispatchers) await dispatcher.close();
      await proxy.close();
    }
  });

  it('https through the tunnel: TLS runs end to end and the certificate is checked', async () => {
    const pki = mkdtempSync(join(tmpdir(), 'kms-tls-'));
    let tlsKey: Buffer;
    let cert: string;
    try {
      execFileSync(
        'openssl',
        [
          'req',
          '-x509',
          '-newkey',
          'ec',
          '-pkeyopt',
          'ec_paramgen_curve:P-256',
          '-nodes',
          '-keyout',
          join(pki, 'key.pem'),
          '-out',
          join(pki, 'cert.pem'),
          '-days',
          '1',
          '-subj',
          '/CN=localhost',
          '-addext',
          'subjectAltName=DNS:localhost',
        ],
        { stdio: 'ignore' },
      );
      tlsKey = readFileSync(join(pki, 'key.pem'));
      cert = readFileSync(join(pki, 'cert.pem'), 'utf8');
    } finally {
      rmSync(pki, { recursive: true, force: true });
    }
    const server = https.createServer({ key: tlsKey, cert }, (request, response) => {
      request.resume();
      request.on('end', () =>
        response.writeHead(200).end(JSON.stringify({ Plaintext: Buffer.from('tls!').toString('base64') })),
      );
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const { port } = server.address() as net.AddressInfo;
    const proxy = await startConnectProxy();
    const trusted = tunnelAgent({ host: '127.0.0.1', port: proxy.port }, 5000, { ca: cert });
    const untrusted = tunnelAgent({ host: '127.0.0.1', port: proxy.port }, 5000);
    try {
      const answer = await client({ endpoint: `https://localhost:${port}`, dispatcher: trusted }).generateRandom({
        numberOfBytes: 4,
      });
      assert.equal(answer.plaintext?.toString(), 'tls!');
      assert.deepEqual(proxy.seen, [`tunnel CONNECT localhost:${port}`]);
      const error = await rejectsWith(
        client({ endpoint: `https://localhost:${port}`, dispatcher: untrusted, maxAttempts: 1 }).generateRandom({
          numberOfBytes: 4,
        }),
        'ERR_KMS_UNREACHABLE',
      );
      assert.match(error.message, /TLS: [A-Z_]*(SELF_SIGNED|CERT)/);
    } finally {
      await trusted.close();
      await untrusted.close();
      await proxy.close();
      server.closeAllConnections();
      server.close();
    }
  });
});

/** An HTTP proxy that tunnels CONNECT to the named host:port, or refuses, or drops, as `mode` says. */
async function startConnectProxy(): Promise<{
  port: number;
  seen: string[];
  mode: 'tunnel' | 'refuse' | 'drop';
  close: () => Promise<void>;
}> {
  const state = {
    port: 0,
    seen: [] as string[],
    mode: 'tunnel' as 'tunnel' | 'refuse' | 'drop',
    close: async () => {},
  };
  const proxy = http.createServer((_request, response) => response.writeHead(400).end());
  proxy.on('connect', (request: http.IncomingMessage, socket: net.Socket) => {
    state.seen.push(`${state.mode} ${request.method} ${request.url}`);
    socket.on('error', () => {});
    if (state.mode === 'refuse')
      return socket.end(
        'HTTP/1.1 403 Forbidden\r\ncontent-length: 40\r\n\r\negress to that host is not allowed (deny)',
      );
    if (state.mode === 'drop') return socket.destroy();
    const [host, port] = [
      request.url!.slice(0, request.url!.lastIndexOf(':')),
      Number(request.url!.slice(request.url!.lastIndexOf(':') + 1)),
    ];
    const upstream = net.connect({ host, port }, () => {
      socket.write('HTTP/1.1 200 Connection Established\r\n\r\n');
      upstream.pipe(socket).pipe(upstream);
    });
    upstream.on('error', () => socket.destroy());
  });
  proxy.listen(0, '127.0.0.1');
  await once(proxy, 'listening');
  state.port = (proxy.address() as net.AddressInfo).port;
  state.close = () =>
    new Promise((resolve) => {
      proxy.closeAllConnections();
      proxy.close(() => resolve());
    });
  return state;
}

describe('KMS settings', () => {
  const kmsConfig = {
    region: '',
    endpoint: '',
    accessKeyId: '',
    secretAccessKey: '',
    sessionToken: '',
    via: 'direct' as const,
    timeoutMs: 1000,
    maxAttempts: 1,
  };

  it('empty keys fall back to the AWS_* environment; the file wins when set', () => {
    const env = {
      AWS_REGION: 'eu-west-1',
      AWS_ACCESS_KEY_ID: 'AKIAENV0000000000000',
      AWS_SECRET_ACCESS_KEY: 'env-secret-key-0000000000',
      AWS_SESSION_TOKEN: 'env-token-000000000000',
    };
    const fromEnv = kmsSettings(kmsConfig, env);
    assert.equal(fromEnv.region, 'eu-west-1');
    assert.deepEqual(fromEnv.credentials, {
      accessKeyId: env.AWS_ACCESS_KEY_ID,
      secretAccessKey: env.AWS_SECRET_ACCESS_KEY,
      sessionToken: env.AWS_SESSION_TOKEN,
    });
    assert.equal(
      kmsSettings(kmsConfig, { ...env, AWS_REGION: undefined, AWS_DEFAULT_REGION: 'ap-south-1' }).region,
      'ap-south-1',
    );
    const fromFile = kmsSettings(
      {
        ...kmsConfig,
        region: 'us-west-2',
        accessKeyId: 'AKIAFILE000000000000',
        secretAccessKey: 'file-secret-key-000000',
      },
      env,
    );
    assert.equal(fromFile.region, 'us-west-2');
    assert.deepEqual(fromFile.credentials, {
      accessKeyId: 'AKIAFILE000000000000',
      secretAccessKey: 'file-secret-key-000000',
      sessionToken: undefined,
    });
  });

  it('says what is missing, without quoting secrets', () => {
    assert.throws(() => kmsSettings(kmsConfig, {}), { code: 'ERR_KMS_CONFIG', message: /no KMS region/ });
    assert.throws(() => kmsSettings(kmsConfig, { AWS_REGION: 'us-east-1' }), {
      code: 'ERR_KMS_CONFIG',
      message: /no AWS credentials/,
    });
    const error = (() => {
      try {
        kmsSettings({ ...kmsConfig, region: 'us-east-1', secretAccessKey: 'only-the-secret-is-set-here' }, {});
      } catch (caught) {
        return caught as Error;
      }
      assert.fail('accepted');
    })();
    assert.match(error.message, /must be set together/);
    assert.doesNotMatch(error.message, /only-the-secret/);
  });

  it('endpoints are https, or plain http to loopback only', () => {
    assert.equal(kmsEndpoint('https://kms-fips.us-east-1.amazonaws.com').host, 'kms-fips.us-east-1.amazonaws.com');
    assert.equal(kmsEndpoint('http://127.0.0.1:4000').port, '4000');
    assert.equal(kmsEndpoint('http://[::1]:4000').hostname, '[::1]');
    assert.throws(() => kmsEndpoint('http://kms.us-east-1.amazonaws.com'), { code: 'ERR_KMS_CONFIG' });
    assert.throws(() => kmsEndpoint('https://user:pw@kms.example'), { code: 'ERR_KMS_CONFIG' });
    assert.throws(() => kmsEndpoint('not a url'), { code: 'ERR_KMS_CONFIG' });
    assert.throws(() => new KmsClient({ region: 'mars-1', credentials }), { code: 'ERR_KMS_CONFIG' });
  });
});
