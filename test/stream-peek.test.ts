/**
 * The one bounded read of a stream's head (net/stream-peek.ts) that the PROXY header, the
 * well-known request and the egress relay's header and reply use: the decision, the bounds, and
 * that no byte is lost or reordered whatever way the read ends.
 */
import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, it } from 'node:test';
import { peekStream, type PeekDecision } from '../src/net/stream-peek.js';

/** Decides once a line feed arrived: the head is the line, its value the line's text. */
const line = (bytes: Buffer): PeekDecision<string> | undefined => {
  const end = bytes.indexOf(0x0a);
  return end < 0 ? undefined : { value: bytes.subarray(0, end).toString(), length: end + 1 };
};

const tick = () => new Promise((resolve) => setImmediate(resolve));

/** Everything still readable from `stream` after the peek, once it is ended. */
async function remainder(stream: PassThrough): Promise<string> {
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  stream.resume();
  stream.end();
  await new Promise((resolve) => stream.once('end', resolve));
  return Buffer.concat(chunks).toString();
}

function assertDetached(stream: PassThrough): void {
  assert.equal(stream.listenerCount('data'), 0);
  assert.equal(stream.listenerCount('end'), 0);
  assert.equal(stream.listenerCount('error'), 0);
  assert.equal(stream.isPaused(), true);
}

describe('peekStream', () => {
  it('decides mid-chunk: the rest of that chunk is unshifted ahead of later bytes', async () => {
    const stream = new PassThrough();
    const reading = peekStream(stream, line, { maxBytes: 64, timeoutMs: 5000, rest: 'unshift' });
    stream.write('hel');
    await tick();
    stream.write('lo\nwor');
    const result = await reading;
    assert.equal(result.kind, 'decided');
    assert.ok(result.kind === 'decided');
    assert.equal(result.value, 'hello');
    assert.equal(result.head.toString(), 'hello\n');
    assert.equal(result.rest.length, 0);
    assertDetached(stream);
    stream.write('ld');
    assert.equal(await remainder(stream), 'world');
  });

  it("in 'return' mode hands the rest back and leaves later bytes on the stream", async () => {
    const stream = new PassThrough();
    const reading = peekStream(stream, line, { maxBytes: 64, timeoutMs: 5000, rest: 'return' });
    stream.write('a\nbc');
    const result = await reading;
    assert.ok(result.kind === 'decided');
    assert.equal(result.rest.toString(), 'bc');
    stream.write('de');
    assert.equal(await remainder(stream), 'de');
  });

  it('stops at the byte bound, and restores what it read when asked to', async () => {
    for (const restoreOnGiveUp of [false, true]) {
      const stream = new PassThrough();
      const reading = peekStream(stream, line, { maxBytes: 8, timeoutMs: 5000, rest: 'unshift', restoreOnGiveUp });
      stream.write('0123');
      await tick();
      stream.write('456789');
      const result = await reading;
      assert.equal(result.kind, 'bound');
      assert.ok(result.kind === 'bound');
      assert.equal(result.bytes.toString(), '0123456789');
      assertDetached(stream);
      assert.equal(await remainder(stream), restoreOnGiveUp ? '0123456789' : '');
    }
  });

  it('times out; bytes arriving late stay on the stream, after the restored ones', async () => {
    const stream = new PassThrough();
    const reading = peekStream(stream, line, { maxBytes: 64, timeoutMs: 20, rest: 'unshift', restoreOnGiveUp: true });
    stream.write('slow');
    const result = await reading;
    assert.equal(result.kind, 'timeout');
    assertDetached(stream);
    stream.write(' and late\n');
    assert.equal(await remainder(stream), 'slow and late\n');
  });

  it('reports an end before a decision, and a stream that had already ended', async () => {
    const stream = new PassThrough();
    const reading = peekStream(stream, line, { maxBytes: 64, timeoutMs: 5000, rest: 'unshift' });
    stream.end('no newline');
    const result = await reading;
    assert.equal(result.kind, 'ended');
    assert.ok(result.kind === 'ended');
    assert.equal(result.bytes.toString(), 'no newline');

    const gone = new PassThrough();
    gone.destroy();
    assert.equal((await peekStream(gone, line, { maxBytes: 64, timeoutMs: 5000, rest: 'unshift' })).kind, 'ended');
  });

  it('reports a stream failure and a parser that refuses the bytes', async () => {
    const failing = new PassThrough();
    const failed = peekStream(failing, line, { maxBytes: 64, timeoutMs: 5000, rest: 'unshift' });
    failing.destroy(new Error('reset by peer'));
    const failure = await failed;
    assert.ok(failure.kind === 'failed');
    assert.equal(failure.error.message, 'reset by peer');

    const stream = new PassThrough();
    const refusing = peekStream(
      stream,
      (bytes) => {
        if (bytes[0] !== 0x3e) throw new RangeError('not a prompt');
        return undefined;
      },
      { maxBytes: 64, timeoutMs: 5000, rest: 'unshift' },
    );
    stream.write('x');
    const refused = await refusing;
    assert.ok(refused.kind === 'invalid');
    assert.ok(refused.error instanceof RangeError);
    assertDetached(stream);
  });
});
