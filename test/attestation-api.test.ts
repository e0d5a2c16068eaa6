import assert from 'node:assert/strict';
import { request as httpRequest } from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { Decoder } from 'cbor-x';
import {
  startAttestationApi,
  type AttestationApi,
  type AttestationApiOptions,
  type HealthReport,
} from '../src/attestation/attestation-api.js';
import { NsmError, type AttestationRequest, type Nsm } from '../src/attestation/nsm.js';
import { openSimulatedNsm, type SimulatedNsm } from '../src/attestation/sim-nsm.js';
import { createLogger, silentLogger } from '../src/core/log.js';

const decoder = new Decoder({ mapsAsObjects: false, useRecords: false });
const scratch = mkdtempSync(join(tmpdir(), 'attestation-api-test-'));
let sim: SimulatedNsm;
before(async () => {
  sim = await openSimulatedNsm({ stateDir: join(scratch, 'state') });
});
after(() => rmSync(scratch, { recursive: true, force: true }));

/** An NSM that records requests and returns a marker document, or fails as told. */
class RecordingNsm implements Nsm {
  readonly kind = 'simulated' as const;
  readonly requests: AttestationRequest[] = [];
  constructor(
    private readonly behaviour: (request: AttestationRequest) => Promise<Uint8Array> = async () =>
      Uint8Array.of(0x84, 1, 2, 3),
  ) {}
  attest(request: AttestationRequest): Promise<Uint8Array> {
    this.requests.push(request);
    return this.behaviour(request);
  }
  async describePcr(): Promise<never> {
    throw new Error('unused');
  }
  async getRandom(): Promise<Uint8Array> {
    return new Uint8Array(0);
  }
  async close(): Promise<void> {}
}

async function withApi(
  options: Partial<AttestationApiOptions>,
  body: (base: string, api: AttestationApi) => Promise<void>,
): Promise<void> {
  const api = await startAttestationApi({
    listen: { host: '127.0.0.1', port: 0 },
    nsm: sim,
    logger: silentLogger(),
    ...options,
  });
  try {
    await body(`http://127.0.0.1:${api.address.port}`, api);
  } finally {
    await api.close();
  }
}

interface RawResponse {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

/** A plain node:http request, for methods and bodies fetch will not send as is. */
function raw(
  base: string,
  method: string,
  path: string,
  body?: string | Buffer,
  headers: Record<string, string> = {},
): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = httpRequest(`${base}${path}`, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (chunk: Buffer) => chunks.push(chunk));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(body);
  });
}

const hex = (n: number, fill = 0xab): string => Buffer.alloc(n, fill).toString('hex');
const json = (res: RawResponse): Record<string, unknown> =>
  JSON.parse(res.body.toString('utf8')) as Record<string, unknown>;

function payloadOf(doc: Uint8Array): Map<string, unknown> {
  const cose = decoder.decode(doc) as [Uint8Array, unknown, Uint8Array, Uint8Array];
  return decoder.decode(cose[2]) as Map<string, unknown>;
}

describe('GET /attestation-doc', () => {
  test('returns the raw COSE_Sign1 with content-type application/cbor', async () => {
    await withApi({}, async (base) => {
      const res = await fetch(`${base}/attestation-doc`);
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'application/cbor');
      assert.equal(res.headers.get('cache-control'), 'no-store');
      const doc = new Uint8Array(await res.arrayBuffer());
      assert.equal(doc[0], 0x84);
      const payload = payloadOf(doc);
      assert.equal(payload.get('nonce'), null);
      assert.equal(payload.get('user_data'), null);
      assert.equal(payload.get('public_key'), null);
    });
  });

  test('puts nonce, user_data and public_key into the document', async () => {
    await withApi({}, async (base) => {
      const res = await fetch(`${base}/attestation-doc?nonce=00ff&user_data=DEADBEEF&public_key=${hex(32, 7)}`);
      assert.equal(res.status, 200);
      const payload = payloadOf(new Uint8Array(await res.arrayBuffer()));
      assert.equal(Buffer.from(payload.get('nonce') as Uint8Array).toString('hex'), '00ff');
      assert.equal(Buffer.from(payload.get('user_data') as Uint8Array).toString('hex'), 'deadbeef');
      assert.equal(Buffer.from(payload.get('public_key') as Uint8Array).toString('hex'), hex(32, 7));
    });
  });

  test('Accept: application/json gives {"attestation_doc": base64}', async () => {
    await withApi({}, async (base) => {
      const res = await fetch(`${base}/attestation-doc?nonce=01`, { headers: { accept: 'application/json' } });
      assert.equal(res.status, 200);
      assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
      const body = (await res.json()) as { attestation_doc: string };
      assert.deepEqual(Object.keys(body), ['attestation_doc']);
      const payload = payloadOf(Buffer.from(body.attestation_doc, 'base64'));
      assert.equal(Buffer.from(payload.get('nonce') as Uint8Array).toString('hex'), '01');
      // CBOR stays the default when both are acceptable.
      const either = await fetch(`${base}/attestation-doc`, {
        headers: { accept: 'application/cbor, application/json;q=0.5' },
      });
      assert.equal(either.headers.get('content-type'), 'application/cbor');
      await either.arrayBuffer();
    });
  });

  test('each field may be 1024 bytes; 1025 is a 400 naming the field', async () => {
    const nsm = new RecordingNsm();
    await withApi({ nsm }, async (base) => {
      const ok = await fetch(
        `${base}/attestation-doc?nonce=${hex(1024)}&user_data=${hex(1024)}&public_key=${hex(1024)}`,
      );
      assert.equal(ok.status, 200);
      await ok.arrayBuffer();
      assert.equal(nsm.requests[0]!.nonce!.length, 1024);
      for (const field of ['nonce', 'user_data', 'public_key']) {
        const res = await raw(base, 'GET', `/attestation-doc?${field}=${hex(1025)}`);
        assert.equal(res.status, 400);
        assert.match(res.headers['content-type'] as string, /^application\/json/);
        assert.equal(json(res).field, field);
        assert.match(json(res).error as string, /1025 bytes/);
      }
      assert.equal(nsm.requests.length, 1, 'rejected requests never reach the NSM');
    });
  });

  test('bad hex, unknown and repeated parameters are 400 naming the field', async () => {
    await withApi({ nsm: new RecordingNsm() }, async (base) => {
      for (const [query, field] of [
        ['nonce=zz', 'nonce'],
        ['user_data=abc', 'user_data'],
        ['public_key=0x00', 'public_key'],
        ['userdata=00', 'userdata'],
        ['nonce=00&nonce=01', 'nonce'],
      ] as const) {
        const res = await raw(base, 'GET', `/attestation-doc?${query}`);
        assert.equal(res.status, 400, query);
        assert.equal(json(res).field, field, query);
        assert.equal(typeof json(res).error, 'string');
      }
    });
  });
});

describe('POST /attestation-doc (evervault-compatible)', () => {
  test('nonce and challenge are UTF-8, challenge becomes user_data, publicKey is base64', async () => {
    const nsm = new RecordingNsm();
    await withApi({ nsm }, async (base) => {
      const key = Buffer.from('a public key \u00e9', 'utf8');
      const res = await fetch(`${base}/attestation-doc`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ nonce: 'n\u00f6nce', challenge: 'hello', publicKey: key.toString('base64') }),
      });
      assert.equal(res.status, 200);
      assert.equal(res.headers.get('content-type'), 'application/cbor');
      assert.deepEqual(new Uint8Array(await res.arrayBuffer()), Uint8Array.of(0x84, 1, 2, 3));
      const [request] = nsm.requests;
      assert.deepEqual(Buffer.from(request!.nonce!), Buffer.from('n\u00f6nce', 'utf8'));
      assert.deepEqual(Buffer.from(request!.userData!), Buffer.from('hello'));
      assert.deepEqual(Buffer.from(request!.publicKey!), key);
    });
  });

  test('an empty body or object asks for a plain document', async () => {
    const nsm = new RecordingNsm();
    await withApi({ nsm }, async (base) => {
      assert.equal((await raw(base, 'POST', '/attestation-doc')).status, 200);
      assert.equal((await raw(base, 'POST', '/attestation-doc', '{}')).status, 200);
      assert.deepEqual(nsm.requests, [{}, {}]);
    });
  });

  test('limits count UTF-8 bytes: 1024 ok, 1025 is 400 with the field', async () => {
    const nsm = new RecordingNsm();
    await withApi({ nsm }, async (base) => {
      const ok = await raw(
        base,
        'POST',
        '/attestation-doc',
        JSON.stringify({
          nonce: 'a'.repeat(1024),
          challenge: '\u00e9'.repeat(512),
          publicKey: Buffer.alloc(1024).toString('base64'),
        }),
      );
      assert.equal(ok.status, 200);
      for (const [body, field] of [
        [{ nonce: 'a'.repeat(1025) }, 'nonce'],
        [{ challenge: '\u00e9'.repeat(513) }, 'challenge'],
        [{ publicKey: Buffer.alloc(1025).toString('base64') }, 'publicKey'],
      ] as const) {
        const res = await raw(base, 'POST', '/attestation-doc', JSON.stringify(body));
        assert.equal(res.status, 400, field);
        assert.equal(json(res).field, field);
      }
      assert.equal(nsm.requests.length, 1);
    });
  });

  test('bad JSON, bad types, bad base64 and unknown fields are 400 naming the field', async () => {
    await withApi({ nsm: new RecordingNsm() }, async (base) => {
      for (const [body, field] of [
        ['{"nonce": ', 'body'],
        ['[1, 2]', 'body'],
        ['"text"', 'body'],
        ['{"nonce": 5}', 'nonce'],
        ['{"challenge": {"a": 1}}', 'challenge'],
        ['{"publicKey": "not base64!"}', 'publicKey'],
        ['{"publicKey": "abcde"}', 'publicKey'],
        ['{"userData": "x"}', 'userData'],
      ] as const) {
        const res = await raw(base, 'POST', '/attestation-doc', body, { 'content-type': 'application/json' });
        assert.equal(res.status, 400, body);
        assert.equal(json(res).field, field, body);
      }
    });
  });

  test('a body over the limit is 413, whether declared or streamed', async () => {
    await withApi({ nsm: new RecordingNsm() }, async (base) => {
      const big = JSON.stringify({ nonce: 'a'.repeat(9000) });
      const declared = await raw(base, 'POST', '/attestation-doc', big, { 'content-type': 'application/json' });
      assert.equal(declared.status, 413);
      assert.equal(json(declared).field, 'body');
      const streamed = await new Promise<number>((resolve, reject) => {
        const req = httpRequest(
          `${base}/attestation-doc`,
          { method: 'POST', agent: false, headers: { 'transfer-encoding': 'chunked' } },
          (res) => {
            res.resume();
            resolve(res.statusCode!);
          },
        );
        req.on('error', reject);
        req.write('{"nonce": "');
        req.write('a'.repeat(5000));
        req.write('a'.repeat(5000));
        req.end('"}');
      });
      assert.equal(streamed, 413);
    });
  });
});

describe('routes, methods and limits', () => {
  test('unknown route is 404 JSON; wrong method is 405 JSON with Allow', async () => {
    await withApi({ nsm: new RecordingNsm() }, async (base) => {
      const missing = await raw(base, 'GET', '/nope');
      assert.equal(missing.status, 404);
      assert.equal(typeof json(missing).error, 'string');
      for (const method of ['PUT', 'DELETE', 'PATCH', 'HEAD']) {
        const res = await raw(base, method, '/attestation-doc');
        assert.equal(res.status, 405, method);
        assert.equal(res.headers.allow, 'GET, POST');
        if (method !== 'HEAD') assert.equal(typeof json(res).error, 'string');
      }
      const health = await raw(base, 'POST', '/health');
      assert.equal(health.status, 405);
      assert.equal(health.headers.allow, 'GET, HEAD');
    });
  });

  test('50 concurrent requests are all served', async () => {
    await withApi({}, async (base) => {
      const statuses = await Promise.all(
        Array.from({ length: 50 }, async (_, i) => {
          const nonce = i.toString(16).padStart(2, '0');
          const res = await fetch(`${base}/attestation-doc?nonce=${nonce}`);
          const payload = payloadOf(new Uint8Array(await res.arrayBuffer()));
          assert.equal(Buffer.from(payload.get('nonce') as Uint8Array).toString('hex'), nonce);
          return res.status;
        }),
      );
      assert.deepEqual(statuses, Array(50).fill(200));
    });
  });

  test('requests beyond maxConcurrentRequests get 503 with Retry-After', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((resolve) => {
      release = resolve;
    });
    const nsm = new RecordingNsm(async () => {
      await gate;
      return Uint8Array.of(0x84);
    });
    await withApi({ nsm, limits: { maxConcurrentRequests: 2 } }, async (base) => {
      const held = [raw(base, 'GET', '/attestation-doc'), raw(base, 'GET', '/attestation-doc')];
      while (nsm.requests.length < 2) await new Promise((resolve) => setTimeout(resolve, 5));
      const refused = await raw(base, 'GET', '/attestation-doc');
      assert.equal(refused.status, 503);
      assert.equal(refused.headers['retry-after'], '1');
      release();
      assert.deepEqual(
        (await Promise.all(held)).map((res) => res.status),
        [200, 200],
      );
      assert.equal((await raw(base, 'GET', '/attestation-doc')).status, 200);
    });
  });

  test('NSM failures: busy or slow is 503, anything else 500', async () => {
    const busy = new RecordingNsm(async () => {
      throw new NsmError('ERR_NSM_BUSY', 'busy');
    });
    await withApi({ nsm: busy }, async (base) => {
      const res = await raw(base, 'GET', '/attestation-doc');
      assert.equal(res.status, 503);
      assert.equal(json(res).code, 'ERR_NSM_BUSY');
    });
    const slow = new RecordingNsm(() => new Promise(() => undefined));
    await withApi({ nsm: slow, limits: { attestTimeoutMs: 50, closeGraceMs: 50 } }, async (base) => {
      assert.equal((await raw(base, 'GET', '/attestation-doc')).status, 503);
    });
    const broken = new RecordingNsm(async () => {
      throw new NsmError('ERR_NSM_DEVICE', 'secret detail');
    });
    await withApi({ nsm: broken }, async (base) => {
      const res = await raw(base, 'GET', '/attestation-doc');
      assert.equal(res.status, 500);
      assert.doesNotMatch(res.body.toString(), /secret detail/);
    });
  });

  test('a client that never finishes its headers is cut off', async () => {
    await withApi({ limits: { headersTimeoutMs: 200, requestTimeoutMs: 400 } }, async (_base, api) => {
      const reply = await new Promise<string>((resolve, reject) => {
        const socket = connect(api.address.port, '127.0.0.1', () =>
          socket.write('GET /health HTTP/1.1\r\nHost: x\r\n'),
        );
        let data = '';
        socket.on('data', (chunk) => (data += chunk.toString()));
        socket.on('close', () => resolve(data));
        socket.on('error', reject);
        setTimeout(() => reject(new Error('not cut off')), 5000).unref();
      });
      assert.match(reply, /^HTTP\/1\.1 408/);
    });
  });

  test('a client that hangs up mid-body is logged as aborted, not as an error', async () => {
    const sink = new PassThrough();
    const lines: Array<Record<string, unknown>> = [];
    sink.on('data', (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n').filter(Boolean))
        lines.push(JSON.parse(line) as Record<string, unknown>);
    });
    await withApi({ logger: createLogger('debug', sink) }, async (base, api) => {
      await new Promise<void>((resolve, reject) => {
        const socket = connect(api.address.port, '127.0.0.1', () => {
          socket.write('POST /attestation-doc HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"nonce":');
          setTimeout(() => {
            socket.destroy();
            resolve();
          }, 50);
        });
        socket.on('error', reject);
      });
      while (!lines.some((line) => line.aborted === true)) await new Promise((resolve) => setTimeout(resolve, 10));
      assert.equal((await raw(base, 'GET', '/health')).status, 200);
    });
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(
      lines.filter((line) => (line.level as number) >= 40),
      [],
    );
    assert.equal(lines.find((line) => line.aborted === true)?.status, null);
  });

  test('rejects nonsensical limits', async () => {
    await assert.rejects(
      startAttestationApi({
        listen: { host: '127.0.0.1', port: 0 },
        nsm: sim,
        logger: silentLogger(),
        limits: { maxBodyBytes: 0 },
      }),
      { code: 'ERR_CONFIG' },
    );
  });

  test('a taken port is ERR_API_LISTEN', async () => {
    await withApi({}, async (_base, api) => {
      await assert.rejects(
        startAttestationApi({
          listen: { host: '127.0.0.1', port: api.address.port },
          nsm: sim,
          logger: silentLogger(),
        }),
        { code: 'ERR_API_LISTEN' },
      );
    });
  });

  test('logs one debug line per request without document, body or query', async () => {
    const sink = new PassThrough();
    const lines: Array<Record<string, unknown>> = [];
    sink.on('data', (chunk: Buffer) => {
      for (const line of chunk.toString().split('\n').filter(Boolean))
        lines.push(JSON.parse(line) as Record<string, unknown>);
    });
    await withApi({ logger: createLogger('debug', sink) }, async (base) => {
      await (await fetch(`${base}/attestation-doc?nonce=${hex(8, 0x5a)}`)).arrayBuffer();
      await raw(base, 'POST', '/attestation-doc', JSON.stringify({ challenge: 'topsecretchallenge' }));
      await raw(base, 'GET', '/missing');
    });
    await new Promise((resolve) => setImmediate(resolve));
    const requestLines = lines.filter((line) => line.msg === 'internal API request');
    assert.deepEqual(
      requestLines.map((line) => [line.method, line.path, line.status]),
      [
        ['GET', '/attestation-doc', 200],
        ['POST', '/attestation-doc', 200],
        ['GET', '/missing', 404],
      ],
    );
    for (const line of requestLines) assert.equal(typeof line.ms, 'number');
    const all = JSON.stringify(lines);
    assert.doesNotMatch(all, /topsecretchallenge/);
    assert.doesNotMatch(all, new RegExp(hex(8, 0x5a)));
  });
});

describe('GET /health', () => {
  const report = (status: HealthReport['status'], appOk: boolean): HealthReport => ({
    status,
    parts: {
      ingress: { ok: true },
      attestation: { ok: true, detail: 'simulated NSM' },
      egress: { ok: true, detail: 'disabled' },
      app: { ok: appOk, detail: 'probe' },
    },
  });

  test('200 with each part when the provider says ok, 503 otherwise', async () => {
    let current = report('ok', true);
    await withApi({ health: () => current }, async (base) => {
      const ok = await raw(base, 'GET', '/health');
      assert.equal(ok.status, 200);
      assert.deepEqual(json(ok), current);
      current = report('degraded', false);
      const degraded = await raw(base, 'GET', '/health');
      assert.equal(degraded.status, 503);
      assert.deepEqual(json(degraded), current);
      const head = await raw(base, 'HEAD', '/health');
      assert.equal(head.status, 503);
      assert.equal(head.body.length, 0);
    });
  });

  test('an async provider works; a throwing one is 503', async () => {
    await withApi({ health: async () => report('ok', true) }, async (base) => {
      assert.equal((await raw(base, 'GET', '/health')).status, 200);
    });
    await withApi(
      {
        health: () => {
          throw new Error('boom');
        },
      },
      async (base) => {
        const res = await raw(base, 'GET', '/health');
        assert.equal(res.status, 503);
        assert.equal(json(res).status, 'down');
      },
    );
  });

  test('without a provider, reports the attestation part', async () => {
    await withApi({}, async (base) => {
      const res = await raw(base, 'GET', '/health');
      assert.equal(res.status, 200);
      assert.deepEqual(json(res), { status: 'ok', parts: { attestation: { ok: true, detail: 'simulated NSM' } } });
    });
  });
});
