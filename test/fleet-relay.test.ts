/**
 * The parent's outbound fleet relay: it lists the configured peers and dials only those, so the
 * enclave (or anything that reaches the relay) cannot use it as a proxy to any other host or port.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { after, describe, test } from 'node:test';
import { parseConfig } from '../src/config/load.js';
import { ConfigError } from '../src/core/errors.js';
import { silentLogger } from '../src/core/log.js';
import { startFleetRelay, type FleetRelay } from '../src/host/fleet-relay.js';
import { encodeFrame, FRAME, FrameReader, type Frame } from '../src/wire/fleet-message.js';
import { startReplyServer } from './helpers/net.js';

const closers: Array<() => Promise<void> | void> = [];
after(async () => {
  for (const close of closers.reverse()) await close();
});

/** Connects to the relay, sends `frame`, returns the socket and the first answer frame. */
async function ask(
  relay: FleetRelay,
  type: number,
  fields: Buffer[],
): Promise<{ socket: net.Socket; answer: Frame; rest: Buffer }> {
  const address = relay.address as { host: string; port: number };
  const socket = net.connect({ host: address.host, port: address.port });
  await new Promise((resolve) => socket.once('connect', resolve));
  socket.write(encodeFrame(type as never, fields));
  const reader = new FrameReader();
  const answer = await new Promise<Frame>((resolve, reject) => {
    socket.on('data', (chunk: Buffer) => {
      const frames = reader.push(chunk);
      if (frames.length > 0) resolve(frames[0]!);
    });
    socket.once('error', reject);
  });
  socket.removeAllListeners('data');
  return { socket, answer, rest: reader.rest() };
}

describe('fleet relay (parent, outbound)', () => {
  test('lists the peers, relays to a peer, refuses every other destination', async () => {
    const peer = await startReplyServer((request) => Buffer.concat([Buffer.from('peer got: '), request]));
    closers.push(() => void peer.server.close());
    const other = await startReplyServer(() => Buffer.from('must not be reached'));
    closers.push(() => void other.server.close());
    let reachedOther = 0;
    other.server.on('connection', () => (reachedOther += 1));
    const relay = await startFleetRelay({
      listen: { transport: 'tcp', host: '127.0.0.1', port: 0 },
      peers: [`127.0.0.1:${peer.port}`],
      peerPort: 7790,
      connectTimeoutMs: 2_000,
      idleTimeoutMs: 5_000,
      allowPrivate: true,
      logger: silentLogger(),
    });
    closers.push(() => relay.close());

    const listed = await ask(relay, FRAME.PEERS_ASK, []);
    assert.equal(listed.answer.type, FRAME.PEERS);
    assert.deepEqual(listed.answer.fields.map(String), [`127.0.0.1:${peer.port}`]);
    listed.socket.destroy();

    const refused = await ask(relay, FRAME.CONNECT, [Buffer.from(`127.0.0.1:${other.port}`)]);
    assert.equal(refused.answer.type, FRAME.REFUSAL);
    assert.equal(String(refused.answer.fields[0]), 'ERR_FLEET_RELAY');
    refused.socket.destroy();
    const named = await ask(relay, FRAME.CONNECT, [Buffer.from(`localhost:${peer.port}`)]);
    assert.equal(named.answer.type, FRAME.REFUSAL, 'a name is not an address the relay resolved the peers to');
    named.socket.destroy();
    assert.equal(reachedOther, 0);
    assert.equal(relay.stats.refused, 2);

    const connected = await ask(relay, FRAME.CONNECT, [Buffer.from(`127.0.0.1:${peer.port}`)]);
    assert.equal(connected.answer.type, FRAME.CONNECTED);
    const reply = new Promise<string>((resolve) => {
      let text = connected.rest.toString();
      connected.socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      connected.socket.once('end', () => resolve(text));
    });
    connected.socket.end('hello');
    assert.equal(await reply, 'peer got: hello');
    connected.socket.destroy();
  });

  test('resolved peers on loopback, link-local or other non-peer addresses are never listed nor dialled', async () => {
    const peer = await startReplyServer(() => Buffer.from('must not be reached'));
    closers.push(() => void peer.server.close());
    let reached = 0;
    peer.server.on('connection', () => (reached += 1));
    const relay = await startFleetRelay({
      listen: { transport: 'tcp', host: '127.0.0.1', port: 0 },
      peers: ['peers.example'],
      peerPort: peer.port,
      connectTimeoutMs: 2_000,
      idleTimeoutMs: 5_000,
      logger: silentLogger(),
      // DNS for fleet.peers points at this parent's own loopback, the metadata service and others.
      resolve: async (_peers, port) =>
        ['127.0.0.1', '169.254.169.254', '0.0.0.0', '[::1]', '[fe80::1]', '10.0.1.5', '203.0.113.9'].map(
          (ip) => `${ip}:${port}`,
        ),
    });
    closers.push(() => relay.close());
    const listed = await ask(relay, FRAME.PEERS_ASK, []);
    assert.deepEqual(listed.answer.fields.map(String), [`10.0.1.5:${peer.port}`, `203.0.113.9:${peer.port}`]);
    listed.socket.destroy();
    const refused = await ask(relay, FRAME.CONNECT, [Buffer.from(`127.0.0.1:${peer.port}`)]);
    assert.equal(refused.answer.type, FRAME.REFUSAL);
    assert.equal(String(refused.answer.fields[0]), 'ERR_FLEET_RELAY');
    refused.socket.destroy();
    assert.equal(reached, 0);
  });

  test('host.fleet_relay_listen on a non-loopback tcp address is a config error naming it', () => {
    assert.throws(
      () => parseConfig('[host]\nfleet_relay_listen = "tcp:0.0.0.0:7791"\n', 'host'),
      (error: unknown) =>
        error instanceof ConfigError && error.problems.some((problem) => problem.startsWith('host.fleet_relay_listen')),
    );
    assert.equal(
      parseConfig('[host]\nfleet_relay_listen = "tcp:127.0.0.1:7791"\n', 'host').host.fleetRelayListen?.transport,
      'tcp',
    );
  });
});
