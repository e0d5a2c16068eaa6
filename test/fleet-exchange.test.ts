import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex } from 'node:stream';
import { createConnection, createServer, type Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { SIM_ROOT_FILE } from '../src/attestation/sim-chain.js';
import { openSimulatedNsm } from '../src/attestation/sim-nsm.js';
import { decodeAttestation } from '../src/verify/verifier.js';
import {
  answerExchange,
  fleetPcrsOf,
  HelloBucket,
  MAX_FLEET_NSM_CALLS,
  requestExchange,
  type ExchangeContext,
} from '../src/fleet/fleet-exchange.js';
import { FleetChannel } from '../src/fleet/fleet-channel.js';
import { FleetError } from '../src/fleet/fleet-error.js';
import { NonceBook } from '../src/fleet/nonce-book.js';
import { encodeFrame, FRAME, FrameReader, MAX_SEALED_STATE_BYTES } from '../src/wire/fleet-message.js';

const scratch = mkdtempSync(join(tmpdir(), 'fleet-exchange-test-'));
after(() => rmSync(scratch, { recursive: true, force: true }));
// One state dir: every simulated NSM opened on it chains to the same root, as one fleet's enclaves do to AWS's.
const stateDir = join(scratch, 'state');
const otherRootDir = join(scratch, 'other-root');
const rootPem = () => readFileSync(join(stateDir, SIM_ROOT_FILE), 'utf8');

type Direction = 'toResponder' | 'toRequester';
type Tamper = (direction: Direction, chunk: Buffer) => Buffer | null;

/** Two connected in-memory sockets; each write arrives as one chunk, which `tamper` may change or drop. */
function socketPair(tamper?: Tamper): [Duplex, Duplex] {
  const ends: { requester?: Duplex; responder?: Duplex } = {};
  const make = (direction: Direction, peer: () => Duplex) =>
    new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, callback) {
        const out = tamper ? tamper(direction, chunk) : chunk;
        if (out) peer().push(out);
        callback();
      },
      final(callback) {
        peer().push(null);
        callback();
      },
      destroy(error, callback) {
        setImmediate(() => peer().destroy());
        callback(error);
      },
    });
  const requester = make('toResponder', () => ends.responder!);
  const responder = make('toRequester', () => ends.requester!);
  Object.assign(ends, { requester, responder });
  return [requester, responder];
}

function pcrTable(options: { pcr0?: number; pcr8?: number }): Record<number, Uint8Array> {
  const pcrs: Record<number, Uint8Array> = {};
  if (options.pcr0 !== undefined) pcrs[0] = Buffer.alloc(48, options.pcr0);
  if (options.pcr8 !== undefined) pcrs[8] = Buffer.alloc(48, options.pcr8);
  return pcrs;
}

async function member(options: {
  moduleId: string;
  pcr0?: number;
  pcr8?: number;
  debug?: boolean;
  allowDebug?: boolean;
  dir?: string;
}) {
  const nsm = await openSimulatedNsm({
    stateDir: options.dir ?? stateDir,
    moduleId: options.moduleId,
    debug: options.debug ?? false,
    pcrs: pcrTable(options),
  });
  const own = decodeAttestation(await nsm.attest({}));
  const context: ExchangeContext = {
    nsm,
    root: rootPem(),
    pcrs: fleetPcrsOf(own),
    allowDebug: options.allowDebug ?? false,
    seen: new NonceBook(),
    outgoing: new Set<string>(),
    timeoutMs: 5_000,
  };
  return { nsm, context };
}

async function exchange(
  requester: { context: ExchangeContext },
  responder: { context: ExchangeContext },
  tamper?: Tamper,
): Promise<[PromiseSettledResult<Buffer>, PromiseSettledResult<Buffer>]> {
  const [r, s] = socketPair(tamper);
  const results = await Promise.allSettled([
    requestExchange(r, requester.context, () => Buffer.from('state of R'), 'responder').then((x) => x.peerState),
    answerExchange(s, responder.context, () => Buffer.from('state of S'), 'requester').then((x) => x.peerState),
  ]);
  return results;
}

function codeOf(result: PromiseSettledResult<unknown>): string | undefined {
  assert.equal(result.status, 'rejected', 'the exchange was expected to fail');
  return (result as PromiseRejectedResult).reason.code as string;
}

function remoteCodeOf(result: PromiseSettledResult<unknown>): string | undefined {
  assert.equal(result.status, 'rejected');
  const reason = (result as PromiseRejectedResult).reason as FleetError;
  assert.equal(reason.code, 'ERR_FLEET_REFUSED', `expected ERR_FLEET_REFUSED, got ${reason.code}: ${reason.message}`);
  return reason.remoteCode;
}

/** The frames one direction carried, in order. */
function frameTypes(chunks: Buffer[]): number[] {
  const reader = new FrameReader();
  return chunks.flatMap((chunk) => reader.push(chunk).map((frame) => frame.type));
}

describe('fleet exchange', () => {
  test('two enclaves with equal PCRs exchange their states both ways, sealed', async () => {
    const a = await member({ moduleId: 'i-a-enc1' });
    const b = await member({ moduleId: 'i-b-enc1' });
    const seen: Buffer[] = [];
    const [r, s] = await exchange(a, b, (_direction, chunk) => {
      seen.push(chunk);
      return chunk;
    });
    assert.equal(r.status, 'fulfilled');
    assert.equal(s.status, 'fulfilled');
    assert.equal((r as PromiseFulfilledResult<Buffer>).value.toString(), 'state of S');
    assert.equal((s as PromiseFulfilledResult<Buffer>).value.toString(), 'state of R');
    // What the parent sees never holds either state in clear.
    const wire = Buffer.concat(seen);
    assert.equal(wire.includes('state of S'), false);
    assert.equal(wire.includes('state of R'), false);
  });

  test('a responder with other PCRs is refused, and it hears why', async () => {
    const a = await member({ moduleId: 'i-a-enc2' });
    const other = await member({ moduleId: 'i-x-enc2', pcr0: 0x42 });
    const [r, s] = await exchange(a, other);
    assert.equal(codeOf(r), 'ERR_FLEET_PCR');
    assert.match((r as PromiseRejectedResult).reason.message, /PCR0 differ/);
    assert.equal(remoteCodeOf(s), 'ERR_FLEET_PCR');
  });

  test('a signed build (PCR8 set) and an unsigned one (PCR8 zero) of the same image are refused', async () => {
    const unsigned = await member({ moduleId: 'i-u-enc13' });
    const signed = await member({ moduleId: 'i-s-enc13', pcr8: 0x88 });
    const [r, s] = await exchange(unsigned, signed);
    assert.equal(codeOf(r), 'ERR_FLEET_PCR');
    assert.match((r as PromiseRejectedResult).reason.message, /PCR8 differ/);
    assert.equal(remoteCodeOf(s), 'ERR_FLEET_PCR');
  });

  test('a requester with other PCRs that skips its own check is refused by the responder, and it hears why', async () => {
    const a = await member({ moduleId: 'i-a-enc3' });
    const other = await member({ moduleId: 'i-x-enc3', pcr0: 0x43 });
    // A modified requester that expects the responder's PCRs instead of its own: only the responder's check stops it.
    const [r, s] = await exchange({ context: { ...other.context, pcrs: a.context.pcrs } }, a);
    assert.equal(codeOf(s), 'ERR_FLEET_PCR');
    assert.equal(remoteCodeOf(r), 'ERR_FLEET_PCR');
  });

  test('a document from another root is refused', async () => {
    const a = await member({ moduleId: 'i-a-enc4' });
    const stranger = await member({ moduleId: 'i-s-enc4', dir: otherRootDir });
    const [r, s] = await exchange(a, stranger);
    assert.equal(codeOf(r), 'ERR_FLEET_ATTESTATION');
    assert.equal(remoteCodeOf(s), 'ERR_FLEET_ATTESTATION');
  });

  test('a debug-mode peer is refused unless both allow debug', async () => {
    const prod = await member({ moduleId: 'i-p-enc5' });
    const debugA = await member({ moduleId: 'i-d-enc5', debug: true });
    const [r, s] = await exchange(prod, debugA);
    // Its PCR0-2 are zero, so it differs from a production enclave whatever the debug rule.
    assert.ok(['ERR_FLEET_DEBUG', 'ERR_FLEET_PCR'].includes(codeOf(r)!));
    assert.ok(['ERR_FLEET_DEBUG', 'ERR_FLEET_PCR'].includes(remoteCodeOf(s)!));

    const debugB = await member({ moduleId: 'i-d2-enc5', debug: true });
    const [r2, s2] = await exchange(debugA, debugB);
    assert.equal(codeOf(r2), 'ERR_FLEET_DEBUG');
    assert.equal(remoteCodeOf(s2), 'ERR_FLEET_DEBUG');

    const allowA = await member({ moduleId: 'i-d3-enc5', debug: true, allowDebug: true });
    const [r3, s3] = await exchange(allowA, debugB);
    assert.equal(remoteCodeOf(r3), 'ERR_FLEET_DEBUG', 'one side allowing debug is not enough');
    assert.equal(codeOf(s3), 'ERR_FLEET_DEBUG');

    const allowB = await member({ moduleId: 'i-d4-enc5', debug: true, allowDebug: true });
    const [r4, s4] = await exchange(allowA, allowB);
    assert.equal(r4.status, 'fulfilled');
    assert.equal(s4.status, 'fulfilled');
  });

  test('with debug allowed, a debug enclave without the fleet.debug_psk cannot exchange (any image has zero PCRs)', async () => {
    const psk = Buffer.from('a'.repeat(40));
    const a = await member({ moduleId: 'i-d-enc15', debug: true, allowDebug: true });
    const b = await member({ moduleId: 'i-d2-enc15', debug: true, allowDebug: true });
    a.context.debugPsk = psk;
    b.context.debugPsk = psk;
    const [r, s] = await exchange(a, b);
    assert.equal(r.status, 'fulfilled');
    assert.equal(s.status, 'fulfilled');
    // Another debug image: equal (zero) PCRs, but another key.
    const stranger = await member({ moduleId: 'i-x-enc15', pcr0: 7, debug: true, allowDebug: true });
    stranger.context.debugPsk = Buffer.from('b'.repeat(40));
    const [r2, s2] = await exchange(stranger, b);
    assert.equal(codeOf(s2), 'ERR_FLEET_DECRYPT');
    assert.equal(r2.status, 'rejected');
    const [r3, s3] = await exchange(a, stranger);
    assert.equal(codeOf(s3), 'ERR_FLEET_DECRYPT');
    assert.equal(remoteCodeOf(r3), 'ERR_FLEET_DECRYPT');
  });

  test('a replayed CHALLENGE (an old document) is refused as a stale nonce', async () => {
    const a = await member({ moduleId: 'i-a-enc6' });
    const b = await member({ moduleId: 'i-b-enc6' });
    let recorded: Buffer | undefined;
    await exchange(a, b, (direction, chunk) => {
      if (direction === 'toRequester' && chunk[0] === FRAME.CHALLENGE) recorded = chunk;
      return chunk;
    });
    assert.ok(recorded);
    const [r, s] = await exchange(a, b, (direction, chunk) =>
      direction === 'toRequester' && chunk[0] === FRAME.CHALLENGE ? recorded! : chunk,
    );
    assert.equal(codeOf(r), 'ERR_FLEET_NONCE');
    assert.equal(remoteCodeOf(s), 'ERR_FLEET_NONCE');
  });

  test('a replayed HELLO is refused by the responder', async () => {
    const a = await member({ moduleId: 'i-a-enc7' });
    const b = await member({ moduleId: 'i-b-enc7' });
    let hello: Buffer | undefined;
    await exchange(a, b, (direction, chunk) => {
      if (direction === 'toResponder' && chunk[0] === FRAME.HELLO) hello = chunk;
      return chunk;
    });
    const [r, s] = await exchange(a, b, (direction, chunk) =>
      direction === 'toResponder' && chunk[0] === FRAME.HELLO ? hello! : chunk,
    );
    assert.equal(codeOf(s), 'ERR_FLEET_NONCE');
    assert.equal(remoteCodeOf(r), 'ERR_FLEET_NONCE');
  });

  test("a tampered responder's state fails authentication", async () => {
    const a = await member({ moduleId: 'i-a-enc8' });
    const b = await member({ moduleId: 'i-b-enc8' });
    const [r] = await exchange(a, b, (direction, chunk) => {
      if (direction !== 'toRequester' || chunk[0] !== FRAME.STATE) return chunk;
      const changed = Buffer.from(chunk);
      changed[changed.byteLength - 20]! ^= 0x01;
      return changed;
    });
    assert.equal(codeOf(r), 'ERR_FLEET_DECRYPT');
  });

  test("a tampered requester's state fails authentication, on both sides", async () => {
    const a = await member({ moduleId: 'i-a-enc9' });
    const b = await member({ moduleId: 'i-b-enc9' });
    const [r, s] = await exchange(a, b, (direction, chunk) => {
      if (direction !== 'toResponder' || chunk[0] !== FRAME.PROOF) return chunk;
      const changed = Buffer.from(chunk);
      changed[changed.byteLength - 1]! ^= 0x80;
      return changed;
    });
    assert.equal(codeOf(s), 'ERR_FLEET_DECRYPT');
    assert.equal(remoteCodeOf(r), 'ERR_FLEET_DECRYPT');
  });

  test('an oversized frame is refused from its header, before its body is buffered', async () => {
    const b = await member({ moduleId: 'i-b-enc10' });
    const [r, s] = socketPair();
    const answer = answerExchange(s, b.context, () => Buffer.from('secret'), 'requester');
    const header = Buffer.alloc(5);
    header.writeUInt8(FRAME.STATE, 0);
    header.writeUInt32BE(MAX_SEALED_STATE_BYTES + 1024, 1);
    const replies: Buffer[] = [];
    r.on('data', (chunk: Buffer) => replies.push(chunk));
    r.write(header);
    await assert.rejects(
      answer,
      (error: FleetError) => error.code === 'ERR_FLEET_FRAME' && /over its bound/.test(error.message),
    );
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(frameTypes(replies), [FRAME.REFUSAL]);
  });

  test('a flood of unrequested frames stays in the sender, and ends the exchange as a protocol error', async () => {
    const server = createServer();
    const accepted = new Promise<Socket>((resolve) => server.once('connection', resolve));
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const client = createConnection((server.address() as { port: number }).port, '127.0.0.1');
    client.on('error', () => {});
    const channel = new FleetChannel(await accepted, 5_000, 'flooder');
    try {
      client.write(encodeFrame(FRAME.HELLO, [Buffer.of(1), Buffer.alloc(32)]));
      await channel.next(FRAME.HELLO);
      // 20 MiB of empty CONNECTED frames (13 00000000) while the responder would be attesting.
      const burst = Buffer.concat(Array.from({ length: 64 * 1024 }, () => encodeFrame(FRAME.CONNECTED, [])));
      for (let i = 0; i < 64; i++) client.write(burst);
      await new Promise((resolve) => setTimeout(resolve, 300));
      assert.ok(channel.buffered <= 256 * 1024, `the channel holds ${channel.buffered} bytes`);
      await assert.rejects(channel.next(FRAME.PROOF), { code: 'ERR_FLEET_FRAME' });
    } finally {
      channel.close();
      client.destroy();
      server.close();
    }
  });

  test('HELLOs beyond the fleet NSM cap are refused ERR_FLEET_BUSY without an NSM call', async () => {
    const b = await member({ moduleId: 'i-b-enc14' });
    let attests = 0;
    // An NSM that never answers: every accepted HELLO holds one call.
    const nsm = Object.assign(Object.create(b.nsm) as typeof b.nsm, {
      attest: () => (attests++, new Promise<Uint8Array>(() => {})),
    });
    const context: ExchangeContext = { ...b.context, nsm };
    const replies: Buffer[][] = [];
    const answers: Promise<unknown>[] = [];
    for (let i = 0; i <= MAX_FLEET_NSM_CALLS; i++) {
      const [r, s] = socketPair();
      const got: Buffer[] = [];
      replies.push(got);
      r.on('data', (chunk: Buffer) => got.push(chunk));
      answers.push(answerExchange(s, context, () => Buffer.alloc(0), 'flooder').catch((error: FleetError) => error));
      r.write(encodeFrame(FRAME.HELLO, [Buffer.of(1), Buffer.alloc(32, i)]));
    }
    const refused = (await answers[MAX_FLEET_NSM_CALLS]) as FleetError;
    assert.equal(refused.code, 'ERR_FLEET_BUSY');
    assert.equal(attests, MAX_FLEET_NSM_CALLS);
    await new Promise((resolve) => setImmediate(resolve));
    const last = new FrameReader().push(Buffer.concat(replies[MAX_FLEET_NSM_CALLS]!));
    assert.equal(last[0]?.type, FRAME.REFUSAL);
    assert.equal(last[0]?.fields[0]?.toString(), 'ERR_FLEET_BUSY');
  });

  test('HELLOs are rate-limited by a bounded token bucket', () => {
    let now = 0;
    const bucket = new HelloBucket(3, 2, () => now);
    assert.deepEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [true, true, true, false]);
    now += 500;
    assert.deepEqual([bucket.take(), bucket.take()], [true, false]);
    now += 3_600_000;
    // An idle hour refills to the burst, not beyond.
    assert.deepEqual([bucket.take(), bucket.take(), bucket.take(), bucket.take()], [true, true, true, false]);
  });

  test('a malformed frame (a field longer than its frame) is refused', () => {
    const good = encodeFrame(FRAME.HELLO, [Buffer.of(1), Buffer.alloc(32)]);
    good.writeUInt32BE(999, 5);
    assert.throws(() => new FrameReader().push(good), { code: 'ERR_FLEET_FRAME' });
  });

  test('a member that reaches itself (its parent among the peers) is told so, on both sides', async () => {
    const a = await member({ moduleId: 'i-a-enc12' });
    a.context.selfSeen = new Set();
    const [r, s] = await exchange(a, a);
    assert.equal(codeOf(s), 'ERR_FLEET_SELF');
    // Decided from its own responder's record, not from the refusal on the wire.
    assert.equal(codeOf(r), 'ERR_FLEET_SELF');
    assert.equal(a.context.selfSeen.size, 0);
  });

  test('a forged ERR_FLEET_SELF refusal is only a refused exchange', async () => {
    const a = await member({ moduleId: 'i-a-enc13' });
    a.context.selfSeen = new Set();
    const [r, s] = socketPair();
    s.on('data', () =>
      s.end(encodeFrame(FRAME.REFUSAL, [Buffer.from('ERR_FLEET_SELF'), Buffer.from('trust me, I am you')])),
    );
    const result = await Promise.allSettled([requestExchange(r, a.context, () => Buffer.alloc(0), 'forger')]);
    assert.equal(remoteCodeOf(result[0]), 'ERR_FLEET_SELF');
  });

  test('a responder that never answers times out', async () => {
    const a = await member({ moduleId: 'i-a-enc11' });
    const [r] = socketPair();
    await assert.rejects(
      requestExchange(r, { ...a.context, timeoutMs: 200 }, () => Buffer.alloc(0), 'silent'),
      { code: 'ERR_FLEET_TIMEOUT' },
    );
  });
});
