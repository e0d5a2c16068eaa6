/**
 * The one DNS-over-TCP stream loop the app's DNS server and the host's DNS relay share: framing
 * both ways, answers written as they come, half-close answered before closing, and the bounds
 * (frame length, questions waiting at once, idle time).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import { DnsTcpFrameReader, encodeTcpFrame } from '../src/wire/dns-message.js';
import { serveDnsStream, type DnsStreamOptions } from '../src/wire/dns-stream-server.js';

/** A 12-byte "message" whose first two bytes (the DNS id) say which one it is. */
const message = (id: number) => {
  const bytes = Buffer.alloc(12);
  bytes.writeUInt16BE(id, 0);
  return bytes;
};
const idOf = (bytes: Buffer) => bytes.readUInt16BE(0);

let server: net.Server;
let port: number;
let options: DnsStreamOptions;

before(async () => {
  server = net.createServer({ allowHalfOpen: true }, (socket) => serveDnsStream(socket, options));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as net.AddressInfo).port;
});
after(() => server.close());

/** Writes `bytes`, half-closes unless told not to, and collects framed answers until the server closes. */
async function exchange(bytes: Buffer, halfClose = true): Promise<{ answers: Buffer[]; reset: boolean }> {
  const socket = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  await once(socket, 'connect');
  const reader = new DnsTcpFrameReader();
  const answers: Buffer[] = [];
  let reset = false;
  socket.on('data', (chunk: Buffer) => answers.push(...reader.push(chunk).map((m) => Buffer.from(m))));
  socket.on('error', () => (reset = true));
  if (halfClose) socket.end(bytes);
  else socket.write(bytes);
  // The server ends or destroys its side; ours is half-open, so 'close' alone might never come.
  await new Promise((resolve) => {
    socket.once('end', resolve);
    socket.once('close', resolve);
  });
  socket.destroy();
  return { answers, reset };
}

function settings(overrides: Partial<DnsStreamOptions>): DnsStreamOptions {
  return {
    answer: async (bytes) => bytes,
    idleMs: 5_000,
    maxPending: 16,
    onMalformed: () => assert.fail('no malformed frame expected'),
    onError: (error) => assert.fail(error),
    ...overrides,
  };
}

describe('DNS over TCP stream loop', () => {
  it('answers every framed message, split across writes and joined in one, then closes after a half-close', async () => {
    const delays = new Map([
      [1, 30],
      [2, 0],
      [3, 10],
    ]);
    options = settings({
      answer: (bytes) => new Promise((resolve) => setTimeout(() => resolve(bytes), delays.get(idOf(bytes)))),
    });
    const frames = Buffer.concat([1, 2, 3].map((id) => encodeTcpFrame(message(id))));
    const { answers, reset } = await exchange(frames);
    assert.equal(reset, false);
    // Answers go out as they are ready, not in question order (RFC 7766 6.2.1.1).
    assert.deepEqual(answers.map(idOf), [2, 3, 1]);
  });

  it('writes nothing for an undefined answer and reports a failed one, keeping the stream', async () => {
    const errors: string[] = [];
    options = settings({
      answer: async (bytes) => {
        if (idOf(bytes) === 1) return undefined;
        if (idOf(bytes) === 2) throw new Error('upstream down');
        return bytes;
      },
      onError: (error) => errors.push(error.message),
    });
    const { answers } = await exchange(Buffer.concat([1, 2, 3].map((id) => encodeTcpFrame(message(id)))));
    assert.deepEqual(answers.map(idOf), [3]);
    assert.deepEqual(errors, ['upstream down']);
  });

  it('ends the stream on a frame shorter than a DNS header or longer than allowed', async () => {
    for (const length of [5, 0]) {
      let malformed = 0;
      options = settings({ onMalformed: () => malformed++ });
      const frame = Buffer.alloc(2 + 12);
      frame.writeUInt16BE(length, 0);
      const { answers } = await exchange(frame, false);
      assert.deepEqual(answers, []);
      assert.equal(malformed, 1, `length ${length}`);
    }
  });

  it('ends the stream when more questions wait than allowed', async () => {
    let asked = 0;
    options = settings({
      maxPending: 4,
      answer: (bytes) => {
        asked++;
        return new Promise((resolve) => setTimeout(() => resolve(bytes), 200));
      },
    });
    const { answers } = await exchange(Buffer.concat([1, 2, 3, 4, 5].map((id) => encodeTcpFrame(message(id)))), false);
    assert.equal(asked, 4, 'the fifth question is never asked');
    assert.deepEqual(answers, []);
  });

  it('destroys a stream that stays idle', async () => {
    options = settings({ idleMs: 50 });
    // No half-close: only the idle bound can end this stream.
    const { answers } = await exchange(encodeTcpFrame(message(9)), false);
    assert.deepEqual(answers.map(idOf), [9]);
  });
});
