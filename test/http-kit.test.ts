import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, request, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { readBody, sendJson, withTimeout } from '../src/core/http-kit.js';

class TooLarge extends Error {}

describe('the HTTP kit', () => {
  let server: Server;
  let port: number;
  before(async () => {
    server = createServer((req, res) => {
      readBody(req, {
        maxBytes: 8,
        tooLarge: (declared) => new TooLarge(String(declared ?? 'stream')),
        gone: () => new Error('gone'),
      }).then(
        (body) => sendJson(res, 200, { body: body.toString() }),
        (error: Error) =>
          sendJson(res, error instanceof TooLarge ? 413 : 500, { error: error.message }, { connection: 'close' }),
      );
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });
  after(() => server.close());

  const post = (body: string, chunked: boolean) =>
    new Promise<{ status: number; json: Record<string, string>; headers: Record<string, unknown> }>(
      (resolve, reject) => {
        const req = request({
          port,
          host: '127.0.0.1',
          method: 'POST',
          headers: chunked ? { 'transfer-encoding': 'chunked' } : { 'content-length': String(Buffer.byteLength(body)) },
        });
        req.on('response', (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode!,
              json: JSON.parse(Buffer.concat(chunks).toString()),
              headers: res.headers,
            }),
          );
        });
        req.on('error', reject);
        if (chunked) for (const c of body) req.write(c);
        else req.write(body);
        req.end();
      },
    );

  it('reads a body within the bound and answers JSON that is not cached or sniffed', async () => {
    const answer = await post('12345678', false);
    assert.equal(answer.status, 200);
    assert.deepEqual(answer.json, { body: '12345678' });
    assert.equal(answer.headers['cache-control'], 'no-store');
    assert.equal(answer.headers['x-content-type-options'], 'nosniff');
  });

  it('refuses a declared length over the bound before reading, and a streamed body as it grows past it', async () => {
    const declared = await post('123456789', false);
    assert.equal(declared.status, 413);
    assert.equal(declared.json.error, '9');
    const streamed = await post('0123456789abcdef', true);
    assert.equal(streamed.status, 413);
    assert.equal(streamed.json.error, 'stream');
  });

  it('withTimeout settles with the promise, or with the error once the time is up', async () => {
    assert.equal(await withTimeout(Promise.resolve(7), 1_000), 7);
    await assert.rejects(
      withTimeout(new Promise(() => {}), 10, () => new TooLarge('late')),
      TooLarge,
    );
    await assert.rejects(withTimeout(new Promise(() => {}), 10), /no answer within 10 ms/);
  });
});
